"""One virtualenv per tool we compare against, installed from PyPI by pip; we only ever call them.

    python benchmarks/venvs.py [datatrove|img2dataset|openflamingo ...]    # create (or reuse) and print their pythons

Each venv lives under benchmarks/_work/venvs/<name> (gitignored). A venv is reused when its stamp
file holds the same requirement list, so reruns cost nothing; a failed install raises with pip's
output tail and leaves no stamp, so the next run tries again from scratch.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

VENV_ROOT = Path(__file__).resolve().parent / "_work" / "venvs"
_STAMP = ".m3w-bench-installed"

# What each comparison needs, as pip requirements.
# datatrove's [processing] extra pins trafilatura < 1.12; the comparison uses trafilatura 2.x (what
# ours uses), installed beside datatrove[io]. trafilatura 2.x imports lxml.html.clean, which lxml
# moved out into lxml_html_clean: without it datatrove's extractor sandbox fails on every document
# and reports them as timeouts.
# img2dataset 1.47 pins opencv-python-headless < 5; pip picks the newest wheel that fits Python 3.11.
# OpenFlamingo 2.0.1 pins torch 2.0.1 (a CUDA build from PyPI): it is installed --no-deps with
# the few packages it imports that we lack, in a venv that also sees the running interpreter's
# site-packages (SHARES_OUR_PACKAGES) for torch, PIL, numpy, braceexpand, safetensors. Its own
# pins come first on sys.path, so they shadow ours: webdataset 0.2.86 (with webdataset 1.x its
# group_by_keys_nothrow raises KeyError 'fname' at every shard's end-of-shard marker) and
# transformers 4.x (5.x has no `tokenizer.additional_special_tokens`, which its loader reads),
# with the tokenizers and huggingface_hub releases that transformers 4.57 accepts.
# torchvision: the PyPI wheels of the releases built for our torch link its CUDA libraries and do
# not import beside a CPU torch; 0.15.2's failed C extension load is caught, and data.py / open_clip
# only use its pure-Python transforms.
TOOLS: dict[str, tuple[str, ...]] = {
    "datatrove": ("datatrove[io]==0.10.1", "trafilatura>=2,<3", "lxml_html_clean"),
    "img2dataset": ("img2dataset==1.47.0", "opencv-python-headless>=4.5.5.62,<5"),
    "openflamingo": ("open-flamingo==2.0.1", "webdataset==0.2.86", "transformers==4.57.1", "tokenizers==0.22.1",
                     "huggingface_hub==0.36.0", "open_clip_torch==3.3.0", "einops==0.8.2", "einops-exts==0.0.4",
                     "torchvision==0.15.2", "ftfy==6.3.1", "wcwidth==0.2.13"),
}
SHARES_OUR_PACKAGES = {"openflamingo"}
# A module each venv must import after the install, as a smoke check.
SMOKE = {
    "datatrove": "import datatrove, trafilatura, lxml_html_clean, warcio, magic, cchardet; "
    "from datatrove.pipeline.extractors import Trafilatura; from datatrove.pipeline.readers import WarcReader",
    "img2dataset": "import cv2, img2dataset; from img2dataset.resizer import Resizer, ResizeMode",
    "openflamingo": "import sys, open_flamingo, webdataset, torch, transformers, open_clip; "
    "from open_flamingo import create_model_and_transforms; import open_flamingo.train as t; "
    "sys.path.insert(0, t.__path__[0]); import data; assert webdataset.__version__ == '0.2.86', webdataset.__version__; "
    "assert transformers.__version__.startswith('4.'), transformers.__version__",
}


def openflamingo_train_dir(name: str = "openflamingo") -> Path:
    """open_flamingo/train in the venv: data.py there imports `data_utils` as a top-level module."""
    found = sorted((VENV_ROOT / name / "lib").glob("python*/site-packages/open_flamingo/train"))
    if not found:
        raise VenvError(f"open_flamingo/train not found in {VENV_ROOT / name}")
    return found[0]


class VenvError(RuntimeError):
    """A tool's venv could not be created or installed."""


def venv_python(name: str) -> Path:
    return VENV_ROOT / name / "bin" / "python"


def _run(cmd: list[str], what: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-25:])
        raise VenvError(f"{what} failed (exit {done.returncode}): {' '.join(cmd)}\n{tail}")


def ensure_venv(name: str, quiet: bool = False) -> Path:
    """The python of tool `name`'s venv, creating and installing it first when needed."""
    requirements = TOOLS[name]
    home = VENV_ROOT / name
    stamp = home / _STAMP
    ours = sysconfig.get_paths()["purelib"] if name in SHARES_OUR_PACKAGES else None
    wanted = "\n".join(requirements) + "\n" + (f"--no-deps, sharing {ours}\n" if ours else "")
    if stamp.is_file() and stamp.read_text() == wanted and venv_python(name).exists():
        return venv_python(name)
    if home.exists():
        shutil.rmtree(home)  # half-installed or other pins: start clean
    if not quiet:
        print(f"creating venv {home} ({' '.join(requirements)}) ...", flush=True)
    base = getattr(sys, "_base_executable", sys.executable)
    _run([base, "-m", "venv", str(home)], f"creating the {name} venv")
    pip = [str(venv_python(name)), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    _run([*pip, "--upgrade", "pip"], f"upgrading pip in the {name} venv")
    if ours:
        site = Path(subprocess.run([str(venv_python(name)), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   capture_output=True, text=True, check=True).stdout.strip())
        (site / "zz-m3w-shared-packages.pth").write_text(ours + "\n")  # appended after the venv's own packages
        _run([*pip, "--no-deps", *requirements], f"installing {name} from PyPI (--no-deps)")
    else:
        _run([*pip, *requirements], f"installing {name} from PyPI")
    _run([str(venv_python(name)), "-c", SMOKE[name]], f"importing {name} in its venv")
    stamp.write_text(wanted)
    return venv_python(name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tools", nargs="*", metavar="TOOL", help=f"any of {sorted(TOOLS)} (default: all)")
    args = parser.parse_args()
    unknown = set(args.tools) - set(TOOLS)
    if unknown:
        parser.error(f"unknown tools {sorted(unknown)}; choose from {sorted(TOOLS)}")
    for name in args.tools or sorted(TOOLS):
        try:
            print(f"{name}: {ensure_venv(name)}")
        except VenvError as exc:
            print(f"ERROR: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
