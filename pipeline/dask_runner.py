"""A Beam runner that executes the pipeline's Beam steps on a Dask distributed cluster.

Beam 2.59 ships a DaskRunner (apache_beam.runners.dask) that cannot run this project's steps: it
translates only Create, GroupByKey, Flatten and side-input-free single-output ParDos (no
Read, so no ReadFromTFRecord; no side inputs, so no WriteToTFRecord, whose finalisation reads the
written shards as a side input, and no combiners, whose arguments stay ArgumentPlaceholders; no
tagged outputs, so no Partition; no start/finish_bundle), it collects no metrics, and it passes
every non-default pipeline option, `--runner` included, to `distributed.Client`, which refuses
them. This runner keeps Beam's own pieces (the Dask overrides, the DaskOptions and Beam's
DoFnRunner, which the DirectRunner uses too) and translates each primitive to dask.bag:

  * Read: the source is split on the driver; each bundle is read on a worker.
  * ParDo: one Beam DoFnRunner per partition (setup, start_bundle, process, finish_bundle,
    teardown), with side inputs (the side PCollection gathered whole, global window only) and
    tagged outputs; the partition's metric updates travel with its output and are merged into the
    result's `metrics()`, as on the DirectRunner.
  * GroupByKey: a dask task shuffle on a hash of the key's deterministic encoding (Python's own
    str hash differs between worker processes), then an exact grouping by encoded key within each
    group.
  * Create, Flatten, Reshuffle: from_sequence, concat, identity (Beam's Flatten override fails on
    a lone PCollection, so this runner replaces Flatten with its own first).

Before any task runs, every worker imports the modules the pipeline's transforms and DoFns come
from, in one thread (`_ImportFirst`). Otherwise a worker imports them in two threads at once: its
task thread unpickling a DoFn, and its communication thread unpickling a shuffled element. A
package whose modules import each other (tensorflow_transform) then hands one of them a
half-initialised module: Transform failed with "partially initialized module
'tensorflow_transform.tf_metadata.dataset_metadata' has no attribute 'DatasetMetadata'".

Only the global window is supported (this project's Beam steps are batch); anything else, and any
primitive not above (stateful or splittable DoFns, Impulse-based reads), is refused by name
before a task runs. Use it with `--runner=pipeline.dask_runner.DaskRunner` (Beam resolves a
runner's full path; `--beam-preset dask`) and `--dask_client_address=tcp://SCHEDULER:8786`;
without an address the Client starts a local cluster.
"""
import dataclasses
import hashlib
import importlib
import itertools
import logging
from typing import Any, Dict, Iterable, List, Optional, Set

from apache_beam import pvalue
from apache_beam import transforms
from apache_beam.coders import coders
from apache_beam.internal import pickler
from apache_beam.metrics import execution as metrics_execution
from apache_beam.options import pipeline_options
from apache_beam.pipeline import PipelineVisitor
from apache_beam.pipeline import PTransformOverride
from apache_beam.runners import common
from apache_beam.runners import runner
from apache_beam.runners.dask import dask_runner
from apache_beam.runners.dask import overrides
from apache_beam.runners.direct import direct_metrics
from apache_beam.runners.worker import statesampler
from apache_beam.transforms import sideinputs
from apache_beam.transforms import window
from apache_beam.utils import counters
from apache_beam.utils import windowed_value
import dask
from dask import bag as dask_bag
from dask import distributed

# What the runner's own name is, for `--runner=` (Beam imports a runner by its full path).
RUNNER = f"{__name__}.DaskRunner"
# Source bundles are read one per task; files that cannot be split (gzip) are one bundle each.
_DESIRED_BUNDLE_BYTES = 64 << 20
# A GroupByKey groups into as many partitions as its input has, at most this many.
_MAX_GROUP_PARTITIONS = 64
_KEY_CODER = coders.FastPrimitivesCoder()
_GLOBAL_WINDOWING = transforms.core.Windowing(window.GlobalWindows())


def client_options(options: pipeline_options.PipelineOptions) -> Dict[str, Any]:
  """The distributed.Client arguments DaskOptions sets, and nothing else: Beam's own
  DaskRunner passes every set option (`--runner`, `--direct_num_workers`, ...) on to the
  Client, which refuses them."""
  dask_options = options.view_as(dask_runner.DaskOptions)
  own = dask_options._visible_option_list()  # the options DaskOptions defines
  return {name: value for name, value in dask_options.get_all_options(drop_default=True).items()
          if name in own}


