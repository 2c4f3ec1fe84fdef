"""`m3w stats`, `m3w validate`, `m3w export`: look at a corpus before spending GPU weeks on it.

This is the layer that picks a filesystem: local paths (and file:// URLs) open with plain
`open`; gs://, s3:// and other schemes go through Beam's FileSystems, imported only then.
The m3w_pipeline functions just receive the opener / lister / writer callables.
"""
from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager
from typing import Any, BinaryIO, Callable, Iterator, Optional

# m3w_pipeline is imported inside the functions: building the parser must stay cheap for every command.
KINDS = ("m3w", "pairs", "video")  # = m3w_pipeline.inspect.corpus.KINDS


# ----------------------------------------------------------------------------- filesystems


def open_remote(path: str) -> BinaryIO:
    """Opener for gs://, s3://, ... through Beam's filesystems (module-level: picklable for workers)."""
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def list_remote(directory: str) -> list[str]:
    """Lister for remote directories: file names directly under DIRECTORY/."""
    from apache_beam.io.filesystems import FileSystems

    pattern = FileSystems.join(directory, "*")
    return sorted(m.path.rsplit("/", 1)[-1] for m in FileSystems.match([pattern])[0].metadata_list)


def filesystem_for(path: str) -> tuple[Callable[[str], BinaryIO], Callable[[str], list[str]]]:
    """(opener, lister) for a corpus location: local files, or Beam's filesystems for remote URLs."""
    from m3w_pipeline.inspect.corpus import is_remote, list_local, open_local

    return (open_remote, list_remote) if is_remote(path) else (open_local, list_local)


def writer_for(path: str) -> Callable[[str], Any]:
    """A writer (path -> context manager of a writable stream) for an export destination."""
    from m3w_pipeline.inspect.corpus import is_remote
    from m3w_pipeline.inspect.export import write_local

    if not is_remote(path):
        return write_local
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    @contextmanager
    def write_remote(p: str) -> Iterator[BinaryIO]:
        with FileSystems.create(p, mime_type="application/octet-stream", compression_type=CompressionTypes.UNCOMPRESSED) as out:
            yield out

    return write_remote


def _progress(args: argparse.Namespace) -> Optional[bool]:
    return False if getattr(args, "no_progress", False) else None


# ----------------------------------------------------------------------------- stats


