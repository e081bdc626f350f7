"""The pipeline: events → validated span → sessions → Transform → two-tower + DQN → evaluation
and release gate → push.

One definition serves every orchestrator; the runner files only choose where it runs.

TFX is imported by module, here and in every component, not through its public `tfx.v1`: that
package also imports every extension, Google Cloud AI Platform's client among them, which added
15 s to each process's start-up (tests/pipeline/test_imports.py keeps it out).
"""
import dataclasses
import json
import pathlib

from tfx import components as tfx_components
from tfx.components.schema_gen.import_schema_gen import component as import_schema_gen
from tfx.dsl.components.common import resolver
from tfx.dsl.input_resolution.strategies import latest_artifact_strategy
from tfx.dsl.input_resolution.strategies import latest_blessed_model_strategy
from tfx.orchestration import pipeline as tfx_pipeline
from tfx.proto import example_gen_pb2
from tfx.proto import pusher_pb2
from tfx.types import channel
from tfx.types import standard_artifacts

from components import artifact_properties
from components import data_gates
from components import infra_validator
from components import model_evaluator
from components import pusher as pusher_lib
from components import resolvers
from components.data import spans
from components.evaluation import release_gate
from components.models import config as model_config
from components.session_builder import EVENTS_SPLIT
from components.session_builder import SessionBuilder
from pipeline import configs
from pipeline.configs import PipelineConfig
import schemas


@dataclasses.dataclass(frozen=True)
class PipelinePaths:
  """Where the pipeline reads and writes, as the orchestrator's machines see them.

  Strings, not paths: on a cluster they are object-store URIs (gs://, s3://) or paths inside the
  pipeline image, which pathlib would mangle.
  """
  input_base: str  # ingested spans (components/data/spans.py)
  pipeline_root: str  # component outputs
  serving_root: str  # pushed versions and models.config
  schema_dir: str  # the curated schemas (schemas/)

  @classmethod
  def local(cls, config: PipelineConfig, input_base: pathlib.Path) -> "PipelinePaths":
    return cls(str(input_base), str(config.pipeline_root), str(config.serving_root),
               str(schemas.SCHEMA_DIR))

  def schema(self, path: pathlib.Path) -> str:
    """A schema file of this checkout, as the pipeline's machines see it."""
    return f"{self.schema_dir}/{path.relative_to(schemas.SCHEMA_DIR).as_posix()}"


def _recent_artifacts(limit: int, flag: str, latest_only: bool, **channels) -> resolver.Resolver:
  """Up to `limit` newest artifacts of the channels (with int custom property `flag` = 1).

  Kubeflow Pipelines v2 compiles only TFX's own latest-artifact resolver, for one artifact and
  without a filter: `latest_only` builds that instead.
  """
  if latest_only:
    return resolver.Resolver(strategy_class=latest_artifact_strategy.LatestArtifactStrategy,
                             **channels)
  return resolver.Resolver(strategy_class=resolvers.RecentArtifactsStrategy,
                           config={"limit": limit, "flag": flag}, **channels)


