"""Bounded fuzzing of everything that reads bytes from the web (`make fuzz`; a smoke run and every saved reproducer are in `make test`).

Targets: WARC reading, page extraction, image processing, video probing and WebVTT parsing.
Each input is a seed from ../shared/corpus (used in place, never copied) or a built-in seed,
changed by a list of mutations drawn from a seeded RNG. Each input runs in a forked child with
an address-space limit and a wall-clock limit, so a hang or a memory bomb is a finding, not a
stuck campaign. A finding is one of:

- `exception`: the target raised (the library promises a counted drop instead);
- `timeout`: the input took longer than the target's budget;
- `memory`: the child hit the memory limit (MemoryError or killed);
- `silent-cut` (WARC only): the file was cut inside a record and no BrokenFile said so.

A finding is saved as a *recipe* (seed name + mutations, JSON) under
tests/fuzz/reproducers/, never as a copy of the corpus bytes: `replay` rebuilds the input from
the recipe, and tests/fuzz/test_fuzz.py replays every saved recipe as a regression test.

    make fuzz FUZZ_SECONDS=600            (every target; or, from tests/:)
    python -m helpers.fuzzing run --target warc --seconds 600
    python -m helpers.fuzzing run --target all --seconds 60
    python -m helpers.fuzzing replay fuzz/reproducers/warc-1a2b3c.json
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import pickle
import random
import resource
import signal
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT.parent / "shared" / "corpus"
REPRODUCERS = Path(__file__).resolve().parents[1] / "fuzz" / "reproducers"
MEMORY_LIMIT = 3 << 30  # address space per child; a build must stay under ~1 GB RSS, Python + libraries map ~1 GB
TARGETS = ("warc", "extract", "image", "video", "webvtt")

# Byte strings that reach interesting states when inserted anywhere.
TOKENS = [
    b"\r\n", b"\r\n\r\n", b"\x00", b"\xff\xfe", b"\x1f\x8b\x08\x00", b"WARC/1.0\r\n", b"WARC-Type: response\r\n",
    b"Content-Length: 99999999999999999999999\r\n", b"Content-Length: -1\r\n", b"Content-Length: 0\r\n",
    b"WARC-Target-URI: \r\n", b"Content-Encoding: br\r\n", b"Content-Encoding: gzip, deflate, br\r\n",
    b"Transfer-Encoding: chunked\r\n", b"ffffffffffff\r\n", b"HTTP/1.1 200 OK\r\n", b"Content-Type: text/html; charset=x-bogus\r\n",
    b"<img srcset=\"" + b"," * 3000 + b"\">", b"<img src=\"a.jpg\" srcset=\"" + b"x.jpg 1x, " * 500 + b"\">",
    b"<div>" * 2000, b"<table>" + b"<tr><td>cell</td></tr>" * 3000 + b"</table>", b"<picture>" * 300,
    b"<meta charset=\"utf-32\">", b"<base href=\"javascript:alert(1)\">", b"<img src=\"data:image/gif;base64,R0lGOD\">",
    b"WEBVTT\n\n", b"00:00:00.000 --> 00:00:01.000\n", b"<c.x>" * 500, b"&#x" + b"9" * 40 + b";",
]


@dataclass
class Recipe:
    """How to rebuild one input: a seed and mutations (all JSON-serialisable)."""

    target: str
    seed: str  # "corpus:<relative path>" or "builtin:<name>"
    decompress: bool = False  # mutate the decompressed stream of a .gz seed
    regzip: bool = False  # ... and gzip it again as one member
    ops: list[list[Any]] = field(default_factory=list)

    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.__dict__, sort_keys=True).encode()).hexdigest()[:12]


# --------------------------------------------------------------------------- seeds

_VTT_SEEDS = {
    "vtt-basic": b"WEBVTT\n\n1\n00:00:00.000 --> 00:00:02.000\nA red <b>square</b> turns.\n\n00:00:02.000 --> 00:00:04.000\nIt &amp; stops.\n",
    "vtt-notes": b"\xef\xbb\xbfWEBVTT - title\r\n\r\nNOTE a note\r\n\r\nSTYLE\r\n::cue { color: red }\r\n\r\n"
                 b"00:01.000 --> 00:02.000 align:start\r\n<v Bob>Hi</v>\r\n",
}


def seeds(target: str) -> list[str]:
    folder = {"warc": "warc", "extract": "html", "image": "images", "video": "video"}.get(target)
    found = [f"corpus:{p.relative_to(CORPUS).as_posix()}" for p in sorted((CORPUS / folder).glob("*")) if p.is_file()] if folder else []
    if target == "webvtt":
        found = [f"builtin:{name}" for name in _VTT_SEEDS]
    if target == "extract":
        found = [s for s in found if s.endswith((".html", ".html.gz"))]
    return found


def seed_bytes(seed: str, decompress: bool) -> bytes:
    kind, _, name = seed.partition(":")
    data = _VTT_SEEDS[name] if kind == "builtin" else (CORPUS / name).read_bytes()
    if decompress or name.endswith(".html.gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error):
            pass
    return data


# --------------------------------------------------------------------------- mutations


def random_op(rng: random.Random, size: int) -> list[Any]:
    at = rng.randrange(max(size, 1))
    kind = rng.choice(["flip", "set", "delete", "insert", "cut", "repeat", "number"])
    if kind == "flip":
        return ["flip", at, rng.randrange(8)]
    if kind == "set":
        return ["set", at, rng.choice([0, 0x7F, 0x80, 0xFF, rng.randrange(256)])]
    if kind == "delete":
        return ["delete", at, rng.choice([1, 2, 4, 16, 256, 4096])]
    if kind == "insert":
        return ["insert", at, rng.randrange(len(TOKENS))]
    if kind == "cut":
        return ["cut", at]
    if kind == "repeat":
        return ["repeat", at, rng.choice([1, 8, 64, 512]), rng.choice([2, 16, 256])]
    return ["number", at, rng.choice(["0", "-1", "99999999999999999999999", "4294967296", "1e9", ""])]


def apply_op(data: bytes, op: list[Any]) -> bytes:
    kind, at = op[0], min(op[1], len(data))
    if kind == "flip" and at < len(data):
        return data[:at] + bytes([data[at] ^ (1 << op[2])]) + data[at + 1:]
    if kind == "set" and at < len(data):
        return data[:at] + bytes([op[2]]) + data[at + 1:]
    if kind == "delete":
        return data[:at] + data[at + op[2]:]
    if kind == "insert":
        return data[:at] + TOKENS[op[2]] + data[at:]
    if kind == "cut":
        return data[:at]
    if kind == "repeat":
        chunk = data[at:at + op[2]]
        return data[:at] + chunk * op[3] + data[at:]
    if kind == "number":  # replace the next run of ASCII digits after `at`
        start = next((i for i in range(at, min(len(data), at + 4096)) if 48 <= data[i] <= 57), None)
        if start is None:
            return data
        end = start
        while end < len(data) and 48 <= data[end] <= 57:
            end += 1
        return data[:start] + op[2].encode() + data[end:]
    return data


def build_input(recipe: Recipe) -> bytes:
    data = seed_bytes(recipe.seed, recipe.decompress)
    for op in recipe.ops:
        data = apply_op(data, op)
    if recipe.regzip:
        data = gzip.compress(data, mtime=0)
    return data


# --------------------------------------------------------------------------- targets


def _run_warc(data: bytes) -> dict[str, Any]:
    from m3w_pipeline.read.warc import BrokenFile, DroppedRecord, MediaRecord, Page, iter_warc

    items = list(iter_warc(io.BytesIO(data), "fuzz.warc"))
    assert all(isinstance(i, (Page, MediaRecord, DroppedRecord, BrokenFile)) for i in items), "unexpected item type"
    broken = [i for i in items if isinstance(i, BrokenFile)]
    assert len(broken) <= 1, "more than one BrokenFile for one file"
    return {"items": len(items), "broken": bool(broken)}


def _run_extract(data: bytes) -> dict[str, Any]:
    from m3w_pipeline.extract.page import extract_page

    page = extract_page(data, "https://fuzz.example/a/page.html")
    return {"nodes": len(page.nodes)}


def _run_image(data: bytes) -> dict[str, Any]:
    from m3w_pipeline.media.images import process_image

    result = process_image(data)
    return {"status": getattr(result, "status", None)}


def _run_video(data: bytes) -> dict[str, Any]:
    from m3w_pipeline.media.video import process_video

    result = process_video(data)
    return {"status": getattr(result, "status", None)}


def _run_webvtt(data: bytes) -> dict[str, Any]:
    from m3w_pipeline.media.video import webvtt_text

    text = webvtt_text(data)
    assert text is None or isinstance(text, str)
    return {"chars": len(text or "")}


RUNNERS: dict[str, Callable[[bytes], dict[str, Any]]] = {
    "warc": _run_warc, "extract": _run_extract, "image": _run_image, "video": _run_video, "webvtt": _run_webvtt,
}
BUDGET_S = {"warc": 10.0, "extract": 15.0, "image": 10.0, "video": 15.0, "webvtt": 5.0}


@dataclass
class Outcome:
    kind: str  # ok | exception | timeout | memory | silent-cut
    detail: str = ""
    elapsed_s: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)


def run_isolated(target: str, data: bytes, budget_s: Optional[float] = None) -> Outcome:
    """Run one input in a forked child under the memory and time limits."""
    budget_s = BUDGET_S[target] if budget_s is None else budget_s
    read_fd, write_fd = os.pipe()
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:  # child: limits, run, report through the pipe, never return into the caller's stack
        os.close(read_fd)
        quiet = os.open(os.devnull, os.O_WRONLY)  # libraries' warnings on hostile input are not findings
        os.dup2(quiet, 1)
        os.dup2(quiet, 2)
        try:
            resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
            try:
                report = Outcome("ok", info=RUNNERS[target](data))
            except MemoryError:
                report = Outcome("memory", "MemoryError")
            except BaseException as err:  # noqa: BLE001 - any escape is exactly the finding we are after
                report = Outcome("exception", f"{type(err).__name__}: {err}"[:500])
            with os.fdopen(write_fd, "wb") as out:
                pickle.dump(report, out)
        finally:
            os._exit(0)
    os.close(write_fd)
    deadline = t0 + budget_s
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(read_fd)
            return Outcome("timeout", f"over {budget_s:.0f} s", time.monotonic() - t0)
        time.sleep(0.002)
    with os.fdopen(read_fd, "rb") as pipe:
        raw = pipe.read()
    elapsed = time.monotonic() - t0
    if not raw:
        return Outcome("memory" if os.WIFSIGNALED(status) else "exception", f"child ended without a report (status {status})", elapsed)
    report = pickle.loads(raw)
    report.elapsed_s = elapsed
    return report


def record_boundaries(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of every record of an intact uncompressed WARC, from its own headers."""
    from warcio.archiveiterator import ArchiveIterator

    spans = []
    iterator = ArchiveIterator(io.BytesIO(data))
    for record in iterator:
        record.content_stream().read()
        start = iterator.get_record_offset()
        spans.append((start, start + iterator.get_record_length()))
    return spans


