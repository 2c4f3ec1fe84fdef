"""CPU cost of dedup in the build per 10,000 documents, as the build runs it: `DedupDecisions`, then
the M3W shard join that applies them (`write_deduped_m3w_shards`), on FnApiRunner; and the
per-document work of its pure functions in one process.

    python benchmarks/bench_dedup.py [--docs 10000] [--repeats 2] [--no-write]

Synthetic documents (~300 words, 2-3 images each) with planted duplicates: 5% re-captures
of a URL, 8% exact text copies, 8% near copies (last 5% of the words replaced: Jaccard
~0.9), a logo on 20% of the pages, 3% identical image sets. Each row is its own pipeline on the
embedded runner (single process, in-memory), the documents generated inside it from their index
(image metadata; their bytes travel apart, as in the build):
  - identity: generate -> count, the cost of moving the documents through the runner;
  - decisions: `DedupDecisions` alone (the four drop stages and the hot keys, on the small keys);
  - shards with dedup: the build's M3W path, the decisions met by the documents in the shard join,
    hot images removed, post-dedup check, image bytes shipped, shards written to a temp folder;
  - shards without dedup: the shard join and writer alone (`write_m3w_shards`), so "with" minus
    "without" is what dedup adds to a build.
The rows run interleaved, `--repeats` rounds, best CPU time (user + sys of this process) kept.
The pure row runs the per-document functions of `m3w_pipeline.filter.dedup` (words, keys, MinHash
signature, images in a document) over the same list in one process: the algorithmic floor of the
per-document work, without the grouping and joins. Prints a table and writes the section
"## Dedup (issue 3)" of benchmarks/RESULTS.md (other sections untouched).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import platform
import random
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import apache_beam as beam
from apache_beam.metrics import Metrics, MetricsFilter

from beam_jobs import dedup_stages as ds
from beam_jobs.counting import CountedSteps
from beam_jobs.image_bytes import ImageShipment
from beam_jobs.outputs import write_deduped_m3w_shards, write_m3w_shards
from m3w_pipeline.core.accounting import Tally
from m3w_pipeline.core.config import BuildConfig, DedupConfig
from m3w_pipeline.core.document import DocImage, Document
from m3w_pipeline.core.nodes import ImageRef
from m3w_pipeline.core.web import Provenance
from m3w_pipeline.filter import dedup as dd
from m3w_pipeline.media.images import ProcessedImage

SECTION = "## Dedup (issue 3)"
CONFIG = DedupConfig()
BUILD = BuildConfig(dedup=CONFIG)
IMAGE_BYTES = b"\xff" * 64  # every image's processed bytes (what they are does not matter here, only that they move)


def _image(url: str, sha: str) -> DocImage:
    """An image as the build's documents carry it: metadata, its bytes emptied (beam_jobs.image_bytes)."""
    phash = hashlib.blake2b(sha.encode(), digest_size=8).hexdigest()
    return DocImage(ImageRef(url), "ok", ProcessedImage(b"", "jpg", 400, 300, 400, 300, "JPEG", len(IMAGE_BYTES), sha, phash))


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
    """The per-document functions `DedupDecisions` calls, in one process; returns how many documents had a signature."""
    hasher, signed = dd.MinHasher(CONFIG), 0
    for doc in docs:
        doc = dd.dedup_images_in_document(doc, CONFIG.max_phash_distance, Tally())
        tokens = dd.document_words(doc)
        dd.dedup_keys(doc, tokens)
        signed += hasher.signature(tokens) is not None
    return signed


# ----------------------------------------------------------------------------- the rows: documents, output folder -> kept counts

Row = Callable[[beam.PCollection, str], beam.PCollection]


def _image_bytes(doc: Document) -> Iterator[tuple[str, bytes]]:
    """(sha256, bytes) of a document's images: the build emits them once per processed URL, apart from the documents."""
    for im in doc.images:
        if im is not None and im.image is not None:
            yield im.image.sha256, IMAGE_BYTES


def _shipment(docs: beam.PCollection) -> tuple[ImageShipment, CountedSteps]:
    steps = CountedSteps()
    return ImageShipment(steps, docs | "ImageBytes" >> beam.FlatMap(_image_bytes)), steps


def identity(docs: beam.PCollection, _: str) -> beam.PCollection:
    return docs | "One" >> beam.Map(lambda _: 1)


def decisions(docs: beam.PCollection, _: str) -> beam.PCollection:
    return (docs | "Dedup" >> ds.DedupDecisions(CONFIG))["survivors"] | "OneSurvivor" >> beam.Map(lambda _: 1)


