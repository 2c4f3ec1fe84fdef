"""Seconds for `m3w stats` (index only / index + JSON by offset / tar scan / Beam), `validate` and `export`.

    python benchmarks/bench_stats.py [--docs 5000] [--shards 20]

Writes a synthetic M3W corpus (real shard writer; a handful of processed images reused, so
it builds in seconds) under benchmarks/_work/stats/, then times each path single-process.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from PIL import Image

from m3w_pipeline.core.accounting import build_manifest
from m3w_pipeline.core.document import DocImage, Document, document_key
from m3w_pipeline.core.nodes import ImageRef
from m3w_pipeline.core.web import Provenance, url_domain
from m3w_pipeline.media.images import process_image
from m3w_pipeline.write.layout import index_path
from m3w_pipeline.write.shards import parquet_bytes, sha256_bytes, write_m3w_shard

WORDS = "the a river bridge garden mural lamp old quiet city harbour painted framed restored gallery".split()


def _images(rng: random.Random, n: int) -> list:
    out = []
    for i in range(n):
        w, h = rng.choice([(320, 240), (256, 256), (400, 300), (300, 450)])
        img = Image.new("RGB", (w, h), tuple(rng.randrange(256) for _ in range(3)))
        img.paste(tuple(rng.randrange(256) for _ in range(3)), (10, 10, w // 2, h // 2))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        out.append(process_image(buf.getvalue()).image)
    return out


def synthetic_corpus(out: Path, n_docs: int, n_shards: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    pool = _images(rng, 12)
    docs = []
    for i in range(n_docs):
        url = f"https://site{i % 97}.example.com/page/{i}"
        prov = Provenance("crawl/bench.warc.gz", i * 4096, 4000, f"<urn:uuid:{i:012d}>", "2024-01-01T00:00:00Z")
        doc = Document(document_key(url, prov), url, url_domain(url), f"page {i}", rng.choice(["en", "de", "fr", None]), prov)
        for _ in range(rng.randint(2, 12)):
            if rng.random() < 0.3:
                im = rng.choice(pool)
                doc.texts.append(None)
                doc.images.append(DocImage(ImageRef(f"https://cdn.example.com/{rng.randrange(10**9)}.jpg", alt="an image"), "ok", im))
            else:
                doc.texts.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 120))))
                doc.images.append(None)
        docs.append(doc)
    out.mkdir(parents=True, exist_ok=True)
    infos = []
    for s in range(n_shards):
        name = f"m3w-{s:05d}"
        buf = io.BytesIO()
        info, table = write_m3w_shard(docs[s::n_shards], name, buf)
        index = parquet_bytes(table)
        (out / f"{name}.tar").write_bytes(buf.getvalue())
        Path(index_path(str(out), name)).parent.mkdir(exist_ok=True)
        Path(index_path(str(out), name)).write_bytes(index)
        info.parquet_bytes, info.parquet_sha256 = len(index), sha256_bytes(index)
        infos.append(dataclasses.asdict(info))
    n = len(docs)
    counts = {("pages", "in"): n, ("pages", "extracted"): n, ("documents", "in"): n, ("documents", "kept"): n,
              ("records", "in"): n, ("records", "page"): n}
    manifest = build_manifest(counts, infos, [], ["crawl/bench.warc.gz"], {}, "m3w")
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))


def timed(label: str, fn, results: list) -> None:
    t = time.perf_counter()
    fn()
    results.append((label, time.perf_counter() - t))
    print(f"{label:<44} {results[-1][1]:8.2f} s", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--docs", type=int, default=5000)
    parser.add_argument("--shards", type=int, default=20)
    args = parser.parse_args()

    from m3w_pipeline.inspect.corpus import open_corpus
    from m3w_pipeline.inspect.export import export_mmc4, export_parquet
    from m3w_pipeline.inspect.stats import StatsConfig, compute_stats
    from m3w_pipeline.inspect.validate import ValidateConfig, validate_corpus

    work = ROOT / "benchmarks" / "_work" / "stats"
    shutil.rmtree(work, ignore_errors=True)
    corpus_dir = work / "m3w"
    t = time.perf_counter()
    synthetic_corpus(corpus_dir, args.docs, args.shards)
    size = sum(p.stat().st_size for p in corpus_dir.glob("*.tar"))
    print(f"corpus: {args.docs} documents, {args.shards} shards, {size / 1e6:.0f} MB of tar (built in {time.perf_counter() - t:.1f} s)")
    corpus = open_corpus(str(corpus_dir))
    compute_stats(corpus, config=StatsConfig(source="index"))  # warm imports
    results: list = []
    for source in ("index", "auto", "tar"):
        timed(f"stats --source {source}", lambda s=source: compute_stats(corpus, config=StatsConfig(source=s)), results)

    def beam() -> None:
        from beam_jobs.stats_job import run_stats_job

        run_stats_job(corpus, StatsConfig(), ["--runner", "FnApiRunner"], str(work / "beam.json"))

    timed("stats --runner FnApiRunner (1 worker)", beam, results)
    timed("validate", lambda: validate_corpus(str(corpus_dir)), results)
    timed("validate --no-decode", lambda: validate_corpus(str(corpus_dir), config=ValidateConfig(decode_images=False)), results)
    workers = min(8, os.cpu_count() or 1)
    timed(f"validate --workers {workers}", lambda: validate_corpus(str(corpus_dir), config=ValidateConfig(workers=workers)), results)
    timed("export parquet (bytes)", lambda: export_parquet(corpus, str(work / "obelics")), results)
    timed("export mmc4", lambda: export_mmc4(corpus, str(work / "mmc4")), results)
    docs_per_s = {label: args.docs / s for label, s in results}
    rates = {k: round(v) for k, v in docs_per_s.items()}
    print(json.dumps({"docs": args.docs, "shards": args.shards, "tar_mb": round(size / 1e6), "docs_per_s": rates}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