def check(recipe: Recipe, budget_s: Optional[float] = None) -> Outcome:
    data = build_input(recipe)
    outcome = run_isolated(recipe.target, data, budget_s)
    # A pure cut of an uncompressed WARC inside a record must be reported (1,029 cuts were silent once).
    if (outcome.kind == "ok" and recipe.target == "warc" and not recipe.regzip and len(recipe.ops) == 1
            and recipe.ops[0][0] == "cut" and not outcome.info.get("broken")):
        intact = seed_bytes(recipe.seed, recipe.decompress)
        if not intact[:2] == b"\x1f\x8b":
            cut = recipe.ops[0][1]
            try:
                inside = any(start < cut < end for start, end in record_boundaries(intact))
            except Exception:  # noqa: BLE001 - a seed warcio cannot read whole has no boundaries to judge by
                inside = False
            if inside:
                return Outcome("silent-cut", f"cut at {cut} inside a record, no BrokenFile", outcome.elapsed_s)
    return outcome


# --------------------------------------------------------------------------- campaigns


def warm(target: str) -> None:
    """Import the target's modules in the parent once, so each forked child starts warm."""
    try:
        RUNNERS[target](b"")
    except Exception:  # noqa: BLE001 - only the imports matter here
        pass


def campaign(target: str, seconds: float, seed: int = 0, save: bool = True, log: Callable[[str], None] = print,
             max_inputs: Optional[int] = None) -> dict[str, Any]:
    """Fuzz `target` for `seconds` (or `max_inputs` inputs, whichever ends first)."""
    warm(target)
    rng = random.Random(f"{target}:{seed}")
    pool = seeds(target)
    counts: dict[str, int] = {}
    findings: list[dict[str, Any]] = []
    seen: set[str] = set()
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end and (max_inputs is None or n < max_inputs):
        seed_name = rng.choice(pool)
        gz = seed_name.endswith(".gz") and target == "warc"
        recipe = Recipe(target, seed_name, decompress=gz and rng.random() < 0.6)
        recipe.regzip = recipe.decompress and rng.random() < 0.5
        size = len(seed_bytes(seed_name, recipe.decompress))
        recipe.ops = [random_op(rng, size) for _ in range(rng.choice([1, 1, 1, 2, 3, 5]))]
        outcome = check(recipe)
        n += 1
        counts[outcome.kind] = counts.get(outcome.kind, 0) + 1
        if outcome.kind != "ok":
            signature = f"{outcome.kind}:{outcome.detail.split(':')[0][:80]}"
            if signature not in seen:  # one reproducer per distinct kind of failure
                seen.add(signature)
                findings.append({"recipe": recipe.__dict__, "kind": outcome.kind, "detail": outcome.detail})
                log(f"  {target}: {outcome.kind} {outcome.detail[:160]}  [{recipe.key()}]")
                if save:
                    REPRODUCERS.mkdir(exist_ok=True)
                    path = REPRODUCERS / f"{target}-{recipe.key()}.json"
                    path.write_text(json.dumps({"recipe": recipe.__dict__, "found": outcome.kind, "detail": outcome.detail}, indent=1) + "\n")
    return {"target": target, "inputs": n, "seconds": seconds, "outcomes": counts, "findings": findings}


