"""`recsys lineage` (pipeline/lineage.py): where a pushed version came from, read from ML Metadata.

A person asks this when a served model misbehaves, to find the data span, the training run and
the gate's verdict behind it without rerunning anything. The store here is written the way TFX's
launcher writes it (typed artifacts, INPUT and OUTPUT events keyed by channel, executions
attributed to pipeline, pipeline_run and node contexts), without running the pipeline.
"""
import json
import pathlib
from typing import Dict, List, Optional, Sequence

from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2
import pytest
from tfx.components.evaluator import constants as evaluator_constants
from tfx.types import standard_artifacts

from components import artifact_properties
from components.evaluation import candidate_evaluation
from components.models.config import custom_config
from components.models.config import ModelConfig
from components.models.config import RankerConfig
from components.models.config import RewardConfig
from pipeline import configs
from pipeline import lineage
from serving import model_config

ARTIFACTS = standard_artifacts
FIRST_RUN, SECOND_RUN = "2026-11-26T00:14:08.143181", "2026-11-27T00:14:08.902114"
METRICS = {"recall@10": 0.3582, "ndcg@10": 0.1895, "coverage@10": 0.6, "ope_ctr": 0.1411,
           "category_diversity@10": 0.7120}
BLESSED_REASON = ("blessed: floors and popularity margins (first model: no baseline) hold "
                  "(weighted score 1.0918)")
REFUSED_REASON = "refused: recall@10 = 0.0300 misses its floor 0.0500 by 0.0200"
INFRA_REASON = "loaded, answered 200 warmup requests; p99 latency 12.3 ms within 250 ms"
# The execution types TFX registers: the component class's module path.
EXECUTION_TYPES = {
    "ImportExampleGen": "tfx.components.example_gen.import_example_gen.component."
                        "ImportExampleGen",
    "StatisticsGen": "tfx.components.statistics_gen.component.StatisticsGen",
    "EventsSchemaGen": "tfx.components.schema_gen.import_schema_gen.component.ImportSchemaGen",
    "ExampleValidator": "tfx.components.example_validator.component.ExampleValidator",
    "SessionBuilder": "components.session_builder.SessionBuilder",
    "TransitionsSchemaGen": "tfx.components.schema_gen.import_schema_gen.component."
                            "ImportSchemaGen",
    "Transform": "tfx.components.transform.component.Transform",
    "Trainer": "tfx.components.trainer.component.Trainer",
    "ModelEvaluator": "components.model_evaluator.ModelEvaluator",
    "ServingInfraValidator": "components.infra_validator.ServingInfraValidator",
    "Pusher": "tfx.components.pusher.component.Pusher",
}
# (artifact type, producing node) of one pushed version, as README's example lists them.
ONE_RUN_STEPS = [("PushedModel", "Pusher"), ("Model", "Trainer"),
                 ("ModelBlessing", "ModelEvaluator"), ("InfraBlessing", "ServingInfraValidator"),
                 ("Examples", "SessionBuilder"), ("TransformGraph", "Transform"),
                 ("Schema", "TransitionsSchemaGen"), ("Examples", "SessionBuilder"),
                 ("ModelEvaluation", "ModelEvaluator"), ("Examples", "ImportExampleGen"),
                 ("ExampleStatistics", "StatisticsGen")]


