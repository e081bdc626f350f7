"""Thin TFX wrappers around the data and model gates; the logic lives in plain modules."""
import json
import logging
import os
from typing import List, Optional

import tensorflow_transform as tft
from tfx import v1 as tfx
from tfx.components.evaluator import constants as evaluator_constants
from tfx.components.schema_gen import executor as schema_gen_executor
from tfx.components.statistics_gen import stats_artifact_utils
from tfx.dsl.component.experimental.decorators import component
from tfx.types import artifact_utils
from tfx.utils import io_utils
from tfx.utils import path_utils

from components import candidate_evaluation
from components import data_validation
from components import features
from components import model_evaluation
from components import release_gate
from components import schema as schema_lib
from serving import infra_validation
from serving import signature

# Custom properties of DriftGate's output: what it found and whether a person overrode it.
DRIFT_DETECTED = "drift_detected"
DRIFT_OVERRIDDEN = "drift_overridden"
STATISTICS_URI = "statistics_uri"  # the statistics this run was judged on
BASELINE_STATISTICS_URI = "baseline_statistics_uri"
# Custom property of ModelEvaluator's evaluation: whether the gate blessed the model it judged.
BLESSED = "blessed"
# What TFX's InfraValidator writes into an InfraBlessing (private names in its executor), with
# the `blessed` custom property; the stock Pusher reads the property.
INFRA_BLESSED_FILE = "INFRA_BLESSED"
INFRA_NOT_BLESSED_FILE = "INFRA_NOT_BLESSED"
INFRA_REPORT_FILE = "infra_validation.json"
INFRA_REASON = "infra_validation"  # custom property: the one-line outcome
# ModelEvaluator's verdict on a model it already blessed (a cached Trainer output).
UNCHANGED = "unchanged: the candidate is the latest blessed model itself, already pushed"


@component
def DataValidationGate(
    anomalies: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ExampleAnomalies],
) -> None:
  """Fails the run when ExampleValidator found any anomaly in any split."""
  splits = artifact_utils.decode_split_names(anomalies.split_names)
  data_validation.check_split_anomalies(anomalies, splits)


class RecentArtifactsStrategy(tfx.dsl.experimental.ResolverStrategy):
  """Up to `limit` newest artifacts of each channel, however few exist.

  TFX's LatestArtifactStrategy resolves nothing unless all it asks for exist, and a first run
  has no earlier artifacts at all. With `flag`, only artifacts whose int custom property of
  that name is 1 count.
  """

  def __init__(self, limit: int, flag: str = ""):
    self._limit = limit
    self._flag = flag

  def resolve_artifacts(self, store, input_dict):
    del store  # the channels' artifacts are all it needs
    return {key: sorted((artifact for artifact in artifacts
                         if not self._flag or artifact.get_int_custom_property(self._flag) == 1),
                        key=lambda artifact: artifact.id, reverse=True)[:self._limit]
            for key, artifacts in input_dict.items()}


def accepted_baseline(accepted) -> Optional[tfx.types.standard_artifacts.ExampleStatistics]:
  """The statistics the newest accepted run was judged on, from its DriftGate output.

  Only runs that passed both gates publish a drift artifact, so data a gate stopped never
  becomes the baseline: after a rejected feed, the next run is compared with the last good one.
  """
  if not accepted:
    return None
  newest = max(accepted, key=lambda artifact: artifact.id)
  baseline = tfx.types.standard_artifacts.ExampleStatistics()
  baseline.uri = newest.get_string_custom_property(STATISTICS_URI)
  baseline.split_names = newest.split_names
  return baseline