def load_recipe(path: Path) -> Recipe:
    return Recipe(**json.loads(path.read_text())["recipe"])


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run", help="fuzz for a while")
    p.add_argument("--target", default="all", choices=["all", *TARGETS])
    p.add_argument("--seconds", type=float, default=60.0, help="per target")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-save", action="store_true", help="do not write reproducers")
    p.add_argument("--json", help="write the summary here")
    p = sub.add_parser("replay", help="rebuild and rerun saved recipes")
    p.add_argument("paths", nargs="+", type=Path)
    args = parser.parse_args(argv)
    if args.cmd == "replay":
        bad = 0
        for path in args.paths:
            outcome = check(load_recipe(path))
            bad += outcome.kind != "ok"
            print(f"{path.name}: {outcome.kind} {outcome.detail[:200]} ({outcome.elapsed_s:.2f} s)")
        return 1 if bad else 0
    targets = TARGETS if args.target == "all" else (args.target,)
    summaries = []
    for target in targets:
        print(f"fuzzing {target} for {args.seconds:.0f} s ({len(seeds(target))} seeds)", flush=True)
        summary = campaign(target, args.seconds, args.seed, save=not args.no_save)
        summaries.append(summary)
        print(f"{target}: {summary['inputs']} inputs, outcomes {summary['outcomes']}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(summaries, indent=1))
    return 1 if any(s["findings"] for s in summaries) else 0


if __name__ == "__main__":
    sys.exit(main())