def add_stats_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="corpus directory (local, file://, gs://, s3://)")
    p.add_argument("--json", action="store_true", help="print the statistics as JSON")
    p.add_argument("--report", metavar="DIR", help="write PNG plots and a self-contained DIR/index.html")
    p.add_argument(
        "--source",
        choices=["auto", "index", "tar"],
        default="auto",
        help="auto: Parquet index + JSON members found by offset (tar scan without index); "
        "index: Parquet only, fastest, no image-level distributions; tar: scan the tars",
    )
    p.add_argument("--kind", choices=KINDS, help="corpus kind (default: the manifest's `corpus`, else sniffed)")
    p.add_argument("--top", type=int, default=20, help="domains / languages listed")
    p.add_argument("--report-samples", type=int, default=5, help="documents rendered in the report")
    p.add_argument("--tokenizer", help="also count tokens: 'byte' or a local Hugging Face tokenizer directory")
    p.add_argument(
        "--runner",
        help="compute as a Beam job on this runner (FnApiRunner, DataflowRunner, PortableRunner, ...); "
        "other flags `m3w stats` does not know are Beam pipeline options",
    )
    p.add_argument("--stats-output", help="with --runner: where the job writes its merged statistics (default: --temp_location or a local temp dir)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def _token_counter(spec: Optional[str]) -> Optional[Callable[[str], int]]:
    if not spec:
        return None
    from model.tokenizer import load_tokenizer

    tok = load_tokenizer(None if spec == "byte" else spec)
    return lambda text: len(tok.encode(text))


def run_stats(args: argparse.Namespace) -> int:
    from m3w_pipeline.inspect.corpus import local_path, open_corpus
    from m3w_pipeline.inspect.report import ReportConfig, write_report
    from m3w_pipeline.inspect.stats import StatsConfig, compute_stats, format_table, summarize

    beam_args = list(getattr(args, "beam_args", None) or [])
    if beam_args and not args.runner:
        print(f"m3w stats: unrecognized arguments: {' '.join(beam_args)} (Beam options need --runner)", file=sys.stderr)
        return 2
    path = local_path(args.path)
    opener, lister = filesystem_for(path)
    corpus = open_corpus(path, opener, lister, kind=args.kind)
    config = StatsConfig(source=args.source, top_n=args.top)
    if args.runner:
        if args.tokenizer:
            print("m3w stats: --tokenizer is not supported with --runner", file=sys.stderr)
            return 2
        from beam_jobs.stats_job import run_stats_job

        stats = run_stats_job(corpus, config, ["--runner", args.runner, *beam_args], args.stats_output)
        source = f"{args.source} (Beam {args.runner})"
    else:
        stats = compute_stats(corpus, opener, config, _token_counter(args.tokenizer), progress=_progress(args))
        source = args.source
    summary = summarize(stats, corpus, config, source)
    if args.report:
        html = write_report(summary, args.report, corpus, opener, ReportConfig(sample_documents=args.report_samples))
        print(f"report: {html}", file=sys.stderr)
    print(json.dumps(summary, indent=2, ensure_ascii=False) if args.json else format_table(summary))
    return 0


# ----------------------------------------------------------------------------- validate


def add_validate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="corpus directory (local, file://, gs://, s3://)")
    p.add_argument("--json", action="store_true", help="print the findings as JSON")
    p.add_argument("--no-decode", action="store_true", help="skip decoding images (hashes are still checked)")
    p.add_argument("--no-index", action="store_true", help="skip the Parquet index checks")
    p.add_argument("--max-problems", type=int, default=200, help="problems reported per shard")
    p.add_argument("--workers", type=int, default=0, help="shards checked in parallel processes (default: one per 4 shards, at most min(8, CPUs))")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def run_validate(args: argparse.Namespace) -> int:
    """Exit 0 when the corpus is intact, 1 with the list of what is wrong and where."""
    from m3w_pipeline.inspect.corpus import local_path
    from m3w_pipeline.inspect.validate import ValidateConfig, validate_corpus

    path = local_path(args.path)
    opener, lister = filesystem_for(path)
    config = ValidateConfig(
        decode_images=not args.no_decode, check_index=not args.no_index, max_problems_per_shard=args.max_problems, workers=args.workers
    )
    report = validate_corpus(path, opener, lister, config, progress=_progress(args))
    if args.json:
        print(json.dumps(report.to_json(), indent=2, ensure_ascii=False))
    else:
        for problem in report.problems:
            print(problem)
        verdict = "OK" if report.ok else f"{len(report.problems)} problem(s)"
        print(f"{report.root}: {report.kind} corpus, {report.shards} shards, {report.samples} samples, {report.images} images: {verdict}")
    return 0 if report.ok else 1


# ----------------------------------------------------------------------------- export


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("format", choices=["parquet", "mmc4"], help="parquet: OBELICS-style; mmc4: OpenFlamingo's MMC4 webdataset")
    p.add_argument("src", help="M3W corpus directory")
    p.add_argument("dst", help="output directory (local, gs://, s3://)")
    p.add_argument("--images", choices=["bytes", "urls"], default="bytes", help="parquet: image bytes or URLs in `images`")
    p.add_argument(
        "--missing-images",
        choices=["auto", "keep", "drop"],
        default="auto",
        help="images without bytes: auto drops them with --images bytes and keeps their URLs with --images urls",
    )
    p.add_argument("--window-tokens", type=int, default=0, metavar="N",
                   help="mmc4: cut documents so every <image> lies within N tokens (OpenFlamingo: 256); 0 = whole documents")
    p.add_argument("--window-images", type=int, default=6, metavar="N", help="mmc4: images per window at most (OpenFlamingo: 6)")
    p.add_argument("--tokenizer", default=None, metavar="DIR",
                   help="mmc4: directory with the training tokenizer's tokenizer.json, for exact token counts (default: UTF-8 bytes, an upper bound)")


def run_export(args: argparse.Namespace) -> int:
    from m3w_pipeline.inspect.corpus import local_path, open_corpus
    from m3w_pipeline.inspect.export import ExportConfig, export_mmc4, export_parquet

    src = local_path(args.src)
    opener, lister = filesystem_for(src)
    corpus = open_corpus(src, opener, lister)
    config = ExportConfig(images=args.images, missing_images=args.missing_images, window_tokens=args.window_tokens,
                          window_images=args.window_images, tokenizer=args.tokenizer)
    export = export_parquet if args.format == "parquet" else export_mmc4
    result = export(corpus, args.dst, config, opener, writer_for(args.dst))
    print(json.dumps(result.to_json(), indent=2))
    return 0
