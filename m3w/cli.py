"""`m3w`: the command line over the pipeline, the Beam jobs and the model.

Imports are per command, so `m3w extract` does not pay for Beam or torch.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from m3w_pipeline.core.accounting import STAGE_ORDER  # stdlib only: no cost to the commands that do not build


class UsageError(Exception):
    """A mistake in how m3w was called (a path, a flag, a config value): one line and exit 2, no traceback."""


def _cmd_sample_crawl(args: argparse.Namespace) -> int:
    from m3w_pipeline.sample.crawl import write_sample_crawl

    crawl = write_sample_crawl(args.out_dir, pages=args.pages, seed=args.seed, lessons=args.lessons)
    for path in crawl.warc_paths:
        print(path)
    print(f"truth: {crawl.truth_path}", file=sys.stderr)
    return 0


def _cmd_extract(args: argparse.Namespace) -> int:
    from m3w_pipeline.extract.page import extract_page, page_to_json

    if not Path(args.page).is_file():
        raise UsageError(f"{args.page}: no such file")
    data = Path(args.page).read_bytes()
    if args.page.endswith(".gz"):
        import gzip

        data = gzip.decompress(data)
    page = extract_page(data, args.url or Path(args.page).resolve().as_uri())
    print(json.dumps(page_to_json(page), indent=2, ensure_ascii=False))
    return 0


def _build_config(args: argparse.Namespace) -> Any:
    from m3w_pipeline.core.config import BuildConfig
    from m3w_pipeline.core.typed_config import read_config_file

    try:
        data: dict[str, Any] = read_config_file(args.config) if args.config else {}
    except (OSError, ValueError) as err:  # missing file, bad suffix, TOML/JSON syntax
        raise UsageError(f"--config {args.config}: {err}") from None
    except Exception as err:  # noqa: BLE001 - YAML's parser errors have no common base with the others
        raise UsageError(f"--config {args.config}: {type(err).__name__}: {err}") from None
    overrides = {
        ("filters", "min_words_per_document"): args.min_words,
        ("filters", "min_images_per_document"): args.min_images,
        ("filters", "max_images_per_document"): args.max_images,
        ("image", "max_side"): args.max_image_side,
        ("shards", "samples_per_shard"): args.samples_per_shard,
        ("warc", "max_page_bytes"): args.max_page_bytes,
        ("fetch", "enabled"): True if args.fetch_media else None,
        ("fetch", "allow_private_addresses"): True if args.allow_private_addresses else None,
        ("fetch", "user_agent"): args.user_agent,
        ("fetch", "proxy"): args.proxy,
        ("fetch", "host_overrides"): dict(_resolve_entry(r) for r in args.resolve) if args.resolve else None,
    }
    for (section, name), value in overrides.items():
        if value is not None:
            if not isinstance(data.setdefault(section, {}), dict):
                raise UsageError(f"config section {section!r} must be a table")
            data[section][name] = value
    try:
        return BuildConfig.from_dict(data)
    except ValueError as err:  # unknown keys, wrong types, out-of-range values: each names its key
        raise UsageError(f"config: {err}") from None


def _resolve_entry(entry: str) -> tuple[str, str]:
    """HOST=ADDR[:PORT] (ADDR an IPv4 address or a bracketed IPv6 one), as curl's --resolve takes it."""
    import ipaddress

    host, sep, address = entry.partition("=")
    if address.startswith("["):
        ip, _, rest = address[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else rest
    elif address.count(":") > 1:  # a bare IPv6 address: no port
        ip, port = address, ""
    else:
        ip, _, port = address.partition(":")
    try:
        ipaddress.ip_address(ip)
        ok = bool(sep and host) and (not port or 1 <= int(port) <= 65535)
    except ValueError:
        ok = False
    if not ok:
        raise UsageError(f"--resolve {entry!r}: expected HOST=ADDR[:PORT] with ADDR an IP address (IPv6 in brackets)")
    return host, address


def _check_beam_flags(command: str, beam_args: Sequence[str]) -> None:
    from beam_jobs.options import unknown_pipeline_flags

    unknown = unknown_pipeline_flags(beam_args)
    if any(flag.startswith("--dask_") for flag in unknown):
        from beam_jobs.dask_cluster import dask_missing

        missing = dask_missing()
        if missing:
            raise UsageError(missing)
    if unknown:
        raise UsageError(f"unrecognized arguments: {' '.join(unknown)} (neither `m3w {command}` nor Beam's pipeline options know them)")


@contextlib.contextmanager
def _engine(runner: Optional[str], beam_args: Sequence[str], workers: Optional[int]) -> Iterator[tuple[Optional[str], list[str]]]:
    """(runner, Beam flags) for this run. Any Dask flag means the Dask runner; with --dask-workers N
    a local cluster of N worker processes lives for the block and the flags point at it."""
    from beam_jobs.dask_cluster import dask_missing, is_dask_runner, local_cluster, wants_dask

    beam_args = list(beam_args)
    if not wants_dask(runner, beam_args, workers):
        yield runner, beam_args
        return
    missing = dask_missing()
    if missing:
        raise UsageError(missing)
    if runner and not is_dask_runner(runner):
        raise UsageError(f"--runner {runner} cannot take Dask flags (--dask-workers, --dask_*): use --runner DaskRunner")
    runner = runner or "DaskRunner"
    if workers is None:
        yield runner, beam_args
        return
    if workers < 1:
        raise UsageError(f"--dask-workers must be >= 1, got {workers}")
    if any(a.startswith("--dask_client_address") or a.startswith("--dask_scheduler_file") for a in beam_args):
        raise UsageError("--dask-workers starts a cluster; --dask_client_address/--dask_scheduler_file name a running one: give one of them")
    with local_cluster(workers) as address:
        yield runner, [*beam_args, "--dask_client_address", address]


def _config_sections() -> str:
    from dataclasses import fields

    from m3w_pipeline.core.config import BuildConfig

    return ", ".join(f.name for f in fields(BuildConfig))


def _cmd_build(args: argparse.Namespace, beam_args: Sequence[str]) -> int:
    from beam_jobs.dask_cluster import runner_flag
    from beam_jobs.fsio import expand_inputs
    from beam_jobs.m3w_job import ReadWarcFn
    from beam_jobs.progress import Reader
    from beam_jobs.runner import run_build
    from m3w.progress import BuildStatus, ProgressLine, wanted

    config = _build_config(args)
    _check_beam_flags("build", beam_args)
    try:
        inputs = expand_inputs(args.input, args.listing_base_url)
    except (OSError, ValueError) as err:  # a glob matching nothing, an unreadable listing
        raise UsageError(str(err)) from None
    print(f"m3w build {args.corpus}: {len(inputs)} input files -> {args.output}", file=sys.stderr)
    given_runner = runner_flag(beam_args)
    show = wanted(args.no_progress)
    with contextlib.ExitStack() as stack:
        # Before the engine: the processes of a local Dask cluster must inherit where to report.
        reader = stack.enter_context(Reader()) if show else None
        runner, engine_args = stack.enter_context(_engine(given_runner, beam_args, args.dask_workers))
        if runner != given_runner:
            engine_args += ["--runner", runner]
        status = BuildStatus(reader.totals if reader else dict, len(inputs), ReadWarcFn.__name__)
        with ProgressLine(status, enabled=show):
            manifests = run_build(args.corpus, inputs, args.output, config, engine_args, force=args.force)
    if all(m.get("skipped") for m in manifests.values()):
        print("output already holds this build (same inputs and config); nothing to do. --force rebuilds.")
    for line in summary_table(manifests):
        print(line)
    return 0 if all(m["reconciles"] for m in manifests.values()) else 3


def summary_table(manifests: dict[str, dict[str, Any]]) -> list[str]:
    """What the build made, then one table of its stages in pipeline order with aligned columns
    (every manifest of one build holds the same stage counts), broken files, and whether it reconciles."""
    lines = []
    for name, m in manifests.items():
        verdict = "reconciles" if m["reconciles"] else "does NOT reconcile: " + "; ".join(m["reconciliation_errors"])
        lines.append(f"corpus {name}: {m['totals']['samples']:,} samples in {m['totals']['shards']:,} shards; {verdict}")
    stages = next(reversed(manifests.values()))["stages"] if manifests else {}
    known = {stage for _, group in STAGE_ORDER for stage in group}
    groups = [(title, [s for s in group if s in stages]) for title, group in STAGE_ORDER]
    groups.append(("other", sorted(s for s in stages if s not in known)))  # a stage this table does not know yet
    rows = []
    for title, names in groups:
        if names:
            rows.append((title,))
        for stage in names:
            s = stages[stage]
            kept = ", ".join(f"{k}={v:,}" for k, v in s["kept"].items())
            dropped = ", ".join(f"{k}={v:,}" for k, v in sorted(s["dropped"].items(), key=lambda kv: (-kv[1], kv[0]))) or "-"
            rows.append((f"  {stage}", f"{s['in']:,}", kept, dropped))
    if rows:
        table = [("stage", "in", "kept", "dropped"), *rows]
        widths = [max(len(r[i]) for r in table if len(r) > 1) for i in range(3)]  # group titles stand alone
        for row in table:
            if len(row) == 1:
                lines.append(row[0])
            else:
                lines.append(f"{row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]:<{widths[2]}}  {row[3]}")
    for m in list(manifests.values())[-1:]:
        for b in m["broken_files"]:
            lines.append(f"broken file {b['warc_file']}: {b['reason']} after {b['records_read']:,} records ({b['detail'][:80]})")
    return lines


def _add_dask_workers(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dask-workers", type=int, metavar="N",
        help="run on Beam's DaskRunner over a local Dask cluster of N worker processes, started for this run "
        "(an existing cluster: --runner DaskRunner --dask_client_address tcp://HOST:PORT); needs m3w[dask]",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="m3w", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level (Beam progress)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sample-crawl", help="write a generated sample crawl (WARC.gz) to OUT_DIR")
    p.add_argument("out_dir", help="folder for the WARC.gz files and the truth file (created)")
    p.add_argument("--pages", type=int, default=200, help="pages to generate (default 200)")
    p.add_argument("--seed", type=int, default=0, help="random seed: the same seed gives the same bytes")
    p.add_argument("--lessons", type=int, default=None,
                   help="fast-binding lesson pages besides --pages (default: a fifth of --pages)")

    p = sub.add_parser("extract", help="print the ordered document extracted from one HTML page")
    p.add_argument("page", help="an .html or .html.gz file")
    p.add_argument("--url", help="the page's URL (relative image URLs resolve against it)")

    p = sub.add_parser(
        "build",
        help="build a corpus with Beam; unknown flags (--runner, --project, ...) go to Beam",
        description="Build a corpus. Flags this command does not know are Beam pipeline options, "
        "e.g. --runner DataflowRunner --project P --region R --temp_location gs://B/tmp.",
    )
    p.add_argument("corpus", choices=["m3w", "pairs", "video", "all"], help="all: the three corpora from one read, in OUTPUT/{m3w,pairs,video}")
    p.add_argument("--input", nargs="+", required=True, help="WARC paths, globs, URLs or a CC warc.paths.gz listing")
    p.add_argument("--output", required=True, help="output folder (local, gs://, s3://); `all` writes OUTPUT/{m3w,pairs,video}")
    p.add_argument("--config", help=f"BuildConfig as TOML, YAML or JSON, sections {_config_sections()}; unknown keys are errors")
    p.add_argument("--listing-base-url", default="https://data.commoncrawl.org/", help="prefix for the paths of a CC warc.paths.gz listing")
    p.add_argument("--force", action="store_true", help="rebuild even when OUTPUT already holds this build")
    p.add_argument("--no-progress", action="store_true", help="no live progress line on stderr (shown only on a terminal anyway)")
    p.add_argument("--min-words", type=int, help="filters.min_words_per_document: fewer words drop the document")
    p.add_argument("--min-images", type=int, help="filters.min_images_per_document: fewer images drop the document")
    p.add_argument("--max-images", type=int, help="filters.max_images_per_document: more images drop the document")
    p.add_argument("--max-image-side", type=int, help="image.max_side: stored images are resized to this long side")
    p.add_argument("--samples-per-shard", type=int, help="shards.samples_per_shard: documents per tar shard")
    p.add_argument("--max-page-bytes", type=int, help="warc.max_page_bytes: larger pages are dropped as too-large")
    p.add_argument("--fetch-media", action="store_true", help="fetch referenced images and videos the crawl does not hold (needed for real CC WARCs)")
    p.add_argument("--allow-private-addresses", action="store_true", help="let the fetcher reach private/loopback addresses (tests, intranets)")
    p.add_argument(
        "--resolve", action="append", metavar="HOST=ADDR[:PORT]",
        help="point HOST at ADDR when fetching, like curl --resolve (repeatable; a private ADDR also needs --allow-private-addresses)",
    )
    p.add_argument("--user-agent", help="User-Agent for media fetching")
    p.add_argument("--proxy", help="HTTP proxy for media fetching, http://host:port")
    _add_dask_workers(p)

    from m3w.inspect_cli import add_export_arguments, add_stats_arguments, add_validate_arguments

    p = sub.add_parser(
        "stats",
        help="corpus statistics (counts, distributions, funnel); --json, --report DIR, --runner for a Beam job",
        description="Corpus statistics. With --runner, flags this command does not know are Beam pipeline options.",
    )
    add_stats_arguments(p)
    _add_dask_workers(p)
    p = sub.add_parser("validate", help="check every shard, sample, index and the manifest; exit 1 listing what is wrong")
    add_validate_arguments(p)
    p = sub.add_parser("export", help="export an M3W corpus as OBELICS-style Parquet or MMC4 webdataset shards")
    add_export_arguments(p)

    # The model commands need torch (`m3w[train]`); a pipeline-only install has none. Looked up, not
    # imported: importing torch costs ~1 CPU-s on every `m3w build`.
    import importlib.util

    if importlib.util.find_spec("torch") is not None:
        from m3w.model_cli import add_generate_arguments

        p = sub.add_parser("generate", help="few-shot generation with a trained checkpoint")
        add_generate_arguments(p)
        from m3w.model_cli import add_demo_arguments, add_train_arguments

        p = sub.add_parser("train", help="train Flamingo on a weighted mix of shards (--config TOML/YAML; torchrun for DDP)")
        add_train_arguments(p)
        p = sub.add_parser("demo", help="end to end on CPU: sample crawl -> corpora -> LM pretraining -> Flamingo -> blind gap")
        add_demo_arguments(p)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and args.command not in ("build", "stats"):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    _configure_logging(args.verbose)
    try:
        return _run(parser, args, rest)
    except UsageError as err:
        print(f"m3w {args.command}: error: {' '.join(str(err).split())}", file=sys.stderr)  # one line, even for YAML's errors
        return 2


def _configure_logging(verbose: bool) -> None:
    # Set up before Beam is imported: its import-time warning otherwise configures the root logger itself.
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not verbose:
        from beam_jobs.sdk_worker import quiet_beam  # imports no Beam

        for handler in logging.getLogger().handlers:
            handler.addFilter(quiet_beam)


def _local_source_missing(path: str) -> bool:
    local = path.removeprefix("file://")
    return "://" not in local and not Path(local).exists()


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace, rest: Sequence[str]) -> int:
    if args.command == "sample-crawl":
        if args.pages < 1:
            raise UsageError(f"--pages must be >= 1, got {args.pages}")
        return _cmd_sample_crawl(args)
    if args.command == "extract":
        return _cmd_extract(args)
    if args.command == "build":
        return _cmd_build(args, rest)
    if args.command in ("stats", "validate", "export"):
        from m3w import inspect_cli

        source = args.src if args.command == "export" else args.path
        if _local_source_missing(source):
            raise UsageError(f"{source}: no such corpus directory")
        if args.command == "stats":
            from beam_jobs.dask_cluster import wants_dask

            if rest and (args.runner or wants_dask(args.runner, rest, args.dask_workers)):
                _check_beam_flags(args.command, rest)
            with _engine(args.runner, rest, args.dask_workers) as (runner, beam_args):
                args.runner, args.beam_args = runner, beam_args
                return inspect_cli.run_stats(args)
        if rest and getattr(args, "runner", None):
            _check_beam_flags(args.command, rest)
        args.beam_args = rest
        return {"validate": inspect_cli.run_validate, "export": inspect_cli.run_export}[args.command](args)
    if args.command == "generate":
        from m3w.model_cli import run_generate

        return run_generate(args)
    if args.command == "demo":  # checked before minutes of crawling and pretraining, not after
        for flag in ("pages", "steps", "lm_steps", "vit_steps"):
            if getattr(args, flag) < 1:
                raise UsageError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
        if args.threads < 0:
            raise UsageError(f"--threads must be >= 0 (0: torch's default), got {args.threads}")
    if args.command in ("train", "demo"):
        from m3w.model_cli import run_demo, run_train

        return run_train(args) if args.command == "train" else run_demo(args)
    parser.error(f"unknown command {args.command}")
    return 2
