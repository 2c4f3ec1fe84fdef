"""Crawl-scale cost per core (issue 12): m3w vs datatrove (text) and vs img2dataset (images).

    python benchmarks/bench_cost.py [--quick] [--only text|images] [--repeats N] [--core C]
                                    [--baseline-tree DIR]

Every timed run is its own process pinned to one core (sched_setaffinity, inherited by the
children datatrove's extractor sandbox starts), and the tools take turns round by round, so
they share the machine's state. The other tools run in their own venvs (benchmarks/venvs.py,
built on first use); ours runs with this interpreter and PYTHONPATH = this tree.

Text: `m3w build m3w` (default config, which runs trafilatura's fast path; and this tree with
`extract.fast = false`, trafilatura's full path with its readability/jusText comparison) vs datatrove's
WarcReader -> Trafilatura -> JsonlWriter on the same WARC of 3,000 captures of the 60 shared
pages; and again on the WARC that also holds the pages' images (datatrove skips image records
by their WARC-Identified-Payload-Type; we decode, resize and hash every referenced image).
Each run is timed whole (start-up included): the WARC's pages per second of wall time on the
pinned core, and per CPU-second (all processes of the run), which is steadier on a shared machine.

Images: process_image vs img2dataset's Resizer (keep_ratio_largest, long side 512, JPEG
quality 90 as ours) on 400 photo JPEGs around 1 MP, timed over bytes in memory. Checked: every
output's size equals our exact path's and img2dataset's, phash Hamming distance to the exact
path, and PSNR of both tools' outputs against the exact path's.

--baseline-tree DIR adds our side run from another checkout (e.g. `git archive` of an older
commit) as extra rows, so a before/after lands in the same run (images: with the same checks on
its output, against this tree's exact path).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import cost_inputs
import venvs

WORK = HERE / "_work" / "cost"
WORKERS = HERE / "cost_workers.py"
MAX_SIDE, JPEG_QUALITY = 512, 90  # ImageConfig's defaults, given to img2dataset as well
FULL_PATH_CONFIG = "[extract]\nfast = false\n"  # trafilatura's full path (the default is its fast path)


@dataclass
class Run:
    tool: str
    items: int  # pages or images the run processed
    wall_s: float
    cpu_s: float
    extra: dict = field(default_factory=dict)

    @property
    def per_wall_s(self) -> float:
        return self.items / self.wall_s

    @property
    def per_cpu_s(self) -> float:
        return self.items / self.cpu_s


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _pinned(core: int):
    return lambda: os.sched_setaffinity(0, {core})


def run_pinned(cmd: list[str], env: dict[str, str], core: int, log: Path) -> tuple[float, float, str]:
    """Run cmd on one core, in the folder of its log (`python -m` puts the working folder first on
    sys.path, before PYTHONPATH: run from a checkout, every tree would import that checkout's code);
    (wall s, CPU s of it and its children, stdout). Raises on failure."""
    cpu0, wall0 = _children_cpu(), time.perf_counter()
    with open(log, "w") as err:
        done = subprocess.run(cmd, env=env, cwd=log.parent, stdout=subprocess.PIPE, stderr=err, text=True, preexec_fn=_pinned(core))
    wall, cpu = time.perf_counter() - wall0, _children_cpu() - cpu0
    if done.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed (exit {done.returncode}); log {log}:\n{tail}")
    return wall, cpu, done.stdout


def _env(pythonpath: Path | None = None) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", NO_ALBUMENTATIONS_UPDATE="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return env


def _last_json(stdout: str) -> dict:
    return json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])


# --------------------------------------------------------------------------- text


def run_datatrove(python: Path, warc: Path, pages: int, core: int, tag: str) -> Run:
    out = WORK / "runs" / tag
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    wall, cpu, stdout = run_pinned([str(python), str(WORKERS), "datatrove", str(warc), str(out)], _env(), core, out / "log.txt")
    result = _last_json(stdout)
    if result["timeouts"]:
        print(f"  WARNING: datatrove reports {result['timeouts']} extraction timeouts", flush=True)
    extra = {"documents_read": result["docs"], "extracted": result["extracted"], "timeouts": result["timeouts"]}
    return Run("datatrove", pages, wall, cpu, extra)


def run_m3w_build(tree: Path, warc: Path, pages: int, core: int, tag: str, full_path: bool, name: str) -> Run:
    out = WORK / "runs" / tag
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cmd = [sys.executable, "-m", "m3w", "build", "m3w", "--input", str(warc), "--output", str(out / "m3w"), "--force"]
    if full_path:
        (out / "full.toml").write_text(FULL_PATH_CONFIG)
        cmd += ["--config", str(out / "full.toml")]
    wall, cpu, _stdout = run_pinned(cmd, _env(tree), core, out / "log.txt")
    manifest = json.loads((out / "m3w" / "manifest.json").read_text())
    stages = manifest["stages"]
    extra = {
        "pages_extracted": stages["pages"]["kept"].get("extracted"),
        "documents_kept": stages["documents"]["kept"].get("kept"),
        "images_used": stages["media_records"]["kept"].get("used"),
    }
    return Run(name, pages, wall, cpu, extra)


# --------------------------------------------------------------------------- images


def run_img2dataset(python: Path, photos: Path, core: int, tag: str) -> Run:
    out = WORK / "runs" / tag
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cmd = [str(python), str(WORKERS), "img2dataset", str(photos), str(out / "images"), "--side", str(MAX_SIDE), "--quality", str(JPEG_QUALITY)]
    _wall, _cpu, stdout = run_pinned(cmd, _env(), core, out / "log.txt")
    result = _last_json(stdout)
    extra = {"errors": result["errors"], "out": str(out / "images")}
    return Run("img2dataset Resizer", result["images"] - result["errors"], result["wall_s"], result["cpu_s"], extra)


def run_m3w_images(tree: Path, photos: Path, core: int, tag: str, name: str, exact: bool = False) -> Run:
    out = WORK / "runs" / tag
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cmd = [sys.executable, str(WORKERS), "m3w-images", str(photos), str(out / "images")] + (["--exact"] if exact else [])
    _wall, _cpu, stdout = run_pinned(cmd, _env(tree), core, out / "log.txt")
    result = _last_json(stdout)
    extra = {"errors": result["errors"], "out": str(out / "images")}
    return Run(name, result["images"] - result["errors"], result["wall_s"], result["cpu_s"], extra)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float32) - b.astype(np.float32)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def check_images(photos: list[Path], ours: Path, exact: Path, theirs: Path) -> dict:
    """Sizes, phash distance to the exact path, PSNR of both tools against the exact path."""
    size_ok = size_theirs_ok = 0
    distances, psnr_ours, psnr_theirs = [], [], []
    for photo in photos:
        name = photo.name
        ours_size = (ours / f"{name}.size").read_text()
        size_ok += ours_size == (exact / f"{name}.size").read_text()
        size_theirs_ok += ours_size == (theirs / f"{name}.size").read_text()
        a, b = int((ours / f"{name}.phash").read_text(), 16), int((exact / f"{name}.phash").read_text(), 16)
        distances.append((a ^ b).bit_count())
        reference = _rgb(exact / name)
        psnr_ours.append(_psnr(_rgb(ours / name), reference))
        mine = _rgb(theirs / name)
        if mine.shape == reference.shape:
            psnr_theirs.append(_psnr(mine, reference))
    out_bytes = [os.path.getsize(ours / p.name) for p in photos]
    their_bytes = [os.path.getsize(theirs / p.name) for p in photos]
    return {
        "images": len(photos),
        "sizes_equal_exact": size_ok,
        "sizes_equal_img2dataset": size_theirs_ok,
        "phash_distance_max": max(distances),
        "phash_distance_mean": statistics.mean(distances),
        "phash_distance_over_4": sum(d > 4 for d in distances),
        "psnr_vs_exact_ours_mean": statistics.mean(psnr_ours),
        "psnr_vs_exact_ours_min": min(psnr_ours),
        "psnr_vs_exact_img2dataset_mean": statistics.mean(psnr_theirs),
        "psnr_vs_exact_img2dataset_min": min(psnr_theirs),
        "output_kb_mean_ours": statistics.mean(out_bytes) / 1024,
        "output_kb_mean_img2dataset": statistics.mean(their_bytes) / 1024,
    }


# --------------------------------------------------------------------------- report


def summarise(runs: list[Run], baseline_tool: str) -> list[dict]:
    """Per tool: best and median rates; ratios to the baseline tool (best/best, median/median)."""
    tools = list(dict.fromkeys(r.tool for r in runs))
    base = [r for r in runs if r.tool == baseline_tool]
    base_best_wall, base_best_cpu = max(r.per_wall_s for r in base), max(r.per_cpu_s for r in base)
    base_med_wall, base_med_cpu = statistics.median(r.per_wall_s for r in base), statistics.median(r.per_cpu_s for r in base)
    rows = []
    for tool in tools:
        mine = [r for r in runs if r.tool == tool]
        best_wall, best_cpu = max(r.per_wall_s for r in mine), max(r.per_cpu_s for r in mine)
        med_wall, med_cpu = statistics.median(r.per_wall_s for r in mine), statistics.median(r.per_cpu_s for r in mine)
        rows.append(
            {
                "tool": tool,
                "runs": len(mine),
                "items": mine[0].items,
                "best_per_wall_s": best_wall,
                "best_per_cpu_s": best_cpu,
                "median_per_wall_s": med_wall,
                "median_per_cpu_s": med_cpu,
                "ratio_best_wall": best_wall / base_best_wall,
                "ratio_best_cpu": best_cpu / base_best_cpu,
                "ratio_median_wall": med_wall / base_med_wall,
                "ratio_median_cpu": med_cpu / base_med_cpu,
                "extra": mine[-1].extra,
            }
        )
    return rows


def print_table(title: str, rows: list[dict], unit: str) -> None:
    print(f"\n{title}")
    print(f"{'tool':<34} {'runs':>4} {unit:>7} {'/s wall':>9} {'/CPU-s':>9} {'x wall':>7} {'x CPU':>7} {'x CPU med':>9}")
    for r in rows:
        print(
            f"{r['tool']:<34} {r['runs']:>4} {r['items']:>7} {r['best_per_wall_s']:>9.1f} {r['best_per_cpu_s']:>9.1f}"
            f" {r['ratio_best_wall']:>6.2f}x {r['ratio_best_cpu']:>6.2f}x {r['ratio_median_cpu']:>8.2f}x"
        )


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), "?")
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "pillow": Image.__version__,
        "load_average": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


# --------------------------------------------------------------------------- main


def bench_images(args: argparse.Namespace, trees: dict[str, Path]) -> dict:
    photo_dir = WORK / f"photos-{args.photos}"  # the workers take every JPEG in it
    photos = cost_inputs.build_photos(photo_dir, count=args.photos)
    i2d = venvs.ensure_venv("img2dataset")
    runs: list[Run] = []
    for round_ in range(args.repeats):
        order = ["img2dataset", *trees] if round_ % 2 == 0 else [*trees, "img2dataset"]
        for who in order:
            if who == "img2dataset":
                run = run_img2dataset(i2d, photo_dir, args.core, f"img2dataset-{round_}")
            else:
                tag = f"m3w-{who.replace(' ', '-')}-images-{round_}"
                run = run_m3w_images(trees[who], photo_dir, args.core, tag, f"m3w process_image ({who})")
            runs.append(run)
            print(f"  images round {round_}: {run.tool:<34} {run.per_cpu_s:7.1f}/CPU-s {run.per_wall_s:7.1f}/s wall", flush=True)
    exact = run_m3w_images(ROOT, photo_dir, args.core, "exact-images", "m3w process_image exact path", exact=True)
    print(f"  images: {exact.tool:<34} {exact.per_cpu_s:7.1f}/CPU-s (reference for the checks)", flush=True)
    rows = summarise(runs + [exact], "img2dataset Resizer")
    last_ours = [r for r in runs if r.tool == "m3w process_image (this tree)"][-1]
    last_theirs = [r for r in runs if r.tool == "img2dataset Resizer"][-1]
    checks = check_images(photos, Path(last_ours.extra["out"]), Path(exact.extra["out"]), Path(last_theirs.extra["out"]))
    baseline = [r for r in runs if r.tool == "m3w process_image (baseline tree)"]
    if baseline:  # the same checks on the other checkout's output: before/after quality in one run
        checks["baseline_tree"] = check_images(photos, Path(baseline[-1].extra["out"]), Path(exact.extra["out"]), Path(last_theirs.extra["out"]))
    sizes = [Image.open(p).size for p in photos]
    inputs = {
        "photos": len(photos),
        "megapixels_median": statistics.median(w * h / 1e6 for w, h in sizes),
        "input_kb_mean": statistics.mean(os.path.getsize(p) for p in photos) / 1024,
    }
    return {"inputs": inputs, "rows": rows, "checks": checks}


def bench_text(args: argparse.Namespace, trees: dict[str, Path]) -> dict:
    dt = venvs.ensure_venv("datatrove")
    results = {}
    for variant, with_images in (("text", False), ("text+images", True)):
        if args.variant and variant != args.variant:
            continue
        warc = WORK / f"{variant.replace('+', '-')}-{args.copies}.warc.gz"
        counts = cost_inputs.build_text_warc(warc, copies=args.copies, with_images=with_images)
        runs: list[Run] = []
        # every tree with its default config; this tree also on trafilatura's full path
        contenders = ["datatrove", *((who, False) for who in trees), *([] if args.no_full_path else [("this tree", True)])]
        for round_ in range(args.repeats):
            rotation = round_ % len(contenders)
            for who in contenders[rotation:] + contenders[:rotation]:
                if who == "datatrove":
                    run = run_datatrove(dt, warc, counts["pages"], args.core, f"datatrove-{variant}-{round_}")
                else:
                    tree, full_path = who
                    name = f"m3w build m3w ({tree}{', extract.fast=false' if full_path else ''})"
                    tag = f"m3w-{tree.replace(' ', '-')}-{variant}-{'full' if full_path else 'default'}-{round_}"
                    run = run_m3w_build(trees[tree], warc, counts["pages"], args.core, tag, full_path, name)
                runs.append(run)
                print(f"  {variant} round {round_}: {run.tool:<44} {run.per_cpu_s:6.1f}/CPU-s {run.per_wall_s:6.1f}/s wall", flush=True)
        results[variant] = {"inputs": counts, "rows": summarise(runs, "datatrove")}
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run: 300 pages, 100 photos, 1 round")
    parser.add_argument("--only", choices=("text", "images"))
    parser.add_argument("--variant", choices=("text", "text+images"), help="text: only this WARC (default both)")
    parser.add_argument("--no-full-path", action="store_true", help="text: skip the extract.fast=false row")
    parser.add_argument("--repeats", type=int, help="interleaved rounds (default 3; 1 with --quick)")
    parser.add_argument("--core", type=int, default=0, help="the CPU every timed run is pinned to")
    parser.add_argument("--baseline-tree", type=Path, help="also run our side from this checkout (before/after)")
    parser.add_argument("--json", type=Path, default=WORK / "results.json")
    args = parser.parse_args()
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.copies = 5 if args.quick else 50
    args.photos = 100 if args.quick else 400
    trees = {"this tree": ROOT}
    if args.baseline_tree:
        trees["baseline tree"] = args.baseline_tree.resolve()
    WORK.mkdir(parents=True, exist_ok=True)
    report: dict = {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()}}
    print(f"machine: {report['machine']}", flush=True)
    try:
        if args.only in (None, "images"):
            report["images"] = bench_images(args, trees)
        if args.only in (None, "text"):
            report["text"] = bench_text(args, trees)
    except venvs.VenvError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    report["machine"]["load_average_end"] = os.getloadavg()
    if "images" in report:
        images = report["images"]
        print_table(f"Images, one core: {images['inputs']}", images["rows"], "images")
        print("checks:", json.dumps(images["checks"], indent=1))
    for variant, result in report.get("text", {}).items():
        print_table(f"Text ({variant}), one core: {result['inputs']}", result["rows"], "pages")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1, default=str))
    print(f"\nwritten {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
