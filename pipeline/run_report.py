"""What pipeline runs did: one line for the person who started one, and their evaluations."""
import dataclasses
import pathlib
from typing import List, Optional, Set, Tuple

from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2
from tfx.components.evaluator import constants as evaluator_constants
from tfx.orchestration import metadata
from tfx.types import standard_artifacts

from components import artifact_properties
from components.evaluation import candidate_evaluation
from pipeline.configs import PipelineConfig
from serving import model_config
from serving import push

_EVALUATOR_ID = "ModelEvaluator"


def pushed_versions(config: PipelineConfig) -> Set[str]:
  """The versions under the model's serving path (serving/push.py)."""
  return {str(version) for version in push.versions(config.model_base_path)}


def stable_version(config: PipelineConfig) -> Optional[str]:
  """The version labelled stable in the serving root's models.config, if any."""
  version = model_config.read_labels(config.serving_root, config.model_name).get(
      model_config.STABLE)
  return None if version is None else str(version)


def _store(config: PipelineConfig) -> metadata_store.MetadataStore:
  return metadata_store.MetadataStore(
      metadata.sqlite_metadata_connection_config(str(config.metadata_path)))


def _newest_verdict(config: PipelineConfig, artifact_type, reason_key: str,
                    none_found: str) -> Tuple[bool, str]:
  """(blessed, reason) of the newest artifact of a blessing type in ML Metadata.

  ModelBlessing and InfraBlessing both record the verdict as the int custom property
  `blessed` (1 when blessed), each with its own reason property.
  """
  artifacts = _store(config).get_artifacts_by_type(artifact_type.TYPE_NAME)
  if not artifacts:
    return False, none_found
  newest = max(artifacts, key=lambda artifact: artifact.id)
  blessed = newest.custom_properties.get(evaluator_constants.ARTIFACT_PROPERTY_BLESSED_KEY)
  reason = newest.custom_properties.get(reason_key)
  return (bool(blessed and blessed.int_value == evaluator_constants.BLESSED_VALUE),
          reason.string_value if reason else "no reason recorded")


def latest_blessing(config: PipelineConfig) -> Tuple[bool, str]:
  """Whether the newest ModelBlessing blessed its model, and the release gate's reason."""
  return _newest_verdict(config, standard_artifacts.ModelBlessing,
                         evaluator_constants.ARTIFACT_PROPERTY_BLESSING_MESSAGE_KEY,
                         "no model was evaluated")


def latest_infra_validation(config: PipelineConfig) -> Tuple[bool, str]:
  """Whether the newest InfraBlessing found its model servable, and the one-line outcome."""
  return _newest_verdict(config, standard_artifacts.InfraBlessing,
                         artifact_properties.INFRA_REASON, "no model was infra-validated")


def serving_skew(config: PipelineConfig) -> Optional[str]:
  """The newest SkewGate's line (components/data/skew.py, `judge`): its finding, or why it
  skipped; None before any run checked."""
  artifacts = [artifact for artifact in _store(config).get_artifacts_by_type(
      standard_artifacts.ExampleAnomalies.TYPE_NAME)
               if artifact_properties.SKEW_REPORT in artifact.custom_properties]
  if not artifacts:
    return None
  newest = max(artifacts, key=lambda artifact: artifact.id)
  return newest.custom_properties[artifact_properties.SKEW_REPORT].string_value


def describe(config: PipelineConfig, versions_before: Set[str]) -> str:
  versions = pushed_versions(config)
  new_versions = sorted(versions - versions_before, key=int)
  blessed, reason = latest_blessing(config)
  if new_versions:
    return (f"Model blessed ({reason}); pushed version {new_versions[-1]} "
            f"to {config.model_base_path / new_versions[-1]}")
  servable, infra_reason = latest_infra_validation(config)
  # No new version of a blessed, servable model means the Pusher's inputs were unchanged and TFX
  # reused its earlier execution from the cache; the evaluator says when the model is unchanged.
  if reason == artifact_properties.UNCHANGED or (blessed and servable):
    outcome = f"Inputs unchanged since the last run, nothing new to push ({reason})"
  elif blessed:
    outcome = f"Model blessed ({reason}) but not servable: {infra_reason}"
  else:
    outcome = f"Model not blessed ({reason})"
  return f"{outcome}; {serving_status(config)}"


def serving_status(config: PipelineConfig) -> str:
  """Which version keeps serving after a run that pushed nothing, in words."""
  versions = pushed_versions(config)
  serving = stable_version(config) or (max(versions, key=int) if versions else None)
  if serving:
    return f"version {serving} keeps serving from {config.model_base_path / serving}"
  return "no model is pushed yet"


@dataclasses.dataclass(frozen=True)
class Evaluation:
  run_id: str  # the pipeline run, as ML Metadata names it
  reason: str  # the gate's one-line verdict
  report: Optional[pathlib.Path]  # the HTML report; None when the run reused the last model


def evaluations(config: PipelineConfig) -> List[Evaluation]:
  """Every run's ModelEvaluator outcome, oldest first, read from ML Metadata."""
  if not config.metadata_path.exists():
    return []
  store = _store(config)
  node = store.get_context_by_type_and_name("node", f"{config.pipeline_name}.{_EVALUATOR_ID}")
  if node is None:
    return []
  found = []
  for execution in sorted(store.get_executions_by_context(node.id),
                          key=lambda execution: execution.id):
    if execution.last_known_state not in (metadata_store_pb2.Execution.COMPLETE,
                                          metadata_store_pb2.Execution.CACHED):
      continue
    outputs = {step.key: event.artifact_id
               for event in store.get_events_by_execution_ids([execution.id])
               if event.type == metadata_store_pb2.Event.OUTPUT
               for step in event.path.steps if step.HasField("key")}
    artifacts = {artifact.id: artifact for artifact in store.get_artifacts_by_id(
        [outputs["blessing"], outputs["evaluation"]])}
    blessing, evaluation = artifacts[outputs["blessing"]], artifacts[outputs["evaluation"]]
    report = pathlib.Path(evaluation.uri) / candidate_evaluation.REPORT_FILE
    message = blessing.custom_properties.get(
        evaluator_constants.ARTIFACT_PROPERTY_BLESSING_MESSAGE_KEY)
    runs = [context.name for context in store.get_contexts_by_execution(execution.id)
            if store.get_context_types_by_id([context.type_id])[0].name == "pipeline_run"]
    found.append(Evaluation(run_id=runs[0] if runs else "?",
                            reason=message.string_value if message else "no reason recorded",
                            report=report if report.exists() else None))
  return found