def shards_with_dedup(docs: beam.PCollection, out: str) -> beam.PCollection:
    shipment, steps = _shipment(docs)
    decided = docs | "Dedup" >> ds.DedupDecisions(CONFIG)
    write_deduped_m3w_shards(decided, out, BUILD, shipment, steps, lambda rejects: None)
    return shipment.ship()["m3w"] | "Samples" >> beam.Map(lambda info: info["samples"])


def shards_without_dedup(docs: beam.PCollection, out: str) -> beam.PCollection:
    shipment, _ = _shipment(docs)
    write_m3w_shards(docs, out, BUILD.shards, shipment)
    return shipment.ship()["m3w"] | "Samples" >> beam.Map(lambda info: info["samples"])


ROWS: dict[str, Row] = {
    "identity pipeline (generate -> count)": identity,
    "`DedupDecisions` (drop stages and hot keys, on the keys)": decisions,
    "shards with dedup (decisions + shard join, hot removal, writer)": shards_with_dedup,
    "shards without dedup (shard join and writer alone)": shards_without_dedup,
}


def run_beam(n: int, row: Row) -> tuple[float, int]:
    """CPU seconds of this process to run generate(n docs) -> row, and how many documents it kept.

    The documents are generated inside the pipeline (Create of the indices, then make_doc),
    so the figure is not dominated by pickling a list of documents into the pipeline."""
    with tempfile.TemporaryDirectory(prefix="bench_dedup_") as out:
        start = time.process_time()
        p = beam.Pipeline(runner="FnApiRunner")
        docs = p | beam.Create(list(range(n)), reshuffle=False) | "Generate" >> beam.Map(make_doc)
        _ = row(docs, out) | "Kept" >> beam.Map(lambda k: Metrics.counter("bench", "kept").inc(k))
        result = p.run()
        result.wait_until_finish()
        seconds = time.process_time() - start
    counters = result.metrics().query(MetricsFilter().with_namespace("bench").with_name("kept"))["counters"]
    return seconds, sum(c.committed for c in counters)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=2, help="rounds of the interleaved rows; the best of each is kept (the VM is shared)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    n = args.docs
    per10k = 10_000 / n
    t0 = time.perf_counter()
    docs = make_docs(n)
    print(f"{n} synthetic documents generated in {time.perf_counter() - t0:.1f} s", flush=True)
    best: dict[str, tuple[float, int]] = {}
    pure_s = float("inf")
    for round_ in range(args.repeats):
        for name, row in ROWS.items():
            seconds, kept = run_beam(n, row)
            print(f"  round {round_ + 1}: {name}: {seconds:7.2f} CPU s, kept {kept}", flush=True)
            best[name] = min(best.get(name, (seconds, kept)), (seconds, kept))
        t0 = time.process_time()
        pure_per_document(docs)
        pure_s = min(pure_s, time.process_time() - t0)
    base = best["identity pipeline (generate -> count)"][0]
    with_dedup = best["shards with dedup (decisions + shard join, hot removal, writer)"][0]
    without = best["shards without dedup (shard join and writer alone)"][0]
    lines = ["| measurement | CPU s / 10k docs | net of identity pipeline | documents kept |", "|---|---|---|---|"]
    for name, (seconds, kept) in best.items():
        net = "-" if ROWS[name] is identity else f"{max(0.0, seconds - base) * per10k:.2f}"
        lines.append(f"| {name} | {seconds * per10k:.2f} | {net} | {kept} |")
    lines.append(f"| dedup's cost in the build (with minus without dedup) | {(with_dedup - without) * per10k:.2f} | - | - |")
    lines.append(f"| per-document functions only (words, keys, signature, images in document), one process | {pure_s * per10k:.2f} | - | - |")
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
        f"embedded FnApiRunner, one process; CPU time (user + sys) of the process, rows interleaved, best of {repeats} rounds;\n"
        "other engineers' jobs running). Synthetic documents of 200-400 words and 2-3 images, with planted URL\n"
        "re-captures (5%), exact copies (8%), near copies (8%, Jaccard ~0.9), a logo on 20% of pages and repeated\n"
        "image sets (3%). Each row is its own pipeline over all documents, generated inside it from their index;\n"
        "\"net\" subtracts the identity pipeline (generating the documents, pipeline start-up). \"Shards with dedup\"\n"
        "is the build's M3W path: `DedupDecisions`, then the shard join that applies them\n"
        "(`beam_jobs.outputs.write_deduped_m3w_shards`: drops, hot images, post-dedup check, image bytes shipped,\n"
        "shards written); \"without\" is the shard join and writer alone, so their difference is what dedup adds to a\n"
        "build. The last row runs the per-document functions of m3w_pipeline.filter.dedup on a list in one process.\n"
        f"MinHash: {CONFIG.num_perm} permutations, {CONFIG.bands} bands x {CONFIG.rows} rows, "
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
