"""Where a pushed model version came from, read from ML Metadata.

Starting at the PushedModel artifact of a version, the walk follows ML Metadata's events
upstream (each artifact to the execution that wrote it, each execution to the artifacts it
read) through Pusher, Trainer, Transform and SessionBuilder to ExampleGen's span; the data's
statistics are the StatisticsGen output computed from that span. Cached executions point at the
artifacts they reused, so a version pushed by a run that reused earlier outputs still traces
back to the run that made them.
"""
import collections
import dataclasses
import json
import pathlib
from typing import Dict, List, Optional

from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2
from tfx.orchestration import metadata
from tfx.types import standard_artifacts

from components import artifact_properties
from components.evaluation import candidate_evaluation
from components.models.config import MODEL_CONFIG_KEY
from components.models.config import ModelConfig
from pipeline import run_report
from pipeline.configs import PipelineConfig

_OUTPUT_EVENTS = (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT)
_INPUT_EVENTS = (metadata_store_pb2.Event.INPUT, metadata_store_pb2.Event.DECLARED_INPUT)
# The metrics `recsys lineage` shows from the evaluation: the gate's headline figures.
HEADLINE_METRICS = ("recall@10", "ndcg@10", "coverage@10", "ope_ctr", "simulator_ctr")
EVALUATOR_NODE = "ModelEvaluator"


class LineageError(Exception):
  """No lineage to show, with the reason."""


@dataclasses.dataclass(frozen=True)
class Step:
  """One artifact of the lineage and the execution that wrote it."""
  artifact_type: str
  uri: str
  component: str  # the pipeline node that wrote it, e.g. "Trainer"
  run_id: str
  details: Dict[str, str]


@dataclasses.dataclass(frozen=True)
class Lineage:
  version: int
  steps: List[Step]  # downstream first: pushed model, model, ..., examples, statistics

  def find(self, artifact_type: str) -> List[Step]:
    return [step for step in self.steps if step.artifact_type == artifact_type]

  def describe(self) -> str:
    lines = [f"Version {self.version}"]
    for step in self.steps:
      details = "".join(f"; {key}: {value}" for key, value in step.details.items())
      lines.append(f"  {step.artifact_type:<18} {step.component:<22} run {step.run_id}{details}")
      lines.append(f"  {'':<18} {step.uri}")
    return "\n".join(lines)


# Inputs a step compares the model with rather than makes it from: the evaluator's baseline (the
# previous blessed model) and the earlier evaluations its report plots. Following them would
# pull every earlier run's model, spans and statistics into this version's lineage.
_COMPARED_WITH = {EVALUATOR_NODE: ("baseline_model", "past_evaluations")}


class _Store:
  """The few ML Metadata queries the walk needs."""

  def __init__(self, config: PipelineConfig):
    self.store = metadata_store.MetadataStore(
        metadata.sqlite_metadata_connection_config(str(config.metadata_path)))
    self._type_names = {artifact_type.id: artifact_type.name
                        for artifact_type in self.store.get_artifact_types()}

  def type_name(self, artifact: metadata_store_pb2.Artifact) -> str:
    return self._type_names[artifact.type_id]

  def producer(self, artifact_id: int) -> Optional[int]:
    """The execution that wrote the artifact: the first to output it (cached ones reuse it)."""
    executions = [event.execution_id for event in self.store.get_events_by_artifact_ids(
        [artifact_id]) if event.type in _OUTPUT_EVENTS]
    return min(executions, default=None)

  def events(self, execution_id: int, types, skip_keys=()) -> List[int]:
    """The artifacts the execution read (or wrote), but not those under the `skip_keys`."""
    return [event.artifact_id for event in self.store.get_events_by_execution_ids([execution_id])
            if event.type in types
            and not (event.path.steps and event.path.steps[0].key in skip_keys)]

  def consumers(self, artifact_id: int) -> List[int]:
    return [event.execution_id for event in self.store.get_events_by_artifact_ids([artifact_id])
            if event.type in _INPUT_EVENTS]

  def node_and_run(self, execution_id: int):
    node, run = "?", "?"
    for context in self.store.get_contexts_by_execution(execution_id):
      kind = self.store.get_context_types_by_id([context.type_id])[0].name
      if kind == "node":
        node = context.name.split(".", 1)[-1]
      elif kind == "pipeline_run":
        run = context.name
    return node, run


