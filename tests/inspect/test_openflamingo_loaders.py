"""OpenFlamingo 2.0.1's own loaders (open_flamingo/train/data.py) on our exports (issue 13).

They run in their own venv (benchmarks/venvs.py "openflamingo": open-flamingo --no-deps with
webdataset 0.2.86, transformers 4.57 and our CPU torch), in a subprocess running PROBE, which
only calls their functions: `get_mmc4_dataset` and `get_laion_dataset` end to end (their
webdataset pipeline, DataLoader worker, batching), and `preprocess_interleaved` per sample to
see why each sample is rejected. Their datasets repeat the shards until `--train_num_samples_*`
samples (`with_epoch`; every repetition drops its last partial batch), so the probe asks for
exactly the full batches one pass holds. The export's own count of what that loader drops
(`openflamingo_defaults`) must match what the loader does, sample for sample.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from conftest import build
from test_export import export

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

PROBE = r'''
import json, os, sys, warnings
warnings.filterwarnings("ignore")
import torch
import open_clip, open_flamingo.train
sys.path.insert(0, open_flamingo.train.__path__[0])  # data.py imports data_utils as a top-level module
import data, data_utils
import webdataset as wds
from argparse import Namespace
from transformers import PreTrainedTokenizerFast

mode, shard_dir, tokenizer_dir, batch_size, n_samples = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
# the tokenizer as open_flamingo.create_model_and_transforms prepares it
tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(tokenizer_dir, "tokenizer.json"),
                              eos_token="<|endoftext|>", bos_token="<|endoftext|>")
tok.add_special_tokens({"additional_special_tokens": ["<|endofchunk|>", "<image>"]})
if tok.pad_token is None:
    tok.add_special_tokens({"pad_token": "<PAD>"})
image_id = tok.convert_tokens_to_ids("<image>")
processor = open_clip.image_transform(64, is_train=False)  # 224 in training; the size does not change what is kept
shards = sorted(os.path.join(shard_dir, f) for f in os.listdir(shard_dir) if f.endswith(".tar"))
# train.py's defaults, one worker, one process
args = Namespace(mmc4_shards="::".join(shards), laion_shards="::".join(shards), dataset_resampled=False, seed=42,
                 workers=1, world_size=1, batch_size_mmc4=batch_size, batch_size_laion=batch_size,
                 train_num_samples_mmc4=n_samples, train_num_samples_laion=n_samples,
                 mmc4_textsim_threshold=30, mmc4_min_num_images=1, mmc4_max_num_images=6)
torch.manual_seed(0)
report = {"webdataset": wds.__version__, "batches": [], "samples": {}}
get = data.get_mmc4_dataset if mode == "mmc4" else data.get_laion_dataset
for images, text in get(args, processor, tok).dataloader:
    # a LAION batch holds (input_ids, attention_mask); an MMC4 batch one (input_ids, attention_mask) per sample
    ids = text[0] if mode == "laion" else torch.stack([t[0] for t in text])
    report["batches"].append({"images": list(images.shape), "ids": list(ids.shape),
                              "image_tokens": (ids == image_id).sum(-1).flatten().tolist(),
                              "first_token": ids.reshape(ids.shape[0], -1)[:, 0].tolist(),
                              "texts": tok.batch_decode(ids.reshape(ids.shape[0], -1), skip_special_tokens=True)})
if mode == "mmc4":  # each sample through preprocess_interleaved, to see why the rejected ones are
    for s in wds.DataPipeline(wds.SimpleShardList(shards), data_utils.tarfile_to_samples_nothrow):
        try:
            images, (ids, mask) = data.preprocess_interleaved((s["json"],), tok, processor, 30, 1, 6)
            report["samples"][s["__key__"]] = ["kept", int((ids == image_id).sum()), list(images.shape)]
        except ValueError as err:
            report["samples"][s["__key__"]] = [str(err)]
report["image_id"] = image_id
print(json.dumps(report))
'''


def _pypi_reachable() -> bool:
    try:
        urllib.request.urlopen("https://pypi.org/simple/open-flamingo/", timeout=15).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def openflamingo_python() -> str:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import venvs

    try:
        return str(venvs.ensure_venv("openflamingo", quiet=True))
    except venvs.VenvError:
        if not _pypi_reachable():
            pytest.skip("PyPI is unreachable: the OpenFlamingo venv (benchmarks/venvs.py openflamingo) cannot be installed")
        raise


@pytest.fixture(scope="module")
def corpora(tmp_path_factory, sample_crawl) -> Path:
    out = tmp_path_factory.mktemp("of_build")
    build("all", [str(p) for p in sample_crawl.warc_paths], out, "--samples-per-shard", "25")
    return out


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> str:
    from helpers.tiny_hf import make_tiny_tokenizer

    return make_tiny_tokenizer(tmp_path_factory.mktemp("tok"))


def probe(python: str, mode: str, shard_dir: Path, tokenizer_dir: str, batch_size: int, n_samples: int) -> dict:
    done = subprocess.run([python, "-c", PROBE, mode, str(shard_dir), tokenizer_dir, str(batch_size), str(n_samples)],
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def check_against_the_export_count(report: dict, result: dict) -> None:
    """Every exported sample reached the loader; its rejections and the images it shows are the ones
    `export mmc4` counted."""
    samples, counted = report["samples"], result["openflamingo_defaults"]
    assert len(samples) == result["documents"] == counted["samples"]
    outcomes = Counter(v[0] for v in samples.values())
    never = counted["samples_never_trained_on"]
    assert outcomes["No images in sample"] == never.get("all-images-under-10kb", 0)
    assert outcomes["Fewer than 1 images in sample"] == never.get("first-image-past-window", 0)
    # the loader keeps a sample whose only image is last (it then conditions no text): kept or dropped by chance
    assert outcomes["kept"] + outcomes["Only one image in sample"] == counted["samples_trainable"] + never.get("only-image-is-last", 0)
    assert set(outcomes) <= {"kept", "Only one image in sample", "No images in sample", "Fewer than 1 images in sample"}
    shown = sum(v[1] for v in samples.values() if v[0] == "kept") + outcomes["Only one image in sample"]
    assert shown == counted["images"] - sum(counted["images_never_shown"].values())
    for v in samples.values():
        if v[0] == "kept":
            assert v[2] == [6, 3, 64, 64] and 1 <= v[1] <= 6  # padded to 6 image slots, as always


def check_batches(report: dict, batch_size: int, n_batches: int) -> None:
    assert report["webdataset"] == "0.2.86"
    assert len(report["batches"]) == n_batches
    for b in report["batches"]:
        assert b["images"] == [batch_size, 6, 3, 64, 64] and b["ids"] == [batch_size, 1, 256]
        assert all(1 <= k <= 6 for k in b["image_tokens"])


def test_openflamingo_mmc4_loader_trains_on_the_whole_export_and_on_windows(openflamingo_python, corpora, tokenizer_dir, tmp_path):
    for name, flags in (("whole", ()), ("windows", ("--window-tokens", "256"))):
        result = export("mmc4", corpora / "m3w", tmp_path / name, "--tokenizer", tokenizer_dir, *flags)
        counted = result["openflamingo_defaults"]
        # a pass yields every multi-image sample and about half the single-image ones: ask for the sure ones
        sure = counted["samples_trainable"] - counted["single_image_samples_kept_half_the_time"]
        n_batches = max(1, sure // 2)
        report = probe(openflamingo_python, "mmc4", tmp_path / name, tokenizer_dir, 2, 2 * n_batches)
        check_against_the_export_count(report, result)
        check_batches(report, 2, n_batches)
        if name == "whole":
            whole = result
            assert counted["samples_never_trained_on"]["first-image-past-window"] > 0  # whole documents overflow 256 tokens
            continue
        # every image is inside the window now: the only images never shown are the ones under OpenFlamingo's 10 KB floor
        assert set(counted["images_never_shown"]) <= {"under-10kb"}
        assert "first-image-past-window" not in counted["samples_never_trained_on"]
        assert result["images"] == whole["images"] and result["documents"] > whole["documents"]
        assert result["source_documents"] == whole["source_documents"] == whole["documents"] + whole["skipped_documents"]
        assert counted["samples_trainable"] > whole["openflamingo_defaults"]["samples_trainable"]


def test_openflamingo_laion_loader_reads_the_pair_shards(openflamingo_python, corpora, tokenizer_dir):
    captions = []
    for shard in sorted((corpora / "pairs").glob("*.tar")):
        with tarfile.open(shard) as tar:
            captions += [tar.extractfile(m).read().decode().strip() for m in tar.getmembers() if m.name.endswith(".txt")]
    assert len(captions) >= 8
    report = probe(openflamingo_python, "laion", corpora / "pairs", tokenizer_dir, 4, len(captions) // 4 * 4)
    assert report["webdataset"] == "0.2.86"
    batches = report["batches"]
    assert len(batches) == len(captions) // 4  # one pass, in full batches
    seen = Counter()
    for b in batches:
        assert b["images"] == [4, 3, 64, 64] and b["ids"][0] == 4 and b["ids"][1] <= 32
        assert b["image_tokens"] == [1, 1, 1, 1] and b["first_token"] == [report["image_id"]] * 4  # "<image>caption..."
        seen.update(b["texts"])
    # every caption came out once (a pass shuffles; the last partial batch is dropped), cut to 32 tokens
    pending = Counter(captions)
    for text, n in sorted(seen.items(), key=lambda kv: -len(kv[0])):  # the longest (most specific) prefixes first
        full = [c for c in pending if c.startswith(text) and pending[c] > 0]
        assert full, text
        for _ in range(n):
            c = next(c for c in full if pending[c] > 0)
            pending[c] -= 1
    assert sum(pending.values()) == len(captions) % 4
