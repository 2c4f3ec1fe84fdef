"""The live progress line of `m3w build` and `m3w export`: shown on a terminal (here a real pseudo-terminal),
counts that move while the build runs, cleared before the summary; absent when output is piped; and the
build's bytes are the same either way."""
from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from beam_jobs.progress import FLUSH_S
from m3w.progress import REFRESH_S

ROOT = Path(__file__).resolve().parents[2]
M3W = [sys.executable, "-m", "m3w"]
BUILD_LINE = re.compile(r"files (\d+)/(\d+) \| ([\d,]+) records [\d,]+/s \| ([\d,]+) pages [\d,]+/s \| ([\d,]+) documents \| \d+:\d\d elapsed")
EXPORT_LINE = re.compile(r"shards (\d+)/(\d+) \| ([\d,]+)/([\d,]+) documents")


# Each WARC file's read starts with this pause (several line refreshes and worker flushes), so every
# files-done count stays on the line for whole redraws whatever the machine's speed or load: the
# build's own work may take less than one refresh on a fast machine or come in one burst on a loaded one.
PAUSE_PER_FILE_S = 3 * max(REFRESH_S, FLUSH_S)
# Loaded by every Python process of a paced build (the CLI and Beam's worker processes) through PYTHONPATH.
PACED_SITECUSTOMIZE = f"""
import time
from m3w_pipeline.read import warc

_iter_warc = warc.iter_warc


def _paced_iter_warc(*args, **kwargs):
    time.sleep({PAUSE_PER_FILE_S})
    yield from _iter_warc(*args, **kwargs)


warc.iter_warc = _paced_iter_warc
"""


def _env(paced: Path | None = None) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([*([str(paced)] if paced else []), str(ROOT)])}


@pytest.fixture(scope="module")
def paced(tmp_path_factory) -> Path:
    """A folder whose sitecustomize.py pauses before each WARC file is read (see PAUSE_PER_FILE_S)."""
    folder = tmp_path_factory.mktemp("paced")
    (folder / "sitecustomize.py").write_text(PACED_SITECUSTOMIZE)
    return folder


def run_in_pty(args: list[str], timeout: float = 600, columns: int = 200, paced: Path | None = None) -> tuple[int, str]:
    """Run a command with stdin, stdout and stderr on a pseudo-terminal; (exit code, all it wrote)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=_env(paced), cwd=ROOT)
    os.close(slave)
    out, deadline = bytearray(), time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    data = os.read(master, 1 << 16)
                except OSError:  # EIO: every writer closed the terminal
                    break
                if not data:
                    break
                out += data
            elif proc.poll() is not None:
                break
    finally:
        os.close(master)
        proc.kill() if proc.poll() is None else None
    return proc.wait(), out.decode("utf-8", "replace")


def progress_lines(output: str, pattern: re.Pattern) -> list[re.Match]:
    """Every state of the line: the text between carriage returns, without the erase-to-end-of-line code."""
    return [m for part in output.split("\r") if (m := pattern.match(part.replace("\x1b[K", "")))]


def _n(text: str) -> int:
    return int(text.replace(",", ""))


@pytest.fixture(scope="module")
def crawl(tmp_path_factory) -> list[str]:
    """A small generated crawl in 5 WARC files, so files done moves during the read."""
    from m3w_pipeline.sample.crawl import write_sample_crawl

    return [str(p) for p in write_sample_crawl(tmp_path_factory.mktemp("crawl"), pages=100, seed=3, pages_per_file=20).warc_paths]


@pytest.fixture(scope="module")
def piped_build(crawl, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("piped") / "out"
    proc = subprocess.run([*M3W, "build", "m3w", "--input", *crawl, "--output", str(out)], capture_output=True, text=True, env=_env(), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


@pytest.mark.slow
def test_build_progress_moves_on_a_terminal_and_is_absent_in_a_pipe(crawl, piped_build, paced, tmp_path):
    out = tmp_path / "out"
    rc, output = run_in_pty([*M3W, "build", "m3w", "--input", *crawl, "--output", str(out)], paced=paced)
    assert rc == 0, output[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())

    lines = progress_lines(output, BUILD_LINE)
    states = [tuple(_n(g) for g in m.groups()) for m in lines]
    # the counts change while it runs: with counts that only grow, three different lines mean one was
    # drawn part way through; paced, the embedded runner reads the files one after another, so the
    # line shows every files-done count on its way to 5
    assert len(set(states)) >= 3, output[:3000]
    assert {files for files, *_ in states} >= {1, 2, 3, 4, 5}, states
    assert all(total == 5 for _, total, *_ in states)
    for before, after in zip(states, states[1:]):  # files, records, pages and documents only grow
        assert all(a >= b for a, b in zip(after[2:], before[2:])) and after[0] >= before[0]
    files, _, records, pages, docs = states[-1]  # the final counts are the build's
    assert (files, records, pages, docs) == (5, manifest["stages"]["records"]["in"], manifest["stages"]["pages"]["in"],
                                             manifest["stages"]["documents"]["in"])
    # Cleared before the summary, which starts at column 0.
    assert "\r\x1b[Kcorpus m3w: " in output

    piped_out, piped = piped_build
    assert "files 0/" not in piped.stderr and "\r" not in piped.stderr + piped.stdout
    assert piped.stdout.startswith("corpus m3w: ")
    # The same bytes with and without the progress line.
    piped_manifest = json.loads((piped_out / "manifest.json").read_text())
    assert [(s["name"], s["tar_sha256"]) for s in manifest["shards"]] == [(s["name"], s["tar_sha256"]) for s in piped_manifest["shards"]]
    assert manifest["stages"] == piped_manifest["stages"]


@pytest.mark.slow
def test_worker_processes_report_progress_and_stay_quiet(crawl, piped_build, paced, tmp_path):
    """--direct_running_mode multi_processing: the steps run in worker processes, whose counts reach the
    line through their files; the workers print none of Beam's start-up logging; the bytes are the same."""
    out = tmp_path / "out"
    rc, output = run_in_pty([*M3W, "build", "m3w", "--input", *crawl, "--output", str(out),
                             "--direct_running_mode", "multi_processing", "--direct_num_workers", "2"], paced=paced)
    assert rc == 0, output[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    states = [tuple(_n(g) for g in m.groups()) for m in progress_lines(output, BUILD_LINE)]
    assert len(set(states)) >= 3, states  # the workers' files are rewritten while they run
    assert states[-1] == (5, 5, manifest["stages"]["records"]["in"], manifest["stages"]["pages"]["in"],
                                     manifest["stages"]["documents"]["in"]), states[-3:]
    assert "INFO" not in output and "apache_beam" not in output and "apitools" not in output, output[:3000]
    piped_manifest = json.loads((piped_build[0] / "manifest.json").read_text())
    assert [s["tar_sha256"] for s in manifest["shards"]] == [s["tar_sha256"] for s in piped_manifest["shards"]]


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["mmc4", "parquet"])
def test_export_progress_on_a_terminal_only(piped_build, tmp_path, fmt):
    src = piped_build[0]
    samples = json.loads((src / "manifest.json").read_text())["totals"]["samples"]
    rc, output = run_in_pty([*M3W, "export", fmt, str(src), str(tmp_path / "tty")])
    assert rc == 0, output[-3000:]
    states = [tuple(_n(g) for g in m.groups()) for m in progress_lines(output, EXPORT_LINE)]
    assert states[0] == (0, 1, 0, samples) and states[-1] == (1, 1, samples, samples), states
    result = json.loads(output[output.index("{"):].replace("\r\n", "\n"))
    assert result["documents"] + result["skipped_documents"] == samples

    piped = subprocess.run([*M3W, "export", fmt, str(src), str(tmp_path / "pipe")], capture_output=True, text=True, env=_env(), cwd=ROOT)
    assert piped.returncode == 0 and piped.stderr == "" and json.loads(piped.stdout)["documents"] == result["documents"]