def _global(value) -> windowed_value.WindowedValue:
  return windowed_value.WindowedValue(value, window.MIN_TIMESTAMP, (window.GlobalWindow(),))


def _key_hash(element: windowed_value.WindowedValue) -> int:
  """The same for a key in every process, unlike hash() of a str."""
  encoded_key = _KEY_CODER.encode(element.value[0])
  return int.from_bytes(hashlib.blake2b(encoded_key, digest_size=8).digest(), "little")


def _group(hashed_group):
  """(hash, [WindowedValue((key, value))]) → a WindowedValue((key, [values])) per distinct key."""
  _, elements = hashed_group
  grouped: Dict[bytes, List] = {}
  for element in elements:
    key, value = element.value
    grouped.setdefault(_KEY_CODER.encode(key), [key]).append(value)
  end = window.GlobalWindow().max_timestamp()
  return [windowed_value.WindowedValue((values[0], values[1:]), end, (window.GlobalWindow(),))
          for values in grouped.values()]


def _read_bundles(bundles):
  return [_global(record) for bundle in bundles
          for record in bundle.source.read(bundle.source.get_range_tracker(
              bundle.start_position, bundle.stop_position))]


class _ListReceiver(common.Receiver):

  def __init__(self):
    self.values: List[windowed_value.WindowedValue] = []

  def receive(self, windowed_value_):
    self.values.append(windowed_value_)


@dataclasses.dataclass
class _ParDoResult:
  """One partition's outputs by tag, and the metric updates its DoFn made."""
  outputs: Dict[Optional[str], List[windowed_value.WindowedValue]]
  metric_updates: metrics_execution.MetricUpdates


def _run_pardo(partition, pickled_pardo: bytes, step: str, *side_values):
  """Runs one partition through a Beam DoFnRunner; returns a one-element list (a bag partition)
  holding its _ParDoResult."""
  dofn, args, kwargs, windowing, tags, side_views = pickler.loads(pickled_pardo)
  receivers = {tag: _ListReceiver() for tag in tags}
  side_inputs = [sideinputs.SideInputMap(view_class, view_options, values)
                 for (view_class, view_options), values in zip(side_views, side_values)]
  container = metrics_execution.MetricsContainer(step)
  sampler = statesampler.StateSampler("", counters.CounterFactory())
  statesampler.set_current_tracker(sampler)
  try:
    with sampler.scoped_state(step, "process", metrics_container=container):
      dofn_runner = common.DoFnRunner(
          dofn, args, kwargs, side_inputs, windowing, tagged_receivers=receivers, step_name=step,
          state=common.DoFnState(counters.CounterFactory()))
      dofn_runner.setup()
      dofn_runner.start()
      for element in partition:
        dofn_runner.process(element)
      dofn_runner.finish()
      dofn_runner.teardown()
  finally:
    statesampler.set_current_tracker(None)
  return [_ParDoResult({tag: receiver.values for tag, receiver in receivers.items()},
                       container.get_cumulative())]


def _output(results, tag):
  return results[0].outputs[tag]


def _metric_updates(results):
  return [results[0].metric_updates]


def _concat(partitions):
  return list(itertools.chain.from_iterable(partitions))


class _ImportFirst(distributed.WorkerPlugin):
  """Imports the given modules on each worker as it is set up, before it runs a task."""

  def __init__(self, modules: Iterable[str]):
    self.modules = sorted(modules)

  def setup(self, worker):
    for module in self.modules:
      try:
        importlib.import_module(module)
      except Exception as error:  # pylint: disable=broad-except
        # Not fatal here: a task that needs the module fails with its own error.
        logging.warning("Dask worker %s could not import %s first: %s", worker.address, module,
                        error)


def _defining_modules(value, depth: int = 3) -> Set[str]:
  """The modules `value` (a transform, a DoFn, a function, an argument) and the functions its
  closure holds are defined in: what a worker imports to unpickle it. Map's DoFn, for one, calls
  a wrapper defined in Beam whose closure holds the user's function."""
  modules = {getattr(value, "__module__", None) or type(value).__module__}
  if depth:
    for cell in getattr(value, "__closure__", None) or ():
      try:
        contents = cell.cell_contents
      except ValueError:  # an empty cell
        continue
      modules |= _defining_modules(contents, depth - 1)
  return {module for module in modules if isinstance(module, str)} - {"__main__", "builtins"}