def _pushed_model(store: _Store, version: int) -> metadata_store_pb2.Artifact:
  pushed = [artifact for artifact in store.store.get_artifacts_by_type(
      standard_artifacts.PushedModel.TYPE_NAME)
            if artifact.custom_properties["pushed"].int_value == 1
            and artifact.custom_properties["pushed_version"].string_value == str(version)]
  if not pushed:
    raise LineageError(f"no run of this pipeline pushed version {version}")
  return pushed[0]


def _details(store: _Store, artifact: metadata_store_pb2.Artifact) -> Dict[str, str]:
  type_name = store.type_name(artifact)
  details = {}
  properties = {**artifact.custom_properties, **artifact.properties}  # span moved between them
  if type_name == standard_artifacts.Examples.TYPE_NAME and "span" in properties:
    details["span"] = str(properties["span"].int_value)
  elif type_name == standard_artifacts.ModelEvaluation.TYPE_NAME:
    path = pathlib.Path(artifact.uri) / candidate_evaluation.EVALUATION_FILE
    if path.exists():
      metrics = json.loads(path.read_text())["candidate"]["metrics"]
      details["metrics"] = ", ".join(f"{name} {metrics[name]:.4f}" for name in HEADLINE_METRICS
                                     if name in metrics)
  elif type_name == standard_artifacts.Model.TYPE_NAME:
    details.update(_reward(store, artifact))
  elif type_name == standard_artifacts.ModelBlessing.TYPE_NAME:
    details["verdict"] = artifact.custom_properties["blessing_message"].string_value
  elif type_name == standard_artifacts.InfraBlessing.TYPE_NAME:
    details["verdict"] = artifact.custom_properties[artifact_properties.INFRA_REASON].string_value
  return details


def _reward(store: _Store, model: metadata_store_pb2.Artifact) -> Dict[str, str]:
  """The reward the model's ranking head was trained for, from its Trainer's custom_config."""
  execution_id = store.producer(model.id)
  if execution_id is None:
    return {}
  (execution,) = store.store.get_executions_by_id([execution_id])
  if "custom_config" not in execution.custom_properties:
    return {}
  custom_config = json.loads(execution.custom_properties["custom_config"].string_value)
  reward = ModelConfig.from_dict(custom_config[MODEL_CONFIG_KEY]).ranker.reward
  return {"reward": ", ".join(f"{term} {weight:g}"
                              for term, weight in dataclasses.asdict(reward).items())}


def lineage(config: PipelineConfig, version: Optional[int] = None) -> Lineage:
  """The lineage of `version`, by default of the version labelled stable."""
  if not config.metadata_path.exists():
    raise LineageError(f"no pipeline has run in {config.home} (no {config.metadata_path})")
  if version is None:
    stable = run_report.stable_version(config)
    if stable is None:
      raise LineageError(f"no version of {config.model_name!r} is labelled stable in "
                         f"{config.serving_root}; pass --version")
    version = int(stable)
  store = _Store(config)
  start = _pushed_model(store, version)
  steps, seen = [], {start.id}
  queue = collections.deque([start])
  examples_ids = []
  while queue:
    artifact = queue.popleft()
    execution_id = store.producer(artifact.id)
    node, run = store.node_and_run(execution_id) if execution_id is not None else ("?", "?")
    steps.append(Step(store.type_name(artifact), artifact.uri, node, run,
                      _details(store, artifact)))
    if node == "ImportExampleGen":
      examples_ids.append(artifact.id)
    if execution_id is None:
      continue
    related = store.events(execution_id, _INPUT_EVENTS, _COMPARED_WITH.get(node, ()))
    if node == EVALUATOR_NODE:  # the evaluation the blessing was decided on
      related += store.events(execution_id, _OUTPUT_EVENTS)
    inputs = [artifact_id for artifact_id in related if artifact_id not in seen]
    seen.update(inputs)
    queue.extend(store.store.get_artifacts_by_id(inputs))
  # The span's statistics: computed from it, not an input of the model.
  for examples_id in examples_ids:
    for execution_id in store.consumers(examples_id):
      if store.node_and_run(execution_id)[0] != "StatisticsGen":
        continue
      for statistics in store.store.get_artifacts_by_id(
          store.events(execution_id, _OUTPUT_EVENTS)):
        if statistics.id not in seen:
          seen.add(statistics.id)
          node, run = store.node_and_run(execution_id)
          steps.append(Step(store.type_name(statistics), statistics.uri, node, run, {}))
  return Lineage(version, steps)
