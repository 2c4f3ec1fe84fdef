"""Memory and scaling of one build on the embedded runner (issue 12): time and peak RSS at 1x/2x/4x input.

    python benchmarks/bench_scaling.py [--quick] [--pages N] [--factors 1,2,4] [--corpus all|m3w]
                                       [--multi-processing N] [--json PATH]

Inputs: the generated sample crawl (`m3w_pipeline.sample.crawl`: pages with images, videos, pairs,
duplicates and broken records) at N, 2N and 4N pages, 50 pages per WARC file, built once under
benchmarks/_work/scaling and reused. Each build is `m3w build <corpus> --force` in its own process
tree, started by a small wrapper process so that the kernel's RUSAGE_CHILDREN figures are the
build's alone: CPU s (user + sys of every process it started) and the largest single process's
peak RSS (ru_maxrss). A sampler also follows the whole tree every 0.1 s for the peak of the summed
RSS (what a machine must hold; multi-processing workers add up). Per factor it prints wall s,
CPU s, both peaks and the marginal CPU s and RSS per input MB from the previous factor (constant =
linear), then fits CPU s and peak RSS = base + slope x input and reports the slopes per input GB.

--multi-processing N (default 2; 0 skips) also builds the largest input with
`--direct_num_workers N --direct_running_mode multi_processing` and checks that its outputs have the
same bytes as the single-process build's. Rerun after any change to the job's data movement: inputs
are cached, every build runs again.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from proctree import ProcessTreeSampler  # benchmarks/ is on sys.path: the script's folder

from m3w_pipeline.sample.crawl import write_sample_crawl

WORK = HERE / "_work" / "scaling"
PAGES_PER_FILE = 50
# The wrapper: runs the build as its child and prints the children's kernel accounting.
WRAPPER = (
    "import json, resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); "
    "u = resource.getrusage(resource.RUSAGE_CHILDREN); "
    "print('RUSAGE', json.dumps({'cpu_s': u.ru_utime + u.ru_stime, 'max_rss_kb': u.ru_maxrss}), flush=True); sys.exit(rc)"
)


def crawl_for(pages: int) -> tuple[Path, int, int]:
    """(folder, WARC files, input bytes) of the sample crawl of `pages` pages, built on first use."""
    folder = WORK / f"crawl-{pages}"
    stamp = folder / ".complete"
    if not stamp.exists():
        write_sample_crawl(folder, pages=pages, seed=0, pages_per_file=PAGES_PER_FILE)
        stamp.write_text("")
    warcs = sorted(folder.glob("*.warc.gz"))
    return folder, len(warcs), sum(p.stat().st_size for p in warcs)


def run_build(crawl: Path, out: Path, corpus: str, extra: list[str]) -> dict:
    """One `m3w build` under the wrapper: wall s, CPU s, largest process peak, tree peak, processes."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    build = [sys.executable, "-m", "m3w", "build", corpus, "--input", str(crawl / "*.warc.gz"), "--output", str(out), "--force", *extra]
    log = out.parent / f"{out.name}.log"
    start = time.perf_counter()
    with open(log, "w") as sink:
        proc = subprocess.Popen([sys.executable, "-c", WRAPPER, *build], env=env, stdout=subprocess.PIPE, stderr=sink, text=True)
        sampler = ProcessTreeSampler(proc.pid)
        sampler.start()
        stdout, _ = proc.communicate()
    wall = time.perf_counter() - start
    sampler.stop()
    sink_tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
    if proc.returncode != 0:
        raise SystemExit(f"build of {crawl} failed (exit {proc.returncode}); log {log}:\n{sink_tail}")
    usage = json.loads(next(line for line in stdout.splitlines() if line.startswith("RUSAGE")).split(" ", 1)[1])
    return {
        "wall_s": wall,
        "cpu_s": usage["cpu_s"],
        "max_process_rss_mb": usage["max_rss_kb"] / 1024,
        "tree_peak_rss_mb": sampler.peak_total_rss / 2**20,
        "processes": len(sampler.peak_rss) - 1,  # without the wrapper
    }


