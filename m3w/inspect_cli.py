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
    p.add_argument("path", help="corpus directory, or a `build all` output holding m3w/ pairs/ video/ (local, file://, gs://, s3://)")
    p.add_argument("--json", action="store_true", help="print the statistics as JSON (a build root: one key per corpus)")
    p.add_argument("--report", metavar="DIR", help="write PNG plots and a self-contained DIR/index.html")
    p.add_argument(
        "--source",
        choices=["auto", "index", "tar"],
        default="auto",
        help="auto: Parquet index + JSON members found by offset (tar scan without index); "
        "index: Parquet only, fastest, no image-level distributions; tar: scan the tars",
    )
    p.add_argument("--kind", choices=KINDS, help="corpus kind (default: the manifest's `corpus`, else sniffed); on a build root: only that corpus")
    p.add_argument("--top", type=int, default=20, help="domains / languages listed")
    p.add_argument("--report-samples", type=int, default=5, help="documents rendered in the report")
    p.add_argument("--tokenizer", help="also count tokens: 'byte' or a local Hugging Face tokenizer directory")
    p.add_argument(
        "--runner",
        help="compute as a Beam job on this runner (FnApiRunner, DataflowRunner, PortableRunner, ...); "
        "other flags `m3w stats` does not know are Beam pipeline options",
    )
    p.add_argument("--stats-output", help="with --runner: where the job writes its merged statistics (default: --temp_location or a local temp dir); "
                   "a build root: one file per corpus, NAME.KIND.json")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def _token_counter(spec: Optional[str]) -> Optional[Callable[[str], int]]:
    if not spec:
        return None
    from model.tokenizer import load_tokenizer

    tok = load_tokenizer(None if spec == "byte" else spec)
    return lambda text: len(tok.encode(text))


