"""Beam's DaskRunner, with a translation that runs pipelines shaped like ours correctly.

Beam 2.77 ships `apache_beam.runners.dask.dask_runner.DaskRunner` (experimental). Its options
(`--dask_client_address`, `--dask_npartitions`, ...), its graph overrides and its Client are
kept here; its translation into Dask bags is replaced, because as shipped it computes wrong
results for our pipelines (reproducers: tests/jobs/test_dask.py::test_reproducers_*):

1. every output of a multi-output ParDo (`.with_outputs(...)`) receives all of its outputs,
   main and tagged together;
2. only the last transform visited is computed: other sinks (a second manifest) never run;
3. what a DoFn emits from `finish_bundle` (`BatchElements` does) is collected too early, lost.

It also computes a side input by a nested `compute()` of its bag inside each task that reads it.

The translation below builds a plain Dask task graph, a list of partitions per PCollection:
- ParDo: one task per partition, a Beam bundle from `start_bundle` to `finish_bundle` (each
  worker thread sets a DoFn up once per job and reuses it); the tasks that read one of its
  outputs pick that tag from the bundle's result;
- side input: one task gathers the PCollection; every task that reads it depends on it;
- Flatten: the union of the partition lists;
- GroupByKey: a hash shuffle into as many partitions as the cluster has worker threads (or
  `--dask_npartitions`), keys hashed with `dask.base.tokenize`, the same in every worker
  process (`hash()` of a str or None is not);
- the job: one future that depends on every PCollection nothing consumes (every sink).

Only the global window is supported (our batch jobs use nothing else); another windowing, a
stateful DoFn, or a primitive without a translation is refused before anything runs.
"""
from __future__ import annotations

import hashlib
import itertools
import operator
import threading
import uuid
from collections import defaultdict
from typing import Any, Optional

import apache_beam as beam
from apache_beam.internal import pickler
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.pipeline import AppliedPTransform, PipelineVisitor
from apache_beam.pvalue import PCollection
from apache_beam.runners.common import DoFnRunner, Receiver
from apache_beam.runners.dask import dask_runner as beam_dask
from apache_beam.runners.dask.overrides import _Create, _Flatten, _GroupAlsoByWindow, _GroupByKeyOnly, _Reshuffle, dask_overrides
from apache_beam.runners.runner import PipelineResult, PipelineState
from apache_beam.transforms.sideinputs import SideInputMap
from apache_beam.transforms.userstate import is_stateful_dofn
from apache_beam.transforms.window import GlobalWindow, GlobalWindows
from apache_beam.utils.windowed_value import WindowedValue

DaskOptions = beam_dask.DaskOptions
_GLOBAL = (GlobalWindow(),)

# ----------------------------------------------------------------------------- tasks (run on the workers)


def _in_global_window(value: Any) -> WindowedValue:
    return WindowedValue(value, 0, _GLOBAL)


class _TagReceiver(Receiver):
    def __init__(self) -> None:
        self.out: list[Any] = []

    def receive(self, windowed_value: WindowedValue) -> None:
        self.out.append(windowed_value.value)


class _Receivers(dict):
    """tag -> receiver; outputs to a tag the transform did not declare are dropped, as the DirectRunner does."""

    def __init__(self, tags: tuple[Optional[str], ...]):
        super().__init__({tag: _TagReceiver() for tag in tags})

    def __missing__(self, tag: Optional[str]) -> Receiver:
        return _TagReceiver()

    def take(self) -> dict[Optional[str], list[Any]]:
        """The outputs received since the last take, by tag."""
        taken = {}
        for tag, receiver in self.items():
            taken[tag], receiver.out = receiver.out, []
        return taken


# Per worker thread: the DoFns of the current job, set up once and reused for each bundle (Beam
# allows a DoFn instance to process many bundles). A new job's first bundle tears the old ones down.
_worker = threading.local()


def _dofn_runner(job: str, payload: bytes, side_values: tuple[list[Any], ...]) -> tuple[DoFnRunner, _Receivers]:
    runners = getattr(_worker, "runners", {})
    if getattr(_worker, "job", None) != job:
        for runner, _ in runners.values():
            runner.teardown()
        runners = _worker.runners = {}
        _worker.job = job
    key = hashlib.sha1(payload).digest()
    if key not in runners:
        fn, args, kwargs, windowing, views, tags, label = pickler.loads(payload)
        side_inputs = [SideInputMap(view, options, [_in_global_window(v) for v in values]) for (view, options), values in zip(views, side_values)]
        receivers = _Receivers(tags)
        runner = DoFnRunner(fn, args, kwargs, side_inputs, windowing, tagged_receivers=receivers, step_name=label)
        runner.setup()
        runners[key] = (runner, receivers)
    return runners[key]


