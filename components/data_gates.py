"""Thin TFX wrappers around the data gates; the logic lives in components/data/validation.py.

`DataValidationGate` stops the run on any anomaly ExampleValidator found; `DriftGate` stops it
when the span drifted from the last accepted one; `SkewGate` reports (or, when told, stops on)
skew between the served model's logged requests and the training data
(components/data/skew.py).
"""
import logging
import os
from typing import List, Optional

from tfx.components.schema_gen import executor as schema_gen_executor
from tfx.components.statistics_gen import stats_artifact_utils
from tfx.dsl.component.experimental import annotations
from tfx.dsl.component.experimental.decorators import component
from tfx.types import artifact_utils
from tfx.types import standard_artifacts
from tfx.utils import io_utils

from components import artifact_properties
from components.data import sessions
from components.data import skew as skew_lib
from components.data import validation as data_validation
from components.data.config import SkewConfig

# SkewGate's one output split: the logged requests, judged against the training split.
SKEW_SPLIT = "serving"


@component
def DataValidationGate(
    anomalies: annotations.InputArtifact[standard_artifacts.ExampleAnomalies],
) -> None:
  """Fails the run when ExampleValidator found any anomaly in any split."""
  splits = artifact_utils.decode_split_names(anomalies.split_names)
  data_validation.check_split_anomalies(anomalies, splits)


def accepted_baseline(accepted) -> Optional[standard_artifacts.ExampleStatistics]:
  """The statistics the newest accepted run was judged on, from its SessionBuilder output.

  Only runs whose data passed every check (both gates, and the split check after the sessions
  are built) publish SessionBuilder's examples, so data a check stopped never becomes the
  baseline: after a rejected feed, the next run is compared with the last good one.
  """
  if not accepted:
    return None
  newest = max(accepted, key=lambda artifact: artifact.id)
  baseline = standard_artifacts.ExampleStatistics()
  baseline.uri = newest.get_string_custom_property(artifact_properties.STATISTICS_URI)
  baseline.split_names = newest.get_string_custom_property(
      artifact_properties.STATISTICS_SPLIT_NAMES)
  return baseline


@component
def DriftGate(
    statistics: annotations.InputArtifact[standard_artifacts.ExampleStatistics],
    schema: annotations.InputArtifact[standard_artifacts.Schema],
    drift: annotations.OutputArtifact[standard_artifacts.ExampleAnomalies],
    accepted: annotations.InputArtifact[List[standard_artifacts.Examples]] = None,
    allow_drift: annotations.Parameter[int] = 0,
) -> None:
  """Fails the run when its data drifted from the last accepted run's, unless allow_drift is set.

  `accepted` are earlier runs' SessionBuilder examples (a resolver's output); each records the
  statistics its data passed, the newest of which is the baseline. The first run has none and passes.
  The findings are written as TFDV anomalies, one `SchemaDiff.pb` per split as ExampleValidator
  writes them; an override is recorded both as this execution's `allow_drift` property and as
  the output's `drift_overridden` property in ML Metadata.
  """
  drift.split_names = statistics.split_names
  baseline = accepted_baseline(accepted)
  detected = []
  if baseline is not None:
    drift.set_string_custom_property(artifact_properties.BASELINE_STATISTICS_URI, baseline.uri)
    curated = data_validation.load_schema(
        os.path.join(schema.uri, schema_gen_executor.DEFAULT_FILE_NAME))
    for split in artifact_utils.decode_split_names(statistics.split_names):
      found = data_validation.drift_anomalies(
          stats_artifact_utils.load_statistics(statistics, split).proto(),
          stats_artifact_utils.load_statistics(baseline, split).proto(), curated)
      io_utils.write_bytes_file(
          os.path.join(drift.uri, f"Split-{split}", data_validation.ANOMALIES_FILE),
          found.SerializeToString())
      detected += [f"[{split}] {message}" for message in data_validation.anomaly_messages(found)]
  drift.set_string_custom_property(artifact_properties.STATISTICS_URI, statistics.uri)
  drift.set_int_custom_property(artifact_properties.DRIFT_DETECTED, int(bool(detected)))
  drift.set_int_custom_property(artifact_properties.DRIFT_OVERRIDDEN,
                               int(bool(detected and allow_drift)))
  if detected and allow_drift:
    logging.warning("Drift from the last accepted data overridden by allow_drift:\n  %s",
                    "\n  ".join(detected))
  elif detected:
    raise data_validation.DataDriftError(
        "The data drifted from the last accepted run's data beyond the thresholds in "
        "schemas/events/schema.pbtxt; the run stops before the model is trained. If the change "
        "is expected, re-run with --allow-drift (the override is recorded in ML Metadata):\n  "
        + "\n  ".join(detected))


def record_skew(output, check: skew_lib.SkewCheck, report: str) -> None:
  """Writes what the skew check found into SkewGate's output.

  Its one split, `serving`, holds the anomalies as `SchemaDiff.pb` (as ExampleValidator writes
  them, with every measured distance in `drift_skew_info`) and both sides' statistics; the
  properties hold the line the run prints. A skipped check writes no files.
  """
  output.split_names = artifact_utils.encode_split_names([SKEW_SPLIT])
  output.set_string_custom_property(artifact_properties.SKEW_REPORT, report)
  output.set_int_custom_property(artifact_properties.SKEW_DETECTED, int(check.skewed))
  output.set_int_custom_property(artifact_properties.SKEW_REQUESTS, check.requests)
  if check.anomalies is None:
    return
  split_dir = os.path.join(output.uri, f"Split-{SKEW_SPLIT}")
  for name, message in ((data_validation.ANOMALIES_FILE, check.anomalies),
                        (skew_lib.TRAINING_STATISTICS_FILE, check.training_statistics),
                        (skew_lib.SERVING_STATISTICS_FILE, check.serving_statistics)):
    io_utils.write_bytes_file(os.path.join(split_dir, name), message.SerializeToString())


@component
def SkewGate(
    transitions: annotations.InputArtifact[standard_artifacts.Examples],
    schema: annotations.InputArtifact[standard_artifacts.Schema],
    skew: annotations.OutputArtifact[standard_artifacts.ExampleAnomalies],
    request_log_prefix: annotations.Parameter[str],
    stop: annotations.Parameter[int] = int(SkewConfig.stop),
    min_requests: annotations.Parameter[int] = SkewConfig.min_requests,
    window_days: annotations.Parameter[float] = SkewConfig.window_days,
) -> None:
  """Compares the requests logged under `request_log_prefix` with the training transitions.

  Skew beyond schemas/serving/skew.pbtxt's thresholds is reported, or, with `stop`, fails the run
  before the model is trained, so the Pusher never runs and the served version keeps serving.
  """
  check = skew_lib.check_serving_skew(
      os.path.join(artifact_utils.get_split_uri([transitions], sessions.TRAIN_SPLIT), "*"),
      request_log_prefix,
      data_validation.load_schema(os.path.join(schema.uri, schema_gen_executor.DEFAULT_FILE_NAME)),
      SkewConfig(stop=bool(stop), min_requests=min_requests, window_days=window_days))
  report = skew_lib.judge(check, bool(stop))
  logging.info(report)
  record_skew(skew, check, report)
