"""Cost of the dedup stage per 10,000 documents: the Beam `Dedup` composite on FnApiRunner, and
the per-document work of its pure functions in one process.

    python benchmarks/bench_dedup.py [--docs 10000] [--no-write]

Synthetic documents (~300 words, 2-3 images each) with planted duplicates: 5% re-captures
of a URL, 8% exact text copies, 8% near copies (last 5% of the words replaced: Jaccard
~0.9), a logo on 20% of the pages, 3% identical image sets. `Dedup` runs as its own pipeline
on the embedded runner (single process, in-memory) over the documents, generated inside the
pipeline from their index; an identity pipeline (generate -> count) is measured too, and "net"
subtracts it (the cost of moving the documents through the runner, which the job pays anyway).
The pure row runs the per-document functions of `m3w_pipeline.filter.dedup` (words, keys, MinHash
signature, images in a document) over the same list in one process: the algorithmic floor of the
per-document work, without the grouping and joins. Prints a table and writes the section
"## Dedup (issue 3)" of benchmarks/RESULTS.md (other sections untouched).
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import re
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import apache_beam as beam
from apache_beam.metrics import Metrics, MetricsFilter

from beam_jobs import dedup_stages as ds
from m3w_pipeline.core.accounting import Tally
from m3w_pipeline.core.config import DedupConfig
from m3w_pipeline.core.document import DocImage, Document
from m3w_pipeline.core.nodes import ImageRef
from m3w_pipeline.core.web import Provenance
from m3w_pipeline.filter import dedup as dd
from m3w_pipeline.media.images import ProcessedImage

SECTION = "## Dedup (issue 3)"
CONFIG = DedupConfig()


def _image(url: str, sha: str) -> DocImage:
    return DocImage(ImageRef(url), "ok", ProcessedImage(b"\xff" * 64, "jpg", 400, 300, 400, 300, "JPEG", 64, sha, f"{hash(sha) & (2**64 - 1):016x}"))


def _is_original(i: int) -> bool:
    return i == 0 or random.Random(i).random() >= 0.21


def _original_words(j: int) -> list[str]:
    rng = random.Random(j * 7919 + 1)
    return [f"w{rng.randrange(30_000)}" for _ in range(rng.randint(200, 400))]


def _original_images(j: int) -> list[DocImage]:
    return [_image(f"https://img.example/{j}-a.jpg", f"sha-{j}-a"), _image(f"https://img.example/{j}-b.jpg", f"sha-{j}-b")]


def make_doc(i: int) -> Document:
    """Document i of the synthetic corpus, computed from i alone (so a pipeline can generate it)."""
    rng = random.Random(i)
    roll = rng.random()
    j = i
    if not _is_original(i):  # a copy of an earlier original document
        j = rng.randrange(i)
        while not _is_original(j):
            j -= 1
    words, url = _original_words(j), f"https://site{j % 500}.example/page/{j}"
    if roll < 0.05:
        pass  # re-capture: same URL, same text
    elif roll < 0.13:
        url = f"https://copy{i}.example/{i}"  # exact copy at another URL
    elif roll < 0.21:
        m = max(1, len(words) // 20)  # near copy: last 5% of the words replaced
        url, words = f"https://near{i}.example/{i}", words[:-m] + [f"n{rng.randrange(30_000)}" for _ in range(m)]
    date = f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T00:00:00Z"
    doc = Document(f"{i:08x}{rng.getrandbits(64):016x}", url, "x", None, "en", Provenance("bench.warc.gz", i, 1, f"<urn:{i}>", date))
    doc.texts.append(" ".join(words))
    doc.images.append(None)
    images = _original_images(j if rng.random() < 0.03 else i)  # 3%: the image set of an earlier page
    if rng.random() < 0.2:
        images.insert(0, _image("https://cdn.example/static/brand.png", "sha-logo"))
    for im in images:
        doc.texts.append(None)
        doc.images.append(im)
    return doc


def make_docs(n: int) -> list[Document]:
    return [make_doc(i) for i in range(n)]


def pure_per_document(docs: list[Document]) -> int:
    """The per-document functions `Dedup` calls, in one process; returns how many documents had a signature."""
    hasher, signed = dd.MinHasher(CONFIG), 0
    for doc in docs:
        doc = dd.dedup_images_in_document(doc, CONFIG.max_phash_distance, Tally())
        tokens = dd.document_words(doc)
        dd.dedup_keys(doc, tokens)
        signed += hasher.signature(tokens) is not None
    return signed


def run_beam(n: int, make: Callable[[], beam.PTransform]) -> tuple[float, int]:
    """Seconds to run generate(n docs) -> stage -> count, and how many documents it kept.

    The documents are generated inside the pipeline (Create of the indices, then make_doc),
    so the figure is not dominated by pickling a list of documents into the pipeline."""
    start = time.perf_counter()
    p = beam.Pipeline(runner="FnApiRunner")
    docs = p | beam.Create(list(range(n)), reshuffle=False) | "Generate" >> beam.Map(make_doc)
    out = docs | make()
    kept_docs = out["docs"] if isinstance(out, dict) else out
    _ = kept_docs | beam.Map(lambda _: Metrics.counter("bench", "kept").inc())
    result = p.run()
    result.wait_until_finish()
    seconds = time.perf_counter() - start
    counters = result.metrics().query(MetricsFilter().with_namespace("bench").with_name("kept"))["counters"]
    return seconds, sum(c.committed for c in counters)


class Identity(beam.PTransform):
    def expand(self, pcoll):
        return pcoll | beam.Map(lambda d: d)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs per measurement (the VM is shared)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    n = args.docs
    per10k = 10_000 / n
    t0 = time.perf_counter()
    docs = make_docs(n)
    print(f"{n} synthetic documents generated in {time.perf_counter() - t0:.1f} s", flush=True)
    base = min(run_beam(n, Identity)[0] for _ in range(args.repeats))
    beam_s, kept = min(run_beam(n, lambda: ds.Dedup(CONFIG)) for _ in range(args.repeats))
    pure_s = float("inf")
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        pure_per_document(docs)
        pure_s = min(pure_s, time.perf_counter() - t0)
    print(f"  Dedup: beam {beam_s:7.2f} s, kept {kept}; per-document functions {pure_s:6.2f} s", flush=True)
    lines = [
        "| measurement | s / 10k docs | net of identity pipeline | documents kept |",
        "|---|---|---|---|",
        f"| identity pipeline (generate -> count) | {base * per10k:.2f} | - | {n} |",
        f"| `Dedup` (all six stages, one document join) | {beam_s * per10k:.2f} | {max(0.0, beam_s - base) * per10k:.2f} | {kept} |",
        f"| per-document functions only (words, keys, signature, images in document), one process | {pure_s * per10k:.2f} | - | - |",
    ]
    table = "\n".join(lines)
    print()
    print(table)
    if not args.no_write:
        write_section(n, args.repeats, table)


def write_section(n: int, repeats: int, table: str) -> None:
    cpu = platform.processor() or platform.machine()
    body = (
        f"{SECTION}\n\n"
        f"`python benchmarks/bench_dedup.py --docs {n} --repeats {repeats}` on the {os.cpu_count()}-core dev VM ({cpu}; Beam's\n"
        f"embedded FnApiRunner, one process; best of {repeats}; other engineers' jobs running, so expect +-30%). Synthetic documents of\n"
        "200-400 words and 2-3 images, with planted URL re-captures (5%), exact copies (8%), near copies\n"
        "(8%, Jaccard ~0.9), a logo on 20% of pages and repeated image sets (3%). `Dedup` runs as its own\n"
        "pipeline over all documents, generated inside it from their index; \"net\" subtracts the identity\n"
        "pipeline (generating the documents, pipeline start-up). The last row runs the per-document functions of\n"
        f"m3w_pipeline.filter.dedup on a list in one process. MinHash: {CONFIG.num_perm} permutations, {CONFIG.bands} bands x {CONFIG.rows} rows, "
        f"{CONFIG.shingle_size}-word shingles, {CONFIG.cc_rounds} label-propagation rounds.\n\n"
        f"{table}\n"
    )
    path = ROOT / "benchmarks" / "RESULTS.md"
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: body + "\n", text)
    else:
        text = text.rstrip("\n") + "\n\n" + body
    path.write_text(text.rstrip("\n") + "\n", encoding="utf-8")
    print(f"wrote {SECTION!r} in {path}")


if __name__ == "__main__":
    main()