@component
def DriftGate(
    statistics: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ExampleStatistics],
    schema: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Schema],
    drift: tfx.dsl.components.OutputArtifact[tfx.types.standard_artifacts.ExampleAnomalies],
    accepted: tfx.dsl.components.InputArtifact[
        List[tfx.types.standard_artifacts.ExampleAnomalies]] = None,
    allow_drift: tfx.dsl.components.Parameter[int] = 0,
) -> None:
  """Fails the run when its data drifted from the last accepted run's, unless allow_drift is set.

  `accepted` are earlier runs' outputs of this gate (a resolver's output); each records the
  statistics it passed, the newest of which is the baseline. The first run has none and passes.
  The findings are written as TFDV anomalies, one `SchemaDiff.pb` per split as ExampleValidator
  writes them; an override is recorded both as this execution's `allow_drift` property and as
  the output's `drift_overridden` property in ML Metadata.
  """
  drift.split_names = statistics.split_names
  baseline = accepted_baseline(accepted)
  detected = []
  if baseline is not None:
    drift.set_string_custom_property(BASELINE_STATISTICS_URI, baseline.uri)
    curated = schema_lib.load_schema(
        os.path.join(schema.uri, schema_gen_executor.DEFAULT_FILE_NAME))
    for split in artifact_utils.decode_split_names(statistics.split_names):
      found = data_validation.drift_anomalies(
          stats_artifact_utils.load_statistics(statistics, split).proto(),
          stats_artifact_utils.load_statistics(baseline, split).proto(), curated)
      io_utils.write_bytes_file(
          os.path.join(drift.uri, f"Split-{split}", data_validation.ANOMALIES_FILE),
          found.SerializeToString())
      detected += [f"[{split}] {message}" for message in data_validation.anomaly_messages(found)]
  drift.set_string_custom_property(STATISTICS_URI, statistics.uri)
  drift.set_int_custom_property(DRIFT_DETECTED, int(bool(detected)))
  drift.set_int_custom_property(DRIFT_OVERRIDDEN, int(bool(detected and allow_drift)))
  if detected and allow_drift:
    logging.warning("Drift from the last accepted data overridden by allow_drift:\n  %s",
                    "\n  ".join(detected))
  elif detected:
    raise data_validation.DataDriftError(
        "The data drifted from the last accepted run's data beyond the thresholds in "
        "schemas/events/schema.pbtxt; the run stops before the model is trained. If the change "
        "is expected, re-run with --allow-drift (the override is recorded in ML Metadata):\n  "
        + "\n  ".join(detected))


@component
def ModelEvaluator(
    model: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Model],
    examples: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Examples],
    transitions: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Examples],
    evaluation: tfx.dsl.components.OutputArtifact[tfx.types.standard_artifacts.ModelEvaluation],
    blessing: tfx.dsl.components.OutputArtifact[tfx.types.standard_artifacts.ModelBlessing],
    baseline_model: tfx.dsl.components.InputArtifact[
        tfx.types.standard_artifacts.Model] = None,
    past_evaluations: tfx.dsl.components.InputArtifact[
        List[tfx.types.standard_artifacts.ModelEvaluation]] = None,
    gate_config: tfx.dsl.components.Parameter[str] = "",
    simulator_sessions: tfx.dsl.components.Parameter[int] = 0,
) -> None:
  """Evaluates the candidate and the baseline model and blesses the candidate or not.

  `baseline_model` is the latest blessed model (a resolver with LatestBlessedModelStrategy);
  `past_evaluations` are earlier blessed evaluations, plotted in the report. The logic is
  components/candidate_evaluation.py; `gate_config` is the YAML of schemas/gate/gate.yaml. The
  blessing carries the stock Evaluator's custom properties (`blessed`, `current_model`,
  `current_model_id`), so the stock Pusher and LatestBlessedModelStrategy read it.
  """
  gate = release_gate.GateConfig.from_yaml(gate_config, source="the gate_config parameter")
  if baseline_model is not None and baseline_model.id == model.id:
    # The Trainer's output was reused from the cache: this model is the latest blessed one and
    # is already pushed. Pushing it again would only make TF Serving load a copy.
    _bless(blessing, model, False, UNCHANGED)
    evaluation.set_int_custom_property(BLESSED, 0)
    return
  data = model_evaluation.load_eval_data(examples.uri, transitions.uri)
  past_models = [{"name": f"evaluation {past.id}",
                  "metrics": candidate_evaluation.read(past.uri)["candidate"]["metrics"]}
                 for past in sorted(past_evaluations or [], key=lambda artifact: artifact.id)]
  result = candidate_evaluation.evaluate_candidate(
      _serving_dir(model), _serving_dir(baseline_model) if baseline_model else None, data, gate,
      model_evaluation.EvaluationConfig(simulator_sessions=simulator_sessions), past_models)
  candidate_evaluation.write(result, evaluation.uri)
  (logging.info if result.verdict.blessed else logging.warning)("Model %s", result.verdict.reason)
  evaluation.set_int_custom_property(BLESSED, int(result.verdict.blessed))
  _bless(blessing, model, result.verdict.blessed, result.verdict.reason)


