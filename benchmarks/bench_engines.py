"""The same `m3w build all` on each engine we can run here: wall time, CPU time, peak RSS per process.

    python benchmarks/bench_engines.py [--pages 600] [--pages-per-file 100] [--engines fnapi,direct2,dask1,dask2]

Engines: the embedded FnApiRunner (one process); the same runner in multi-processing mode
(`--direct_num_workers 2 --direct_running_mode multi_processing`); Beam's DaskRunner on a local
cluster of 1 and of 2 single-threaded worker processes (`--dask-workers N`, cluster start-up
included). Each build runs as its own `m3w` process; a sampler follows that process and all
its descendants every 0.1 s for peak RSS and CPU time per process; the total CPU time (user +
sys) is what the kernel accounts to the reaped process tree. Every engine's output must have the same bytes
(the bench fails otherwise). Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from proctree import ProcessTreeSampler

from m3w_pipeline.sample.crawl import write_sample_crawl

ENGINES = {
    "fnapi": ("FnApiRunner (embedded, 1 process)", []),
    "direct2": ("FnApiRunner multi_processing, 2 workers", ["--direct_num_workers", "2", "--direct_running_mode", "multi_processing"]),
    "dask1": ("DaskRunner, LocalCluster 1 worker", ["--dask-workers", "1"]),
    "dask2": ("DaskRunner, LocalCluster 2 workers", ["--dask-workers", "2"]),
}


def run_engine(flags: list[str], workdir: Path, out: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "m3w", "build", "all", "--input", "crawl/*.warc.gz", "--output", out, "--force", *flags]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with open(workdir / f"{out}.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
        sampler = ProcessTreeSampler(proc.pid)
        sampler.start()
        rc = proc.wait()
    wall = time.perf_counter() - start
    sampler.stop()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if rc != 0:
        raise SystemExit(f"{out}: exit {rc}, see {workdir / (out + '.log')}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    others = sorted((pid for pid in sampler.peak_rss if pid != proc.pid), key=lambda pid: -sampler.cpu_s.get(pid, 0))
    return {"wall_s": wall, "cpu_s": cpu, "processes": len(sampler.peak_rss),
            "driver": (sampler.cpu_s.get(proc.pid, 0), sampler.peak_rss.get(proc.pid, 0) / 2**20),
            "others": [(sampler.cpu_s.get(pid, 0), sampler.peak_rss[pid] / 2**20) for pid in others]}


def output_hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=600)
    parser.add_argument("--pages-per-file", type=int, default=100, help="WARC files are the unit of read/extract parallelism")
    parser.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated, from {', '.join(ENGINES)}")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="m3w-bench-engines-"))
    crawl = write_sample_crawl(workdir / "crawl", pages=args.pages, seed=0, pages_per_file=args.pages_per_file)
    print(f"{args.pages} pages in {len(crawl.warc_paths)} WARC files; {os.cpu_count()} CPUs; "
          f"load average at start {os.getloadavg()[0]:.1f}", flush=True)
    rows, reference = [], None
    for key in args.engines.split(","):
        label, flags = ENGINES[key]
        result = run_engine(flags, workdir, f"out-{key}")
        hashes = output_hashes(workdir / f"out-{key}")
        reference = reference or hashes
        if hashes != reference:
            raise SystemExit(f"{key}: output differs from {args.engines.split(',')[0]}: "
                             f"{sorted(k for k in hashes.keys() | reference.keys() if hashes.get(k) != reference.get(k))}")
        rows.append((label, result))
        print(f"  {key}: {result['wall_s']:.1f} s wall, {result['cpu_s']:.1f} s CPU, same bytes ({len(hashes)} files)", flush=True)
    print(f"load average at end {os.getloadavg()[0]:.1f}\n")
    print("| engine | wall s | CPU s (user+sys, all processes) | CPU / wall | processes | driver: CPU s, peak RSS MB | "
          "other processes: CPU s, peak RSS MB |")
    print("|---|---:|---:|---:|---:|---|---|")
    for label, r in rows:
        others = ", ".join(f"{cpu:.1f} s {mb:.0f} MB" for cpu, mb in r["others"]) or "-"
        cpu, mb = r["driver"]
        print(f"| {label} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['cpu_s'] / r['wall_s']:.2f} | {r['processes']} | "
              f"{cpu:.1f} s {mb:.0f} MB | {others} |")
    if not args.keep:
        shutil.rmtree(workdir)


if __name__ == "__main__":
    main()