class _Metadata:
  """An ML Metadata store in SQLite that nodes' executions are recorded in as TFX records them."""

  def __init__(self, config: configs.PipelineConfig):
    self.config = config
    config.metadata_path.parent.mkdir(parents=True, exist_ok=True)
    connection = metadata_store_pb2.ConnectionConfig()
    connection.sqlite.filename_uri = str(config.metadata_path)
    connection.sqlite.connection_mode = (
        metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE_OPENCREATE)
    self.store = metadata_store.MetadataStore(connection)
    self._context_types = {
        name: self.store.put_context_type(metadata_store_pb2.ContextType(name=name))
        for name in ("pipeline", "pipeline_run", "node")}
    self._outputs = 0

  def output(self, artifact_class, node: str, key: str, **custom_properties):
    """A new output artifact of `node` at TFX's URI layout, with custom properties."""
    self._outputs += 1
    artifact = artifact_class()
    artifact.uri = str(self.config.pipeline_root / node / key / str(self._outputs))
    for name, value in custom_properties.items():
      if isinstance(value, int):
        artifact.set_int_custom_property(name, value)
      else:
        artifact.set_string_custom_property(name, value)
    return artifact

  def execute(self, node: str, run_id: str, inputs: Dict[str, Sequence],
              outputs: Dict[str, Sequence], cached: bool = False,
              exec_properties: Optional[Dict[str, str]] = None) -> int:
    """Records one execution of `node` in run `run_id`: its input and output events, contexts
    and execution properties, which TFX records as custom properties.

    An output artifact that already has an id is reused, as a CACHED execution does.
    """
    execution = metadata_store_pb2.Execution(
        type_id=self.store.put_execution_type(
            metadata_store_pb2.ExecutionType(name=EXECUTION_TYPES[node])),
        last_known_state=(metadata_store_pb2.Execution.CACHED if cached
                          else metadata_store_pb2.Execution.COMPLETE))
    for name, value in (exec_properties or {}).items():
      execution.custom_properties[name].string_value = value
    pairs, written = [], []
    for event_type, channels in ((metadata_store_pb2.Event.INPUT, inputs),
                                 (metadata_store_pb2.Event.OUTPUT, outputs)):
      for key, artifacts in channels.items():
        for index, artifact in enumerate(artifacts):
          event = metadata_store_pb2.Event(type=event_type)
          event.path.steps.add().key = key
          event.path.steps.add().index = index
          proto = artifact.mlmd_artifact
          proto.type_id = self.store.put_artifact_type(artifact.artifact_type,
                                                       can_add_fields=True)
          proto.state = metadata_store_pb2.Artifact.LIVE
          pairs.append((proto, event))
          written.append(artifact)
    contexts = [self._context("pipeline", self.config.pipeline_name),
                self._context("pipeline_run", run_id),
                self._context("node", f"{self.config.pipeline_name}.{node}")]
    execution_id, artifact_ids, _ = self.store.put_execution(
        execution, pairs, contexts, reuse_context_if_already_exist=True)
    for artifact, artifact_id in zip(written, artifact_ids):
      artifact.id = artifact_id
    return execution_id

  def _context(self, kind: str, name: str) -> metadata_store_pb2.Context:
    return metadata_store_pb2.Context(type_id=self._context_types[kind], name=name)


def _write_evaluation(evaluation, metrics: Dict[str, float], reason: str) -> None:
  """evaluation.json in the ModelEvaluation's directory, shaped as candidate_evaluation writes."""
  directory = pathlib.Path(evaluation.uri)
  directory.mkdir(parents=True)
  record = {"candidate": {"queries": 640, "repeat_queries": 37, "metrics": metrics,
                          "slices": {}, "off_policy": {}},
            "baseline": None,
            "verdict": {"blessed": reason.startswith("blessed"), "reason": reason,
                        "failures": [], "not_measured": ["simulator_ctr"],
                        "candidate_score": None, "baseline_score": None,
                        "has_baseline": False},
            "gate": "metrics:\n  recall@10: {floor: 0.05}\n", "past_models": []}
  (directory / candidate_evaluation.EVALUATION_FILE).write_text(json.dumps(record))


def _upstream(metadata: _Metadata, run_id: str, span: int) -> Dict:
  """ImportExampleGen to the Trainer, every node run afresh: the artifacts by name."""
  made = {}
  made["span"] = metadata.output(ARTIFACTS.Examples, "ImportExampleGen", "examples")
  made["span"].span = span
  made["span"].split_names = '["events"]'
  metadata.execute("ImportExampleGen", run_id, {}, {"examples": [made["span"]]})
  made["statistics"] = metadata.output(ARTIFACTS.ExampleStatistics, "StatisticsGen",
                                       "statistics")
  metadata.execute("StatisticsGen", run_id, {"examples": [made["span"]]},
                   {"statistics": [made["statistics"]]})
  made["events_schema"] = metadata.output(ARTIFACTS.Schema, "EventsSchemaGen", "schema")
  metadata.execute("EventsSchemaGen", run_id, {}, {"schema": [made["events_schema"]]})
  made["anomalies"] = metadata.output(ARTIFACTS.ExampleAnomalies, "ExampleValidator",
                                      "anomalies")
  metadata.execute("ExampleValidator", run_id,
                   {"statistics": [made["statistics"]], "schema": [made["events_schema"]]},
                   {"anomalies": [made["anomalies"]]})
  made["examples"] = metadata.output(ARTIFACTS.Examples, "SessionBuilder", "examples")
  made["transitions"] = metadata.output(ARTIFACTS.Examples, "SessionBuilder", "transitions")
  metadata.execute("SessionBuilder", run_id, {"events": [made["span"]]},
                   {"examples": [made["examples"]], "transitions": [made["transitions"]]})
  made["schema"] = metadata.output(ARTIFACTS.Schema, "TransitionsSchemaGen", "schema")
  metadata.execute("TransitionsSchemaGen", run_id, {}, {"schema": [made["schema"]]})
  made["transform_graph"] = metadata.output(ARTIFACTS.TransformGraph, "Transform",
                                            "transform_graph")
  metadata.execute("Transform", run_id,
                   {"examples": [made["transitions"]], "schema": [made["schema"]]},
                   {"transform_graph": [made["transform_graph"]]})
  made["model"] = metadata.output(ARTIFACTS.Model, "Trainer", "model")
  made["model_run"] = metadata.output(ARTIFACTS.ModelRun, "Trainer", "model_run")
  metadata.execute("Trainer", run_id,
                   {"examples": [made["transitions"]], "transform_graph":
                    [made["transform_graph"]], "schema": [made["schema"]]},
                   {"model": [made["model"]], "model_run": [made["model_run"]]},
                   exec_properties={"custom_config": json.dumps(custom_config(ModelConfig(
                       ranker=RankerConfig(reward=RewardConfig(revenue=0.05, retention=2.0)))))})
  return made


