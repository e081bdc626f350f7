"""Turns TensorFlow Data Validation anomalies and drift into a stop with a readable reason.

TFX's ExampleValidator records anomalies but lets the run go on; training on data that breaks the
schema must not happen, so the pipeline stops here and says which feature and what is wrong.
Drift is judged the same way: TFDV compares a span's statistics with the previous span's using the
drift comparators and thresholds of the curated schema (schemas/events/schema.pbtxt).
"""
import os
from typing import List, Sequence

import tensorflow_data_validation as tfdv
from tensorflow_data_validation.utils import anomalies_util
from tensorflow_metadata.proto.v0 import anomalies_pb2
from tensorflow_metadata.proto.v0 import schema_pb2
from tensorflow_metadata.proto.v0 import statistics_pb2
from tfx.types import artifact_utils
from tfx.utils import io_utils

ANOMALIES_FILE = "SchemaDiff.pb"


def load_schema(path: os.PathLike) -> schema_pb2.Schema:
  """A schema in text format, local or on an object store (an artifact's URI on a cluster)."""
  return io_utils.parse_pbtxt_file(str(path), schema_pb2.Schema())


_DRIFT_TYPES = frozenset((
    anomalies_pb2.AnomalyInfo.COMPARATOR_L_INFTY_HIGH,
    anomalies_pb2.AnomalyInfo.COMPARATOR_JENSEN_SHANNON_DIVERGENCE_HIGH,
    anomalies_pb2.AnomalyInfo.COMPARATOR_NORMALIZED_ABSOLUTE_DIFFERENCE_HIGH,
))


class DataValidationError(RuntimeError):
  """The data break the curated schema; the message lists every anomaly."""


class DataDriftError(DataValidationError):
  """A span's distributions moved past the schema's drift thresholds since the previous span."""


def anomaly_messages(anomalies: anomalies_pb2.Anomalies) -> List[str]:
  messages = []
  for feature, info in sorted(anomalies.anomaly_info.items()):
    descriptions = [reason.description for reason in info.reason] or [info.description]
    messages.append(f"feature '{feature}': {'; '.join(descriptions)}")
  for reason in anomalies.dataset_anomaly_info.reason:
    messages.append(f"dataset: {reason.description}")
  return messages


def check_split_anomalies(anomalies_artifact, splits: Sequence[str]) -> None:
  """Raises DataValidationError naming each split, feature and problem found by TFDV."""
  problems = []
  for split in splits:
    split_uri = artifact_utils.get_split_uri([anomalies_artifact], split)
    anomalies = anomalies_util.load_anomalies_binary(f"{split_uri}/{ANOMALIES_FILE}")
    problems += [f"[{split}] {message}" for message in anomaly_messages(anomalies)]
  if problems:
    raise DataValidationError(
        "The input data do not match the schema (schemas/events/schema.pbtxt); the run stops "
        "before sessions are built and the model is trained:\n  " + "\n  ".join(problems))


def drift_anomalies(statistics: statistics_pb2.DatasetFeatureStatisticsList,
                    baseline: statistics_pb2.DatasetFeatureStatisticsList,
                    schema: schema_pb2.Schema) -> anomalies_pb2.Anomalies:
  """TFDV's comparison of statistics with the baseline's, keeping only drift findings.

  Schema violations are ExampleValidator's to report; here they would only repeat.
  """
  anomalies = tfdv.validate_statistics(statistics, schema, previous_statistics=baseline)
  drift = anomalies_pb2.Anomalies()
  drift.CopyFrom(anomalies)
  drift.ClearField("anomaly_info")
  for feature, info in anomalies.anomaly_info.items():
    reasons = [reason for reason in info.reason if reason.type in _DRIFT_TYPES]
    if reasons:
      drift.anomaly_info[feature].CopyFrom(info)
      del drift.anomaly_info[feature].reason[:]
      drift.anomaly_info[feature].reason.extend(reasons)
  drift.ClearField("dataset_anomaly_info")
  return drift