def _serving_dir(model: tfx.types.standard_artifacts.Model) -> str:
  return path_utils.serving_model_path(model.uri)


def _bless(blessing, model, blessed: bool, reason: str) -> None:
  """Writes the blessing as TFX's Evaluator does: a marker file and custom properties."""
  blessing.set_string_custom_property(
      evaluator_constants.ARTIFACT_PROPERTY_CURRENT_MODEL_URI_KEY, model.uri)
  blessing.set_int_custom_property(
      evaluator_constants.ARTIFACT_PROPERTY_CURRENT_MODEL_ID_KEY, model.id)
  blessing.set_string_custom_property(
      evaluator_constants.ARTIFACT_PROPERTY_BLESSING_MESSAGE_KEY, reason)
  if blessed:
    marker, value = evaluator_constants.BLESSED_FILE_NAME, evaluator_constants.BLESSED_VALUE
  else:
    marker, value = evaluator_constants.NOT_BLESSED_FILE_NAME, evaluator_constants.NOT_BLESSED_VALUE
  io_utils.write_string_file(os.path.join(blessing.uri, marker), "")
  blessing.set_int_custom_property(evaluator_constants.ARTIFACT_PROPERTY_BLESSED_KEY, value)


@component
def ServingInfraValidator(
    model: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Model],
    transform_graph: tfx.dsl.components.InputArtifact[
        tfx.types.standard_artifacts.TransformGraph],
    blessing: tfx.dsl.components.OutputArtifact[tfx.types.standard_artifacts.InfraBlessing],
    model_name: tfx.dsl.components.Parameter[str] = signature.DEFAULT_MODEL_NAME,
    latency_budget_ms: tfx.dsl.components.Parameter[float] = (
        infra_validation.InfraValidationConfig.latency_budget_ms),
) -> None:
  """Blesses the model as servable, or not: serving/infra_validation.py loads it in an isolated
  serving process and sends its warmup requests.

  The InfraBlessing carries what TFX's InfraValidator writes (the `blessed` custom property and
  an INFRA_BLESSED / INFRA_NOT_BLESSED marker file), so the stock Pusher reads it.
  """
  catalog = set(tft.TFTransformOutput(transform_graph.uri).vocabulary_by_name(features.ITEM_ID))
  report = infra_validation.validate(
      _serving_dir(model), {item.decode() for item in catalog}, model_name,
      infra_validation.InfraValidationConfig(latency_budget_ms=latency_budget_ms))
  (logging.info if report.passed else logging.warning)("Infra validation: %s", report.reason)
  io_utils.write_string_file(os.path.join(blessing.uri, INFRA_REPORT_FILE),
                             json.dumps(report.to_dict(), indent=2))
  marker = INFRA_BLESSED_FILE if report.passed else INFRA_NOT_BLESSED_FILE
  io_utils.write_string_file(os.path.join(blessing.uri, marker), "")
  blessing.set_int_custom_property(BLESSED, int(report.passed))
  blessing.set_string_custom_property(INFRA_REASON, report.reason)