def _reuse_upstream(metadata: _Metadata, run_id: str, earlier: Dict) -> None:
  """The same nodes as `_upstream`, CACHED: each execution outputs the earlier artifacts."""
  for node, inputs, outputs in (
      ("ImportExampleGen", {}, {"examples": ["span"]}),
      ("StatisticsGen", {"examples": ["span"]}, {"statistics": ["statistics"]}),
      ("SessionBuilder", {"events": ["span"]},
       {"examples": ["examples"], "transitions": ["transitions"]}),
      ("TransitionsSchemaGen", {}, {"schema": ["schema"]}),
      ("Transform", {"examples": ["transitions"], "schema": ["schema"]},
       {"transform_graph": ["transform_graph"]}),
      ("Trainer", {"examples": ["transitions"], "transform_graph": ["transform_graph"],
                   "schema": ["schema"]}, {"model": ["model"], "model_run": ["model_run"]})):
    metadata.execute(node, run_id,
                     {key: [earlier[name] for name in names] for key, names in inputs.items()},
                     {key: [earlier[name] for name in names] for key, names in outputs.items()},
                     cached=True)


def _evaluate_and_push(metadata: _Metadata, run_id: str, made: Dict, version: Optional[int],
                       metrics: Dict[str, float] = METRICS,
                       baseline_model=None, past_evaluations: Sequence = ()) -> Dict:
  """ModelEvaluator, ServingInfraValidator and Pusher on `made`'s model; `version` None for a
  refused model, which the Pusher marks not pushed."""
  reason = BLESSED_REASON if version is not None else REFUSED_REASON
  blessed = int(version is not None)
  made = dict(made)
  made["evaluation"] = metadata.output(ARTIFACTS.ModelEvaluation, "ModelEvaluator", "evaluation",
                                       **{artifact_properties.BLESSED: blessed})
  _write_evaluation(made["evaluation"], metrics, reason)
  made["blessing"] = metadata.output(
      ARTIFACTS.ModelBlessing, "ModelEvaluator", "blessing",
      **{evaluator_constants.ARTIFACT_PROPERTY_BLESSED_KEY: blessed,
         evaluator_constants.ARTIFACT_PROPERTY_BLESSING_MESSAGE_KEY: reason,
         evaluator_constants.ARTIFACT_PROPERTY_CURRENT_MODEL_URI_KEY: made["model"].uri})
  inputs = {"model": [made["model"]], "examples": [made["examples"]],
            "transitions": [made["transitions"]]}
  if baseline_model is not None:
    inputs["baseline_model"] = [baseline_model]
  if past_evaluations:
    inputs["past_evaluations"] = list(past_evaluations)
  metadata.execute("ModelEvaluator", run_id, inputs,
                   {"evaluation": [made["evaluation"]], "blessing": [made["blessing"]]})
  made["infra_blessing"] = metadata.output(
      ARTIFACTS.InfraBlessing, "ServingInfraValidator", "blessing",
      **{evaluator_constants.ARTIFACT_PROPERTY_BLESSED_KEY: 1,
         artifact_properties.INFRA_REASON: INFRA_REASON})
  metadata.execute("ServingInfraValidator", run_id,
                   {"model": [made["model"]], "transform_graph": [made["transform_graph"]]},
                   {"blessing": [made["infra_blessing"]]})
  pushed = {"pushed": 1, "pushed_version": str(version),
            "pushed_destination": str(metadata.config.model_base_path / str(version))}
  made["pushed_model"] = metadata.output(ARTIFACTS.PushedModel, "Pusher", "pushed_model",
                                         **(pushed if version is not None else {"pushed": 0}))
  metadata.execute("Pusher", run_id,
                   {"model": [made["model"]], "model_blessing": [made["blessing"]],
                    "infra_blessing": [made["infra_blessing"]]},
                   {"pushed_model": [made["pushed_model"]]})
  return made