def create_pipeline(config: PipelineConfig, paths: PipelinePaths, metadata_connection_config=None,
                    latest_only_resolvers: bool = False) -> tfx_pipeline.Pipeline:
  """Builds the TFX pipeline over the latest span of TFRecord events under `paths.input_base`.

  `latest_only_resolvers` is for orchestrators that only resolve the latest artifact (Kubeflow
  Pipelines v2): the evaluation report then shows the latest earlier evaluation, of any verdict.
  """
  example_gen = tfx_components.ImportExampleGen(
      input_base=paths.input_base,
      input_config=example_gen_pb2.Input(splits=[
          example_gen_pb2.Input.Split(name=EVENTS_SPLIT, pattern=spans.INPUT_PATTERN)]),
      # One output split: the train/eval split is by time, in SessionBuilder, not by hash.
      output_config=example_gen_pb2.Output(split_config=example_gen_pb2.SplitConfig(splits=[
          example_gen_pb2.SplitConfig.Split(name=EVENTS_SPLIT, hash_buckets=1)])))
  statistics_gen = tfx_components.StatisticsGen(examples=example_gen.outputs["examples"])
  events_schema = import_schema_gen.ImportSchemaGen(
      schema_file=paths.schema(schemas.EVENTS_SCHEMA_PATH)).with_id("EventsSchemaGen")
  example_validator = tfx_components.ExampleValidator(
      statistics=statistics_gen.outputs["statistics"], schema=events_schema.outputs["schema"])
  data_gate = data_gates.DataValidationGate(anomalies=example_validator.outputs["anomalies"])
  # Earlier runs' SessionBuilder examples, each naming the statistics of data that passed every
  # check: a plain channel (not the node's own output), so the resolver sees only earlier runs.
  accepted_runs = _recent_artifacts(
      1, "", latest_only_resolvers,
      accepted=channel.Channel(
          type=standard_artifacts.Examples,
          producer_component_id="SessionBuilder",
          output_key="examples")).with_id("LastAcceptedRun")
  drift_gate = data_gates.DriftGate(
      statistics=statistics_gen.outputs["statistics"],
      accepted=accepted_runs.outputs["accepted"],
      schema=events_schema.outputs["schema"],
      allow_drift=int(config.allow_drift))
  # Data that breaks the schema must not become the next run's drift baseline.
  drift_gate.add_upstream_node(data_gate)

  session_builder = SessionBuilder(
      events=example_gen.outputs["examples"],
      statistics=statistics_gen.outputs["statistics"],
      session_gap_seconds=config.sessions.session_gap_seconds,
      history_length=config.sessions.history_length,
      eval_split=config.sessions.eval_split,
      eval_fraction=config.sessions.eval_fraction)
  # SessionBuilder reads ExampleGen's output, not the gates', so the order is stated explicitly.
  session_builder.add_upstream_node(drift_gate)

  transitions_schema = import_schema_gen.ImportSchemaGen(
      schema_file=paths.schema(schemas.TRANSITIONS_SCHEMA_PATH)).with_id(
          "TransitionsSchemaGen")
  code_config = model_config.custom_config(config.model)
  # Both models learn from the transitions: the two-tower model from their engagements, the DQN
  # head from all of them. The Trainer applies the Transform graph as it reads them (the same
  # layer the serving graph holds), so Transform only analyses and writes no copy of the data.
  transform = tfx_components.Transform(
      examples=session_builder.outputs["transitions"],
      schema=transitions_schema.outputs["schema"],
      preprocessing_fn=configs.PREPROCESSING_FN,
      materialize=False,
      # The events' statistics are validated by StatisticsGen and the gates; nothing reads the
      # transitions' before and after the transform, or a cache that no run passes back in,
      # and computing them was a third of Transform's time.
      disable_statistics=True,
      disable_analyzer_cache=True,
      custom_config=code_config)
  model_trainer = tfx_components.Trainer(
      run_fn=configs.TRAINER_RUN_FN,
      examples=session_builder.outputs["transitions"],
      transform_graph=transform.outputs["transform_graph"],
      schema=transitions_schema.outputs["schema"],
      custom_config=code_config)
  # The baseline: the model of the newest blessing that blessed its model.
  latest_blessed_model = resolver.Resolver(
      strategy_class=latest_blessed_model_strategy.LatestBlessedModelStrategy,
      model=channel.Channel(type=standard_artifacts.Model),
      model_blessing=channel.Channel(
          type=standard_artifacts.ModelBlessing)).with_id("LatestBlessedModel")
  past_evaluations = _recent_artifacts(
      config.report_past_models, artifact_properties.BLESSED, latest_only_resolvers,
      evaluations=channel.Channel(
          type=standard_artifacts.ModelEvaluation,
          producer_component_id="ModelEvaluator",
          output_key="evaluation")).with_id("PastBlessedEvaluations")
  evaluator = model_evaluator.ModelEvaluator(
      model=model_trainer.outputs["model"],
      examples=session_builder.outputs["examples"],
      transitions=session_builder.outputs["transitions"],
      baseline_model=latest_blessed_model.outputs["model"],
      past_evaluations=past_evaluations.outputs["evaluations"],
      # The YAML itself, not its path: the cache then knows when the gate changed.
      gate_config=release_gate.GateConfig.load(config.gate_config).to_yaml(),
      simulator_users=config.simulator_users,
      tradeoffs=(json.dumps(dataclasses.asdict(config.tradeoffs)) if config.search_tradeoffs
                 else ""),
      validation_fraction=config.model.ranker.validation_fraction)
  infra_validation = infra_validator.ServingInfraValidator(
      model=model_trainer.outputs["model"],
      transform_graph=transform.outputs["transform_graph"],
      model_name=config.model_name,
      latency_budget_ms=config.serving_latency_budget_ms)
  # The stock Pusher pushes only with both blessings; its executor is swapped for an atomic,
  # versioned, labelled push (components/pusher.py).
  pusher = tfx_components.Pusher(
      model=model_trainer.outputs["model"],
      model_blessing=evaluator.outputs["blessing"],
      infra_blessing=infra_validation.outputs["blessing"],
      push_destination=pusher_pb2.PushDestination(
          filesystem=pusher_pb2.PushDestination.Filesystem(
              base_directory=f"{paths.serving_root}/{config.model_name}")),
      custom_config={pusher_lib.VERSIONS_KEPT_KEY: config.serving_versions_kept,
                     pusher_lib.LABEL_DELAY_KEY: config.serving_label_delay_seconds,
                     pusher_lib.REQUEST_LOG_SAMPLING_RATE_KEY: (
                         config.serving_request_log.sampling_rate
                         if config.serving_request_log.enabled else None)},
      custom_executor_spec=pusher_lib.EXECUTOR_SPEC)

  return tfx_pipeline.Pipeline(
      pipeline_name=config.pipeline_name,
      pipeline_root=paths.pipeline_root,
      components=[example_gen, statistics_gen, events_schema, example_validator, data_gate,
                  accepted_runs, drift_gate, session_builder, transitions_schema, transform,
                  model_trainer, latest_blessed_model, past_evaluations, evaluator,
                  infra_validation, pusher],
      enable_cache=config.enable_cache,
      metadata_connection_config=metadata_connection_config,
      beam_pipeline_args=list(config.beam_pipeline_args))
