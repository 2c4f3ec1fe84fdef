"""Build entry point: parse our options, pass every other flag to Beam, run, return the manifest."""
from __future__ import annotations

import hashlib
import json
import logging
import sys
from typing import Any, Optional, Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, SetupOptions, StandardOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.transforms.environments import SubprocessSDKEnvironment

from beam_jobs import fsio
from beam_jobs.dask_cluster import DASK_RUNNER, is_dask_runner
from beam_jobs.m3w_job import build_pipeline, corpus_dirs
from beam_jobs.outputs import MANIFEST_NAME
from m3w_pipeline.core.config import BuildConfig
from m3w_pipeline.write.layout import index_file

# The embedded runner the DirectRunner itself would choose for a batch job. Naming it
# skips the DirectRunner's attempt to download the Prism runner, which fails offline.
DEFAULT_RUNNER = "FnApiRunner"
logger = logging.getLogger(__name__)


def pipeline_options(beam_args: Sequence[str]) -> PipelineOptions:
    options = PipelineOptions(list(beam_args))
    standard = options.view_as(StandardOptions)
    if not standard.runner:
        standard.runner = DEFAULT_RUNNER
    elif is_dask_runner(standard.runner):
        standard.runner = DASK_RUNNER
    # DoFns reference module-level functions; workers must import them, not unpickle a session.
    options.view_as(SetupOptions).save_main_session = False
    return options


class QuietWorkersRunner(FnApiRunner):
    """FnApiRunner whose `multi_processing` workers start through beam_jobs.sdk_worker, so they log
    only what the CLI shows without -v. Everything else about the run is FnApiRunner's: the number of
    worker processes is still --direct_num_workers."""

    def run_pipeline(self, pipeline: beam.Pipeline, options: PipelineOptions) -> Any:
        direct = options.view_as(DirectOptions)
        if direct.direct_running_mode != "multi_processing":
            return super().run_pipeline(pipeline, options)
        # FnApiRunner replaces its environment with Beam's own worker command for this mode, so run as
        # `in_memory` with ours: the workers are the same harness, started by the same runner.
        self._default_environment = SubprocessSDKEnvironment.from_command_string(f"{sys.executable} -m beam_jobs.sdk_worker")
        direct.direct_running_mode = "in_memory"
        try:
            return super().run_pipeline(pipeline, options)
        finally:
            direct.direct_running_mode = "multi_processing"


def pipeline_runner(options: PipelineOptions) -> Optional[FnApiRunner]:
    """The runner object for a quiet multi-processing run (no -v), else None: Beam picks the runner named in the options."""
    quiet = logging.getLogger().getEffectiveLevel() > logging.INFO
    local = options.view_as(StandardOptions).runner in (DEFAULT_RUNNER, "DirectRunner")
    if quiet and local and options.view_as(DirectOptions).direct_running_mode == "multi_processing":
        return QuietWorkersRunner()
    return None


def finished_manifest(output_dir: str, inputs: list[str], config: BuildConfig) -> Optional[dict[str, Any]]:
    """The existing manifest when OUTPUT already holds this exact build (same inputs and config) and
    every file it lists is there, whole: same size and sha256. Otherwise None, saying why."""
    path = fsio.join(output_dir, MANIFEST_NAME)
    if not fsio.exists(path):
        return None
    try:
        manifest = json.loads(fsio.read_bytes(path))
    except (ValueError, OSError):
        return None
    # Compare as JSON: tuples in the config come back from the manifest as lists.
    same = manifest.get("inputs") == sorted(inputs) and manifest.get("config") == json.loads(json.dumps(config.to_dict()))
    if not (same and manifest.get("reconciles")):
        return None
    problems = output_problems(output_dir, manifest)
    if problems:
        logger.warning("%s holds this build, but %s: rebuilding", output_dir, "; ".join(problems[:5]))
        return None
    return manifest


def output_problems(output_dir: str, manifest: dict[str, Any]) -> list[str]:
    """Every file the manifest lists that is missing, of another size or another sha256."""
    expected = [(file, s.get(f"{kind}_bytes"), s.get(f"{kind}_sha256"))
                for s in manifest.get("shards", []) for kind, file in (("tar", f"{s['name']}.tar"), ("parquet", index_file(s["name"])))]
    expected += [(name, None, None) for name in [*manifest.get("other_files", []), *manifest.get("fetch_status_files", [])]]
    problems = []
    for name, size, sha in expected:
        path = fsio.join(output_dir, name)
        if not fsio.exists(path):
            problems.append(f"{name} is missing")
            continue
        if size is None and sha is None:
            continue
        digest, n = hashlib.sha256(), 0
        with fsio.open_input(path) as stream:
            while chunk := stream.read(1 << 20):
                digest.update(chunk)
                n += len(chunk)
        if size is not None and n != size:
            problems.append(f"{name} has {n} bytes, not {size}")
        elif sha is not None and digest.hexdigest() != sha:
            problems.append(f"{name} has another sha256")
    return problems


def run_build(
    corpus: str,
    inputs: list[str],
    output_dir: str,
    config: BuildConfig,
    beam_args: Sequence[str] = (),
    force: bool = False,
) -> dict[str, dict[str, Any]]:
    """Build one corpus (m3w, pairs, video) or `all` from one read of the inputs.

    Returns {corpus: manifest}; each manifest is also written to its corpus folder.
    """
    dirs = corpus_dirs(corpus, output_dir)
    if not force:
        done = {c: finished_manifest(d, inputs, config) for c, d in dirs.items()}
        if all(m is not None for m in done.values()):
            logging.info("output already holds this build; skipping (use --force to rebuild)")
            return {c: dict(m, skipped=True) for c, m in done.items()}
    for d in dirs.values():
        fsio.mkdirs(d)
    options = pipeline_options(beam_args)
    with beam.Pipeline(runner=pipeline_runner(options), options=options) as pipeline:
        build_pipeline(pipeline, inputs, dirs, config)
    return {c: json.loads(fsio.read_bytes(fsio.join(d, MANIFEST_NAME))) for c, d in dirs.items()}