def _create(payload: bytes) -> list[Any]:
    return pickler.loads(payload)


def _run_bundle(items: list[Any], job: str, payload: bytes, *side_values: list[Any]) -> dict[Optional[str], list[Any]]:
    """One partition = one Beam bundle (start_bundle, process each, finish_bundle) -> {tag: outputs}.

    `payload` is the DoFn and its arguments from Beam's pickler; side inputs arrive as whole
    lists, in the order of the transform's side inputs (the same for every bundle of a job).
    """
    runner, receivers = _dofn_runner(job, payload, side_values)
    runner.start()
    for item in items:
        runner.process(_in_global_window(item))
    runner.finish()
    return receivers.take()


def _concat(*partitions: list[Any]) -> list[Any]:
    return list(itertools.chain.from_iterable(partitions))


def _split_by_key(items: list[tuple[Any, Any]], n: int) -> list[list[tuple[Any, Any]]]:
    """(key, value) pairs -> n buckets by a hash of the key that every process computes alike."""
    from dask.base import tokenize

    buckets: list[list[tuple[Any, Any]]] = [[] for _ in range(n)]
    for kv in items:
        buckets[int(tokenize(kv[0]), 16) % n].append(kv)
    return buckets


def _group(*buckets: list[tuple[Any, Any]]) -> list[tuple[Any, list[Any]]]:
    """One shuffle partition's (key, value) pairs -> (key, [values]) per key."""
    grouped: dict[Any, list[Any]] = defaultdict(list)
    for key, value in itertools.chain.from_iterable(buckets):
        # ReifyWindows wrapped each value in a WindowedValue; only the global window exists here.
        grouped[key].append(value.value if isinstance(value, WindowedValue) else value)
    return list(grouped.items())


def _done(*sizes: int) -> int:
    return sum(sizes)


# ----------------------------------------------------------------------------- translation (runs in the driver)