def _error(args: argparse.Namespace, message: str) -> int:
    """A user's mistake: one line on stderr, exit 2 (the way `m3w.cli` reports usage errors)."""
    print(f"m3w {getattr(args, 'command', None) or 'inspect'}: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


class _Refused(Exception):
    """PATH is not what the command reads; the message is the one line the user sees."""


def _targets(args: argparse.Namespace, path: str, opener: Any, lister: Any, what: str) -> dict[Optional[str], str]:
    """The corpora PATH holds: {None: PATH} for a corpus, {kind: path} for a `build all` root.
    _Refused for an empty or unrecognised folder, an export, or a root without the --kind asked for."""
    from m3w_pipeline.inspect.corpus import NotACorpus, locate

    try:
        where = locate(path, opener, lister)
    except NotACorpus as err:
        raise _Refused(str(err)) from None
    if where.layout in ("mmc4", "obelics"):
        raise _Refused(f"{path} is {where.describe()} (written by `m3w export`), not a corpus: {what}; `m3w validate` checks exports")
    if where.layout == "corpus":
        return {None: path}
    kind = getattr(args, "kind", None)
    targets: dict[Optional[str], str] = {k: p for k, p in where.corpora.items() if kind in (None, k)}
    if not targets:
        raise _Refused(f"{path} holds no {kind} corpus (it holds {', '.join(where.corpora)})")
    return targets


def _per_corpus(path: str, kind: str) -> str:
    """stats.json -> stats.m3w.json: a root's corpora each get their own --stats-output file."""
    head, dot, ext = path.rpartition(".")
    return f"{head}.{kind}.{ext}" if dot and "/" not in ext else f"{path}.{kind}"


def run_stats(args: argparse.Namespace) -> int:
    from m3w_pipeline.inspect.corpus import local_path, open_corpus
    from m3w_pipeline.inspect.report import ReportConfig, write_report, write_root_report
    from m3w_pipeline.inspect.stats import StatsConfig, compute_stats
    from m3w_pipeline.inspect.summary import format_root_table, format_table, summarize

    beam_args = list(getattr(args, "beam_args", None) or [])
    if beam_args and not args.runner:
        print(f"m3w stats: unrecognized arguments: {' '.join(beam_args)} (Beam options need --runner)", file=sys.stderr)
        return 2
    if args.runner and args.tokenizer:
        print("m3w stats: --tokenizer is not supported with --runner", file=sys.stderr)
        return 2
    path = local_path(args.path)
    opener, lister = filesystem_for(path)
    try:
        targets = _targets(args, path, opener, lister, "`m3w stats` reads corpora")
    except _Refused as err:
        return _error(args, str(err))
    config = StatsConfig(source=args.source, top_n=args.top)
    count_tokens = _token_counter(args.tokenizer)
    results: dict[str, Any] = {}
    for name, corpus_path in targets.items():
        corpus = open_corpus(corpus_path, opener, lister, kind=args.kind if name is None else None)
        if args.runner:
            from beam_jobs.stats_job import run_stats_job

            result = args.stats_output and (args.stats_output if name is None else _per_corpus(args.stats_output, name))
            stats = run_stats_job(corpus, config, ["--runner", args.runner, *beam_args], result)
            source = f"{args.source} (Beam {args.runner})"
        else:
            stats = compute_stats(corpus, opener, config, count_tokens, progress=_progress(args))
            source = args.source
        results[name or ""] = (summarize(stats, corpus, config, source), corpus)
    report_config = ReportConfig(sample_documents=args.report_samples)
    summaries = {name: summary for name, (summary, _) in results.items()}
    if None in targets:
        summary, corpus = results[""]
        if args.report:
            print(f"report: {write_report(summary, args.report, corpus, opener, report_config)}", file=sys.stderr)
        print(json.dumps(summary, indent=2, ensure_ascii=False) if args.json else format_table(summary))
        return 0
    if args.report:
        print(f"report: {write_root_report(results, args.report, path, opener, report_config)}", file=sys.stderr)
    print(json.dumps(summaries, indent=2, ensure_ascii=False) if args.json else format_root_table(summaries))
    return 0


# ----------------------------------------------------------------------------- validate


def add_validate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="corpus directory, a `build all` output, or an `m3w export` output (local, file://, gs://, s3://)")
    p.add_argument("--json", action="store_true", help="print the findings as JSON (a build root: one key per corpus)")
    p.add_argument("--no-decode", action="store_true", help="skip decoding images (hashes are still checked)")
    p.add_argument("--no-index", action="store_true", help="skip the Parquet index checks")
    p.add_argument("--max-problems", type=int, default=200, help="problems reported per shard")
    p.add_argument("--workers", type=int, default=0, help="shards checked in parallel processes (default: one per 4 shards, at most min(8, CPUs))")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def run_validate(args: argparse.Namespace) -> int:
    """Exit 0 when the corpus (every corpus of a build root, or an export) is intact, 1 with the list of what is wrong and where."""
    from m3w_pipeline.inspect.corpus import NotACorpus, local_path, locate
    from m3w_pipeline.inspect.validate import ValidateConfig, validate_corpus
    from m3w_pipeline.inspect.validate_export import validate_export

    path = local_path(args.path)
    opener, lister = filesystem_for(path)
    config = ValidateConfig(
        decode_images=not args.no_decode, check_index=not args.no_index, max_problems_per_shard=args.max_problems, workers=args.workers
    )
    try:
        where = locate(path, opener, lister)
    except NotACorpus as err:
        return _error(args, str(err))
    if where.layout in ("mmc4", "obelics"):
        reports = {"": validate_export(path, where.layout, opener, lister, config, progress=_progress(args))}
    elif where.layout == "corpus":
        reports = {"": validate_corpus(path, opener, lister, config, progress=_progress(args))}
    else:
        reports = {kind: validate_corpus(p, opener, lister, config, progress=_progress(args)) for kind, p in where.corpora.items()}
    ok = all(r.ok for r in reports.values())
    if args.json:
        shown = reports[""].to_json() if "" in reports else {kind: r.to_json() for kind, r in reports.items()}
        print(json.dumps(shown, indent=2, ensure_ascii=False))
        return 0 if ok else 1
    for kind, report in reports.items():
        if kind:
            print(f"=== {kind} ===")
        for problem in report.problems:
            print(problem)
        verdict = "OK" if report.ok else f"{len(report.problems)} problem(s)"
        export = report.kind in ("mmc4", "obelics")
        unit = "documents" if export else "samples"
        print(f"{report.root}: {report.kind} {'export' if export else 'corpus'}, {report.shards} {'files' if export else 'shards'}, "
              f"{report.samples} {unit}, {report.images} images: {verdict}")
    if "" not in reports:
        bad = [f"{kind} ({len(r.problems)})" for kind, r in reports.items() if not r.ok]
        print(f"{path}: build root with {', '.join(reports)}: " + ("OK" if ok else f"problems in {', '.join(bad)}"))
    return 0 if ok else 1