def output_hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares (intercept, slope)."""
    n = len(xs)
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    var = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / var if var else 0.0
    return mean_y - slope * mean_x, slope


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="base input of 50 pages instead of 250")
    parser.add_argument("--pages", type=int, help="pages at 1x (default 250; 50 with --quick)")
    parser.add_argument("--factors", default="1,2,4", help="input multiples, comma-separated")
    parser.add_argument("--corpus", choices=("all", "m3w"), default="all", help="what `m3w build` builds")
    parser.add_argument("--multi-processing", type=int, default=2, metavar="N", help="workers for the multi-processing run (0: skip)")
    parser.add_argument("--json", type=Path, default=WORK / "results.json")
    args = parser.parse_args()
    base = args.pages or (50 if args.quick else 250)
    factors = [int(f) for f in args.factors.split(",")]
    WORK.mkdir(parents=True, exist_ok=True)
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; m3w build {args.corpus}, {base} pages at 1x", flush=True)

    rows = []
    for factor in factors:
        pages = base * factor
        crawl, files, input_bytes = crawl_for(pages)
        result = run_build(crawl, WORK / f"out-{pages}", args.corpus, [])
        result.update(factor=factor, pages=pages, warc_files=files, input_mb=input_bytes / 1e6)
        rows.append(result)
        print(f"  {factor}x: {pages} pages, {result['input_mb']:.1f} MB in {files} WARCs: {result['wall_s']:.1f} s wall, "
              f"{result['cpu_s']:.1f} s CPU, peak RSS {result['max_process_rss_mb']:.0f} MB (process), "
              f"{result['tree_peak_rss_mb']:.0f} MB (tree)", flush=True)

    multi = None
    if args.multi_processing:
        largest = rows[-1]
        crawl, _files, _bytes = crawl_for(largest["pages"])
        flags = ["--direct_num_workers", str(args.multi_processing), "--direct_running_mode", "multi_processing"]
        out = WORK / f"out-{largest['pages']}-mp{args.multi_processing}"
        multi = run_build(crawl, out, args.corpus, flags)
        single, many = output_hashes(WORK / f"out-{largest['pages']}"), output_hashes(out)
        differ = sorted(k for k in single.keys() | many.keys() if single.get(k) != many.get(k))
        multi.update(pages=largest["pages"], input_mb=largest["input_mb"], workers=args.multi_processing, same_bytes=not differ, differ=differ)
        print(f"  multi_processing x{args.multi_processing}, {largest['pages']} pages: {multi['wall_s']:.1f} s wall, {multi['cpu_s']:.1f} s CPU, "
              f"tree peak {multi['tree_peak_rss_mb']:.0f} MB over {multi['processes']} processes; "
              f"{'same bytes' if not differ else 'OUTPUT DIFFERS: ' + ', '.join(differ[:5])}", flush=True)

    xs = [r["input_mb"] / 1e3 for r in rows]
    fits = {key: fit_line(xs, [r[key] for r in rows]) for key in ("cpu_s", "max_process_rss_mb", "tree_peak_rss_mb")}
    print(f"\nload average at end {os.getloadavg()[0]:.1f}\n")
    # Marginal costs (from the previous row): constant when time and memory grow linearly with the input.
    print("| input | pages | input MB | wall s | CPU s | marginal CPU s per MB | peak RSS MB, largest process | "
          "marginal RSS MB per input MB | peak RSS MB, tree |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for previous, r in zip([None, *rows], rows):
        if previous is None:
            marginal_cpu = marginal_rss = "-"
        else:
            grown = r["input_mb"] - previous["input_mb"]
            marginal_cpu = f"{(r['cpu_s'] - previous['cpu_s']) / grown:.2f}"
            marginal_rss = f"{(r['max_process_rss_mb'] - previous['max_process_rss_mb']) / grown:.1f}"
        print(f"| {r['factor']}x | {r['pages']} | {r['input_mb']:.1f} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {marginal_cpu} | "
              f"{r['max_process_rss_mb']:.0f} | {marginal_rss} | {r['tree_peak_rss_mb']:.0f} |")
    if multi:
        print(f"| {rows[-1]['factor']}x, multi_processing x{multi['workers']} | {multi['pages']} | {multi['input_mb']:.1f} | "
              f"{multi['wall_s']:.1f} | {multi['cpu_s']:.1f} | - | {multi['max_process_rss_mb']:.0f} | - | {multi['tree_peak_rss_mb']:.0f} |")
    (cpu_base, cpu_slope), (rss_base, rss_slope), (tree_base, tree_slope) = fits.values()
    print(f"\nfits over input GB: CPU s = {cpu_base:.1f} + {cpu_slope:.0f} x GB; largest-process peak RSS = {rss_base:.0f} MB + "
          f"{rss_slope:.0f} MB x GB; tree peak RSS = {tree_base:.0f} MB + {tree_slope:.0f} MB x GB")
    report = {"rows": rows, "multi_processing": multi, "fits_per_input_gb": {k: {"base": b, "slope": s} for k, (b, s) in fits.items()},
              "cpus": os.cpu_count(), "corpus": args.corpus, "base_pages": base}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1))
    print(f"written {args.json}")
    return 0 if multi is None or multi["same_bytes"] else 1


if __name__ == "__main__":
    sys.exit(main())
