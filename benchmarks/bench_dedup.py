"""Cost of the dedup stages per 10,000 documents: Beam PTransforms on FnApiRunner vs the pure functions.

    python benchmarks/bench_dedup.py [--docs 10000] [--no-write]

Synthetic documents (~300 words, 2-3 images each) with planted duplicates: 5% re-captures
of a URL, 8% exact text copies, 8% near copies (last 5% of the words replaced: Jaccard
~0.9), a logo on 20% of the pages, 3% identical image sets. Each stage runs as its own
pipeline on the embedded runner (single process, in-memory) over the same documents,
generated inside the pipeline from their index; an identity pipeline (generate -> count) is
measured too, and "net" subtracts it (the
cost of moving the documents through the runner, which the job pays anyway). The pure
column runs the `m3w_pipeline.filter.dedup` function over the same list in one process: the
algorithmic cost without Beam. Prints a table and writes the section "## Dedup (issue 3)"
of benchmarks/RESULTS.md (other sections untouched).
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
from m3w_pipeline.core.config import DedupConfig
from m3w_pipeline.core.document import DocImage, Document
from m3w_pipeline.core.nodes import ImageRef
from m3w_pipeline.filter import dedup as dd
from m3w_pipeline.media.images import ProcessedImage
from m3w_pipeline.read.warc import Provenance

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


STAGES: list[tuple[str, Callable[[], beam.PTransform], Callable[[list[Document]], object]]] = [
    ("URL", lambda: ds.DedupUrls(CONFIG), dd.dedup_urls),
    ("exact text", lambda: ds.DedupExactText(CONFIG), dd.dedup_exact_text),
    ("near text (MinHash LSH)", lambda: ds.DedupNearText(CONFIG), lambda docs: dd.dedup_near_text(docs, CONFIG)),
    ("images in document", lambda: ds.DedupImagesInDocument(CONFIG),
     lambda docs: [dd.dedup_images_in_document(d, CONFIG.max_phash_distance) for d in docs]),
    ("hot images", lambda: ds.RemoveHotImages(CONFIG),
     lambda docs: [dd.remove_hot_images(d, h) for h in [dd.hot_image_keys(docs, CONFIG.max_docs_per_image)] for d in docs]),
    ("image sets", lambda: ds.DedupImageSets(CONFIG), dd.dedup_image_sets),
]


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


class Chained(beam.PTransform):
    """The six single transforms one after another (a document shuffle per document-level stage)."""

    def expand(self, docs):
        for name, make in (("InDoc", ds.DedupImagesInDocument), ("Url", ds.DedupUrls), ("Exact", ds.DedupExactText),
                           ("Near", ds.DedupNearText), ("Hot", ds.RemoveHotImages), ("Sets", ds.DedupImageSets)):
            docs = (docs | name >> make(CONFIG))["docs"]
        return docs


def pure_all(docs: list[Document]) -> list[Document]:
    docs = [dd.dedup_images_in_document(d, CONFIG.max_phash_distance).doc for d in docs]
    docs = dd.dedup_urls(docs)[0]
    docs = dd.dedup_exact_text(docs)[0]
    docs = dd.dedup_near_text(docs, CONFIG)[0]
    hot = dd.hot_image_keys(docs, CONFIG.max_docs_per_image)
    docs = [dd.remove_hot_images(d, hot).doc for d in docs]
    return dd.dedup_image_sets(docs)[0]


STAGES += [
    ("all six, chained transforms", Chained, pure_all),
    ("all six, `Dedup` (one document join)", lambda: ds.Dedup(CONFIG), pure_all),
]


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
    gen = time.perf_counter() - t0
    print(f"{n} synthetic documents generated in {gen:.1f} s", flush=True)
    base = min(run_beam(n, Identity)[0] for _ in range(args.repeats))
    rows = []
    for name, make, pure in STAGES:
        pure_s = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            result = pure(docs)
            pure_s = min(pure_s, time.perf_counter() - t0)
        runs = [run_beam(n, make) for _ in range(args.repeats)]
        beam_s, kept = min(runs)
        pure_kept = len(result[0]) if isinstance(result, tuple) else len(result)  # type: ignore[arg-type]
        rows.append((name, beam_s * per10k, max(0.0, beam_s - base) * per10k, pure_s * per10k, kept, pure_kept))
        print(f"  {name:<26} beam {beam_s:7.2f} s  pure {pure_s:6.2f} s  kept {kept} (pure {pure_kept})", flush=True)
    header = "| stage | Beam s / 10k docs | net of identity pipeline | pure function s / 10k docs | kept (Beam / pure) |"
    lines = [header, "|---|---|---|---|---|", f"| identity pipeline (generate -> count) | {base * per10k:.2f} | - | - | {n} |"]
    for name, b, net, p, kept, pure_kept in rows:
        lines.append(f"| {name} | {b:.2f} | {net:.2f} | {p:.2f} | {kept} / {pure_kept} |")
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
        "(8%, Jaccard ~0.9), a logo on 20% of pages and repeated image sets (3%). Each stage is its own\n"
        "pipeline over all documents, generated inside it from their index; \"net\" subtracts the identity\n"
        "pipeline (generating the documents, pipeline start-up). \"pure\" runs the m3w_pipeline.filter.dedup functions\n"
        f"on a list in one process. MinHash: {CONFIG.num_perm} permutations, {CONFIG.bands} bands x {CONFIG.rows} rows, "
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