# ----------------------------------------------------------------------------- export


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    """One subcommand per format, so each one's --help lists only the flags that apply to it."""
    formats = p.add_subparsers(dest="format", required=True, metavar="FORMAT", help="the layout to write")
    q = formats.add_parser("parquet", help="OBELICS-style Parquet, one file per shard (pyarrow, DuckDB, HF datasets read it)")
    _add_export_paths(q)
    q.add_argument("--images", choices=["bytes", "urls"], default="bytes", help="image bytes or URLs in the `images` column")
    q.add_argument(
        "--missing-images",
        choices=["auto", "keep", "drop"],
        default="auto",
        help="images without bytes: auto drops them with --images bytes and keeps their URLs with --images urls",
    )
    q = formats.add_parser("mmc4", help="OpenFlamingo's MMC4 webdataset: KEY.json per document (or per window) with its images as base64")
    _add_export_paths(q)
    q.add_argument("--window-tokens", type=int, default=0, metavar="N",
                   help="cut documents so every <image> lies within N tokens (OpenFlamingo: 256); 0 = whole documents")
    q.add_argument("--window-images", type=int, default=6, metavar="N", help="images per window at most (OpenFlamingo: 6)")
    q.add_argument("--tokenizer", default=None, metavar="DIR",
                   help="directory with the training tokenizer's tokenizer.json, for exact token counts (default: UTF-8 bytes, an upper bound)")


def _add_export_paths(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="M3W corpus directory, or a `build all` output (its m3w/ corpus is exported)")
    p.add_argument("dst", help="output directory (local, gs://, s3://)")
    p.add_argument("--no-progress", action="store_true", help="no live progress line on stderr (shown only on a terminal anyway)")


def run_export(args: argparse.Namespace) -> int:
    """Export an M3W corpus; on a build root, its m3w/ corpus (the one both formats are made from)."""
    from m3w.progress import ExportStatus, ProgressLine, wanted
    from m3w_pipeline.inspect.corpus import local_path, open_corpus
    from m3w_pipeline.inspect.export import ExportConfig, export_mmc4, export_parquet

    src = local_path(args.src)
    opener, lister = filesystem_for(src)
    try:
        targets = _targets(args, src, opener, lister, f"`m3w export {args.format}` reads an M3W corpus")
    except _Refused as err:
        return _error(args, str(err))
    if None not in targets and "m3w" not in targets:
        return _error(args, f"`m3w export {args.format}` needs an M3W corpus; {src} holds {', '.join(targets)} only")
    corpus = open_corpus(targets.get(None) or targets["m3w"], opener, lister)
    if corpus.kind != "m3w":
        return _error(args, f"{corpus.root} is a {corpus.kind} corpus; `m3w export {args.format}` needs an M3W corpus "
                            "(pair and video shards already follow img2dataset / video2dataset)")
    if args.format == "parquet":
        export, config = export_parquet, ExportConfig(images=args.images, missing_images=args.missing_images)
    else:
        export, config = export_mmc4, ExportConfig(window_tokens=args.window_tokens, window_images=args.window_images,
                                                   tokenizer=args.tokenizer)
    status = ExportStatus(len(corpus.shards), ((corpus.manifest or {}).get("totals") or {}).get("samples"))
    with ProgressLine(status, enabled=wanted(args.no_progress)):
        result = export(corpus, args.dst, config, opener, writer_for(args.dst), progress=status.update)
    print(json.dumps(result.to_json(), indent=2))
    return 0