class _TaskGraph(PipelineVisitor):
    """Beam primitives -> a Dask task graph; each PCollection is a list of partitions, each a task
    key or `(getitem, key, tag)` (one output of a multi-output bundle, taken where it is read)."""

    def __init__(self, create_partitioning: dict[str, int], shuffle_partitions: int):
        self.job = uuid.uuid4().hex  # DoFns set up on a worker are reused within this job only
        self.create_partitioning = create_partitioning
        self.shuffle_partitions = shuffle_partitions
        self.tasks: dict[str, tuple] = {}
        self.parts: dict[PCollection, list[Any]] = {}
        self.side_keys: dict[PCollection, str] = {}
        self.consumed: set[PCollection] = set()

    def _add(self, name: str, task: tuple) -> str:
        key = f"{len(self.tasks):06d} {name}"
        self.tasks[key] = task
        return key

    def visit_transform(self, node: AppliedPTransform) -> None:
        transform = node.transform
        inputs = [p for p in node.inputs if isinstance(p, PCollection)]
        self.consumed.update(inputs)
        self.consumed.update(si.pvalue for si in node.side_inputs)
        for out in node.outputs.values():
            _check_global_window(out, node)
        if isinstance(transform, _Create):
            parts = {None: self._create(node.full_label, list(transform.values))}
        elif isinstance(transform, (_Reshuffle, _GroupAlsoByWindow)):  # partitions are already spread; windows are global
            parts = {None: self.parts[inputs[0]]}
        elif isinstance(transform, _GroupByKeyOnly):
            parts = {None: self._shuffle(node.full_label, self.parts[inputs[0]])}
        elif isinstance(transform, _Flatten):
            parts = {None: [k for p in inputs for k in self.parts[p]] or [self._add(node.full_label, (_concat,))]}
        elif isinstance(transform, beam.ParDo):
            parts = self._par_do(node, inputs[0])
        else:
            raise NotImplementedError(f"the Dask runner has no translation for {type(transform).__name__} ({node.full_label})")
        for tag, pcoll in node.outputs.items():
            self.parts[pcoll] = parts[tag]

    def _create(self, label: str, values: list[Any]) -> list[str]:
        if "npartitions" in self.create_partitioning:
            n = max(1, min(len(values), self.create_partitioning["npartitions"]))
            size = -(-len(values) // n) if values else 1
        else:
            size = self.create_partitioning.get("partition_size", 1)
        chunks = [values[i:i + size] for i in range(0, len(values), size)] or [[]]
        return [self._add(f"{label}/{i}", (_create, pickler.dumps(chunk))) for i, chunk in enumerate(chunks)]

    def _par_do(self, node: AppliedPTransform, main: PCollection) -> dict[Optional[str], list[Any]]:
        transform = node.transform
        if is_stateful_dofn(transform.dofn):
            raise NotImplementedError(f"the Dask runner does not run stateful DoFns ({node.full_label})")
        views = [(type(si), si._view_options()) for si in node.side_inputs]
        tags = tuple(node.outputs)
        payload = pickler.dumps((transform.dofn, transform.args, transform.kwargs, main.windowing, views, tags, node.full_label))
        sides = [self._side_input(si.pvalue) for si in node.side_inputs]
        bundles = [self._add(f"{node.full_label}/{i}", (_run_bundle, part, self.job, payload, *sides)) for i, part in enumerate(self.parts[main])]
        # Each output is selected inside the tasks that read it: no task of its own to schedule.
        return {tag: [(operator.getitem, b, tag) for b in bundles] for tag in tags}

    def _side_input(self, pcoll: PCollection) -> str:
        """One task gathers the whole PCollection; every task that reads it depends on that task."""
        if pcoll not in self.side_keys:
            self.side_keys[pcoll] = self._add(f"side input {pcoll.producer.full_label}", (_concat, *self.parts[pcoll]))
        return self.side_keys[pcoll]

    def _shuffle(self, label: str, parts: list[Any]) -> list[str]:
        n = self.shuffle_partitions
        if len(parts) > n:  # many small inputs (a Flatten of count streams): merge first, so the shuffle has n x n pieces
            parts = [self._add(f"{label}/merge{j}", (_concat, *parts[j::n])) for j in range(n)]
        splits = [self._add(f"{label}/split{i}", (_split_by_key, p, n)) for i, p in enumerate(parts)]
        pieces = [[self._add(f"{label}/piece{i}-{j}", (operator.getitem, s, j)) for i, s in enumerate(splits)] for j in range(n)]
        return [self._add(f"{label}/group{j}", (_group, *pieces[j])) for j in range(n)]

    def sink(self) -> str:
        """The key of one task that depends on every PCollection nothing consumes: computing it runs the whole job."""
        sizes = [self._add(f"sink size {i}", (len, part)) for i, part in enumerate(
            part for pcoll, parts in self.parts.items() if pcoll not in self.consumed for part in parts)]
        return self._add("all sinks", (_done, *sizes))


def _check_global_window(pcoll: PCollection, node: AppliedPTransform) -> None:
    windowing = getattr(pcoll, "windowing", None)
    if windowing is not None and not isinstance(windowing.windowfn, GlobalWindows):
        raise NotImplementedError(f"the Dask runner supports only the global window ({node.full_label} uses {windowing.windowfn})")


class DaskRunnerResult(PipelineResult):
    """The running job: one future that depends on every sink; the client closes when it is done."""

    def __init__(self, client: Any, future: Any):
        super().__init__(PipelineState.RUNNING)
        self.client = client
        self.future = future

    def wait_until_finish(self, duration: Optional[int] = None) -> str:
        try:
            self.future.result(timeout=None if duration is None else duration / 1000)
            self._state = PipelineState.DONE
        except BaseException:
            self._state = PipelineState.FAILED
            raise
        finally:
            self.client.close()
        return self._state

    def cancel(self) -> str:
        self.future.cancel()
        self.client.close()
        self._state = PipelineState.CANCELLED
        return self._state

    def metrics(self) -> Any:
        raise NotImplementedError("the Dask runner reports no Beam metrics; m3w's counts travel as data")


class DaskRunner(beam_dask.DaskRunner):
    """`--runner DaskRunner`: Beam's Dask runner (options, overrides, client) with the translation above."""

    def run_pipeline(self, pipeline: beam.Pipeline, options: PipelineOptions) -> DaskRunnerResult:
        import distributed

        dask_options = options.view_as(DaskOptions).get_all_options(drop_default=True, current_only=True)
        # Our Creates list files and shards, each a unit of heavy work: one per partition unless told otherwise.
        create_partitioning = DaskOptions._extract_bag_kwargs(dask_options) or {"partition_size": 1}
        client = distributed.Client(**dask_options)
        try:
            # Each shuffle costs about n x n tasks for n partitions, and every task a few ms of
            # scheduler and worker time: one partition per worker thread keeps them all busy.
            threads = sum(client.nthreads().values())
            shuffle_partitions = create_partitioning.get("npartitions") or max(2, threads)
            pipeline.replace_all(dask_overrides())
            graph = _TaskGraph(create_partitioning, shuffle_partitions)
            pipeline.visit(graph)
            sink = graph.sink()
            return DaskRunnerResult(client, client.get(graph.tasks, sink, sync=False))
        except BaseException:
            client.close()
            raise