@pytest.mark.slow
def test_the_line_fits_a_narrow_terminal(piped_build, tmp_path):
    """A line wider than the terminal would wrap, and \\r could no longer rewrite it in place."""
    rc, output = run_in_pty([*M3W, "export", "mmc4", str(piped_build[0]), str(tmp_path / "e")], columns=30)
    assert rc == 0, output[-3000:]
    shown = [part.replace("\x1b[K", "") for part in output.split("\r") if part.startswith("shards ")]
    assert shown and all(len(line) <= 29 for line in shown), shown


def test_counts_reach_the_reader_from_this_process_and_from_worker_processes(tmp_path):
    from beam_jobs import progress

    with progress.Reader() as reader:
        with progress.element("ReadWarcFn") as tally:
            tally.add("records", "page", 3)
            assert reader.totals()[("records", "in")] == 3  # seen while the element is still being worked on
        assert reader.totals()[(progress.STEP, "ReadWarcFn")] == 1
        # A worker process (what multi_processing and a local Dask cluster start) reports through its own file.
        worker = (
            "from beam_jobs import progress\n"
            "with progress.element('ExtractFn') as t:\n    t.add('pages', 'extracted', 5)\n"
        )  # it ends at once: its counts are written when it exits
        subprocess.run([sys.executable, "-c", worker], check=True, env=_env(), cwd=ROOT)
        totals = reader.totals()
        assert totals[("pages", "in")] == 5 and totals[(progress.STEP, "ExtractFn")] == 1 and totals[("records", "in")] == 3
        folder = reader.folder
    assert not Path(folder).exists() and progress.ENV not in os.environ
    with progress.element("ReadWarcFn") as tally:  # no reader: nothing is kept
        tally.add("records", "page")
    assert progress._current() is None


@pytest.mark.slow
def test_build_summary_is_in_pipeline_order_with_aligned_columns(piped_build):
    from m3w.cli import STAGE_ORDER, summary_table
    from m3w_pipeline.core.accounting import KEPT_OUTCOMES

    order = [stage for _, group in STAGE_ORDER for stage in group]
    assert sorted(order) == sorted(KEPT_OUTCOMES)  # every stage the accounting knows has its place
    out, proc = piped_build
    manifest = json.loads((out / "manifest.json").read_text())
    rows = [line for line in proc.stdout.splitlines() if line.startswith("  ")]
    printed = [row.split()[0] for row in rows]
    assert printed == [s for s in order if s in manifest["stages"]]
    assert printed[:3] == ["records", "pages", "page_images"] and printed[-1] == "post_dedup"

    # A stage name longer than any known one (a stage added later) goes last and keeps the columns aligned.
    long_name = "a_stage_whose_name_is_much_longer_than_the_others"
    manifest["stages"][long_name] = {"in": 1234567, "kept": {"kept": 1234567}, "dropped": {}, "reconciles": True}
    lines = summary_table({"m3w": manifest})
    table = [line for line in lines if line.startswith("  ") or line.startswith("stage ")]
    assert table[-1].split()[0] == long_name and "1,234,567" in table[-1]
    in_ends = {line.index(line.split()[1]) + len(line.split()[1]) for line in table}
    kept_starts = {len(line) - len(line[line.index(line.split()[1]) + len(line.split()[1]):].lstrip()) for line in table}
    assert len(in_ends) == 1 and len(kept_starts) == 1, table  # `in` right-aligned, `kept` starts in one column