def _source_modules(transform) -> Set[str]:
  """The modules a transform, its DoFn, the DoFn's function and the arguments come from."""
  dofn = getattr(transform, "dofn", None)
  sources = [transform, dofn, getattr(dofn, "_fn", None), *(getattr(transform, "args", None) or ()),
             *(getattr(transform, "kwargs", None) or {}).values()]
  return set().union(*(_defining_modules(source) for source in sources if source is not None))


class _BagVisitor(PipelineVisitor):
  """Builds a dask.bag of WindowedValues for every PCollection, and one of metric updates per
  ParDo; gathers the modules the transforms come from."""

  def __init__(self):
    self.bags: Dict[pvalue.PCollection, dask_bag.Bag] = {}
    self.metric_bags: List[dask_bag.Bag] = []
    self.consumed = set()
    self.modules: Set[str] = set()

  def enter_composite_transform(self, applied):
    if applied.transform is not None:  # the pipeline's root
      self.modules |= _source_modules(applied.transform)

  def visit_transform(self, applied):
    transform = applied.transform
    self.modules |= _source_modules(transform)
    main_inputs = [pcoll for pcoll in applied.main_inputs.values()
                   if isinstance(pcoll, pvalue.PCollection)]
    inputs = [self.bags[pcoll] for pcoll in main_inputs]
    self.consumed.update(main_inputs)
    self.consumed.update(side.pvalue for side in applied.side_inputs)
    if isinstance(transform, overrides._Create):
      values = [_global(value) for value in transform.values]
      bag = dask_bag.from_sequence(values, npartitions=max(1, min(len(values), 16)))
      self._set(applied, bag)
    elif isinstance(transform, overrides._Read):
      bundles = list(transform.source.split(_DESIRED_BUNDLE_BYTES))
      bag = dask_bag.from_sequence(bundles, npartitions=max(1, len(bundles)))
      self._set(applied, bag.map_partitions(_read_bundles))
    elif isinstance(transform, overrides._Reshuffle):
      self._set(applied, inputs[0])
    elif isinstance(transform, overrides._Flatten):
      self._set(applied, dask_bag.concat(inputs))
    elif isinstance(transform, overrides._GroupByKeyOnly):
      # The task shuffle, always: dask picks it only when a Client exists as the graph is built,
      # and this one does not yet. Its other choice, the disk shuffle, keeps the groups in one
      # worker's temporary directory: out of other machines' reach, and deleted with the copy
      # of its handle that the Active Memory Manager drops as a spare replica.
      grouped = inputs[0].groupby(
          _key_hash, npartitions=min(inputs[0].npartitions, _MAX_GROUP_PARTITIONS),
          shuffle="tasks")
      self._set(applied, grouped.map(_group).flatten())
    elif isinstance(transform, transforms.ParDo) and len(inputs) == 1:
      self._pardo(applied, inputs[0])
    else:
      raise NotImplementedError(
          f"{applied.full_label}: the Dask runner has no translation for "
          f"{type(transform).__name__}")

  def _set(self, applied, bag):
    (pcoll,) = applied.outputs.values()
    self.bags[pcoll] = bag

  def _pardo(self, applied, input_bag):
    transform = applied.transform
    dofn = transform.dofn
    if isinstance(transform, transforms.WindowInto) and not isinstance(
        transform.get_windowing(None).windowfn, window.GlobalWindows):
      raise NotImplementedError(f"{applied.full_label}: the Dask runner runs the global window "
                                f"only, not {transform.get_windowing(None).windowfn}")
    signature = common.DoFnSignature(dofn)
    if signature.is_stateful_dofn() or signature.is_splittable_dofn():
      raise NotImplementedError(f"{applied.full_label}: the Dask runner runs neither stateful "
                                "nor splittable DoFns")
    side_views = [(type(side), side._view_options()) for side in applied.side_inputs]
    side_values = [dask.delayed(_concat)(self.bags[side.pvalue].to_delayed(optimize_graph=False))
                   for side in applied.side_inputs]
    tags = list(applied.outputs)
    pickled = pickler.dumps((dofn, transform.args, transform.kwargs,
                             _GLOBAL_WINDOWING,
                             tags, side_views))
    results = input_bag.map_partitions(_run_pardo, pickled, applied.full_label, *side_values)
    for tag, pcoll in applied.outputs.items():
      self.bags[pcoll] = results.map_partitions(_output, tag)
    self.metric_bags.append(results.map_partitions(_metric_updates))

  def sinks(self) -> List[dask_bag.Bag]:
    """What to compute: every ParDo's metric updates (which runs every ParDo) and the size of
    each PCollection nothing reads, not the elements themselves."""
    unread = [bag.count() for pcoll, bag in self.bags.items() if pcoll not in self.consumed]
    return self.metric_bags + unread