@pytest.fixture
def config(tmp_path) -> configs.PipelineConfig:
  return configs.PipelineConfig(home=tmp_path)


@pytest.fixture
def one_run(config) -> Dict:
  """One run that trained, blessed and pushed version 7."""
  metadata = _Metadata(config)
  return _evaluate_and_push(metadata, FIRST_RUN, _upstream(metadata, FIRST_RUN, span=3),
                            version=7)


def _steps(found: lineage.Lineage) -> List[tuple]:
  return [(step.artifact_type, step.component) for step in found.steps]


def test_the_steps_run_from_the_pushed_model_upstream_to_the_span_and_its_statistics(
    config, one_run):
  found = lineage.lineage(config, 7)
  assert found.version == 7
  steps = _steps(found)
  assert sorted(steps) == sorted(ONE_RUN_STEPS)
  # Downstream first, as documented: the pushed model, its model and blessing first; the
  # evaluation, the span and its statistics last.
  assert steps[:3] == ONE_RUN_STEPS[:3]
  assert steps[-3:] == ONE_RUN_STEPS[-3:]
  assert steps.index(("InfraBlessing", "ServingInfraValidator")) < steps.index(
      ("TransformGraph", "Transform"))


def test_each_step_names_the_artifact_uri_and_the_run_that_wrote_it(config, one_run):
  found = lineage.lineage(config, 7)
  for artifact_type, name in [("PushedModel", "pushed_model"), ("Model", "model"),
                              ("ModelBlessing", "blessing"), ("InfraBlessing", "infra_blessing"),
                              ("TransformGraph", "transform_graph"), ("Schema", "schema"),
                              ("ModelEvaluation", "evaluation"),
                              ("ExampleStatistics", "statistics")]:
    (step,) = found.find(artifact_type)
    assert step.uri == one_run[name].uri, artifact_type
    assert step.run_id == FIRST_RUN
  examples = {(step.component, step.uri) for step in found.find("Examples")}
  assert examples == {("ImportExampleGen", one_run["span"].uri),
                      ("SessionBuilder", one_run["examples"].uri),
                      ("SessionBuilder", one_run["transitions"].uri)}
  # What the pushed model does not derive from is left out: events schema, anomalies, model run.
  uris = {step.uri for step in found.steps}
  assert not uris & {one_run[name].uri for name in ("events_schema", "anomalies", "model_run")}


def test_the_gates_verdicts_the_headline_metrics_and_the_span_are_shown(config, one_run):
  found = lineage.lineage(config, 7)
  (blessing,) = found.find("ModelBlessing")
  assert blessing.details == {"verdict": BLESSED_REASON}
  (infra,) = found.find("InfraBlessing")
  assert infra.details == {"verdict": INFRA_REASON}
  (evaluation,) = found.find("ModelEvaluation")
  # The headline metrics in their fixed order; simulator_ctr was not measured, diversity is not
  # a headline figure.
  assert evaluation.details == {
      "metrics": "recall@10 0.3582, ndcg@10 0.1895, coverage@10 0.6000, ope_ctr 0.1411"}
  (span,) = [step for step in found.find("Examples") if step.component == "ImportExampleGen"]
  assert span.details == {"span": "3"}
  assert all(not step.details for step in found.find("Examples")
             if step.component == "SessionBuilder")
  # The reward the head was trained for, from the Trainer's custom_config in ML Metadata.
  assert found.find("Model")[0].details == {
      "reward": "click 1, purchase 1, revenue 0.05, novelty 0, retention 2"}


def test_the_description_lists_every_step_with_its_run_details_and_uri(config, one_run):
  text = lineage.lineage(config, 7).describe()
  lines = text.splitlines()
  assert lines[0] == "Version 7"
  assert lines[1].split() == ["PushedModel", "Pusher", "run", FIRST_RUN]
  assert lines[2].strip() == one_run["pushed_model"].uri
  assert len(lines) == 1 + 2 * len(ONE_RUN_STEPS)
  blessing = f"ModelBlessing      ModelEvaluator         run {FIRST_RUN}; verdict: {BLESSED_REASON}"
  assert f"\n  {blessing}\n" in text
  assert f"run {FIRST_RUN}; span: 3" in text


