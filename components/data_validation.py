"""Turns TensorFlow Data Validation anomalies into a stop with a readable reason.

TFX's ExampleValidator records anomalies but lets the run go on; training on data that breaks the
schema must not happen, so the pipeline stops here and says which feature and what is wrong.
"""
from typing import List, Sequence

from tensorflow_data_validation.utils import anomalies_util
from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx.types import artifact_utils

ANOMALIES_FILE = "SchemaDiff.pb"


class DataValidationError(RuntimeError):
  """The data break the curated schema; the message lists every anomaly."""


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
        "The input data do not match the schema (schemas/schema.pbtxt); the run stops before "
        "Transform:\n  " + "\n  ".join(problems))