class DaskRunnerResult(runner.PipelineResult):
  """Waits for the cluster's futures, then holds the merged metrics."""

  def __init__(self, client: distributed.Client, futures, metric_count: int):
    super().__init__(runner.PipelineState.RUNNING)
    self._client = client
    self._futures = futures
    self._metric_count = metric_count
    self._metrics = direct_metrics.DirectMetrics()

  def wait_until_finish(self, duration=None):
    if self._state != runner.PipelineState.RUNNING:
      return self._state
    try:
      results = self._client.gather(self._futures, errors="raise")
      for bundle, updates in enumerate(itertools.chain.from_iterable(
          results[:self._metric_count])):
        self._metrics.commit_physical(bundle, updates)
        self._metrics.commit_logical(bundle, updates)
      self._state = runner.PipelineState.DONE
    except BaseException:
      self._state = runner.PipelineState.FAILED
      raise
    finally:
      self._client.close()
    return self._state

  def cancel(self):
    self._client.cancel(self._futures)
    self._client.close()
    self._state = runner.PipelineState.CANCELLED
    return self._state

  def metrics(self):
    return self._metrics


class _Flatten(overrides._Flatten):
  """Beam's Dask Flatten, also of one PCollection (TFDV flattens its splits' PCollections, and
  Beam hands a replacement a lone input bare, which Beam's own version iterates over)."""

  def expand(self, input_or_inputs):
    if isinstance(input_or_inputs, pvalue.PCollection):
      input_or_inputs = (input_or_inputs,)
    return super().expand(input_or_inputs)


class _FlattenOverride(PTransformOverride):

  def matches(self, applied_ptransform):
    return type(applied_ptransform.transform) is transforms.Flatten

  def get_replacement_transform_for_applied_ptransform(self, applied_ptransform):
    return _Flatten()


class _GroupByKey(overrides._GroupByKey):
  """Beam's Dask GroupByKey, applied through the pipeline it runs in: Beam's own applies through
  its input's `pipeline`, which TFDV's PCollections leave unset (StatisticsGen failed with
  "'NoneType' object has no attribute 'apply'")."""

  def __init__(self, pipeline):
    super().__init__()
    self._pipeline = pipeline

  def expand(self, input_or_inputs):
    return self._pipeline.apply(overrides._GroupByKeyOnly(), input_or_inputs, "GroupByKey")


class _GroupByKeyOverride(PTransformOverride):

  def __init__(self, pipeline):
    self._pipeline = pipeline

  def matches(self, applied_ptransform):
    return type(applied_ptransform.transform) is transforms.GroupByKey

  def get_replacement_transform_for_applied_ptransform(self, applied_ptransform):
    return _GroupByKey(self._pipeline)


def translate(pipeline) -> _BagVisitor:
  """The pipeline's dask bags, built without a cluster; refuses what it cannot translate."""
  # Ours first: Beam's Flatten and GroupByKey overrides then find nothing left to replace.
  pipeline.replace_all([_FlattenOverride(), _GroupByKeyOverride(pipeline),
                        *overrides.dask_overrides()])
  visitor = _BagVisitor()
  pipeline.visit(visitor)
  return visitor


class DaskRunner(runner.PipelineRunner):
  """Runs a batch pipeline on the Dask cluster at --dask_client_address (see the module doc)."""

  def run_pipeline(self, pipeline, options):
    visitor = translate(pipeline)
    client = distributed.Client(**client_options(options))
    try:
      client.register_worker_plugin(_ImportFirst(visitor.modules), name="recsys-import-first")
    except BaseException:
      client.close()
      raise
    # Unoptimised: dask's fusion renames tasks per collection, and a DoFn with side effects (the
    # file writes) must run once, however many collections read its output.
    futures = client.compute(visitor.sinks(), optimize_graph=False)
    return DaskRunnerResult(client, futures, len(visitor.metric_bags))