def test_a_version_that_was_never_pushed_is_an_error_naming_it(config, one_run):
  with pytest.raises(lineage.LineageError, match=r"no run of this pipeline pushed version 8$"):
    lineage.lineage(config, 8)


def test_a_refused_run_pushed_nothing_to_trace(config):
  metadata = _Metadata(config)
  _evaluate_and_push(metadata, FIRST_RUN, _upstream(metadata, FIRST_RUN, span=1), version=None)
  # The Pusher marks a refused model's artifact not pushed, with no version.
  with pytest.raises(lineage.LineageError, match="pushed version 1"):
    lineage.lineage(config, 1)


def test_without_a_version_the_one_labelled_stable_is_traced(config):
  metadata = _Metadata(config)
  _evaluate_and_push(metadata, FIRST_RUN, _upstream(metadata, FIRST_RUN, span=1), version=7)
  second = _evaluate_and_push(metadata, SECOND_RUN, _upstream(metadata, SECOND_RUN, span=2),
                              version=8)
  # Version 8 was rolled back: 7 is stable again.
  model_config.write(config.serving_root, config.model_name, [7, 8], {model_config.STABLE: 7})
  found = lineage.lineage(config)
  assert found.version == 7
  assert found.steps[0].run_id == FIRST_RUN
  assert found.steps[0].uri != second["pushed_model"].uri
  model_config.write(config.serving_root, config.model_name, [7, 8], {model_config.STABLE: 8})
  found = lineage.lineage(config)
  assert found.version == 8
  assert found.steps[0].uri == second["pushed_model"].uri


def test_without_a_version_or_a_stable_label_the_error_asks_for_one(config, one_run):
  with pytest.raises(lineage.LineageError, match=r"labelled stable .*; pass --version"):
    lineage.lineage(config)


def test_without_any_run_the_error_names_the_missing_store(config):
  with pytest.raises(lineage.LineageError, match=r"no pipeline has run in .*recsys\.sqlite"):
    lineage.lineage(config, 7)


def test_a_version_pushed_from_cached_outputs_traces_back_to_the_run_that_made_them(config):
  metadata = _Metadata(config)
  refused = _evaluate_and_push(metadata, FIRST_RUN, _upstream(metadata, FIRST_RUN, span=1),
                               version=None)
  # The next run reuses span, sessions, transform graph and model from the cache; a relaxed gate
  # blesses the model and the Pusher pushes it.
  _reuse_upstream(metadata, SECOND_RUN, refused)
  pushed = _evaluate_and_push(metadata, SECOND_RUN, refused, version=9)
  found = lineage.lineage(config, 9)
  assert sorted(_steps(found)) == sorted(ONE_RUN_STEPS)
  runs = {(artifact_type, component): {step.run_id for step in found.steps
                                       if (step.artifact_type, step.component)
                                       == (artifact_type, component)}
          for artifact_type, component in ONE_RUN_STEPS}
  assert runs[("PushedModel", "Pusher")] == {SECOND_RUN}
  assert runs[("ModelBlessing", "ModelEvaluator")] == {SECOND_RUN}
  for made_by_the_first_run in [("Model", "Trainer"), ("TransformGraph", "Transform"),
                                ("Examples", "SessionBuilder"), ("Examples", "ImportExampleGen"),
                                ("ExampleStatistics", "StatisticsGen")]:
    assert runs[made_by_the_first_run] == {FIRST_RUN}, made_by_the_first_run
  (model,) = found.find("Model")
  assert model.uri == refused["model"].uri == pushed["model"].uri
  (blessing,) = found.find("ModelBlessing")
  assert blessing.uri == pushed["blessing"].uri


def test_a_later_versions_lineage_shows_only_the_span_its_model_was_trained_on(config):
  metadata = _Metadata(config)
  first = _evaluate_and_push(metadata, FIRST_RUN, _upstream(metadata, FIRST_RUN, span=1),
                             version=7)
  second = _evaluate_and_push(metadata, SECOND_RUN, _upstream(metadata, SECOND_RUN, span=2),
                              version=8, baseline_model=first["model"],
                              past_evaluations=[first["evaluation"]])
  found = lineage.lineage(config, 8)
  spans = [step for step in found.find("Examples") if step.component == "ImportExampleGen"]
  assert [(step.uri, step.details) for step in spans] == [(second["span"].uri, {"span": "2"})]
  assert [step.uri for step in found.find("ExampleStatistics")] == [second["statistics"].uri]
