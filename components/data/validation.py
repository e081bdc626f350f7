"""Turns TensorFlow Data Validation anomalies and drift into a stop with a readable reason.

TFX's ExampleValidator records anomalies but lets the run go on; training on data that breaks the
schema must not happen, so the pipeline stops here and says which feature and what is wrong.
Drift is judged the same way: TFDV compares a span's statistics with the previous span's using the
drift comparators and thresholds of the curated schema (schemas/events/schema.pbtxt), and
training-serving skew by the skew comparators of schemas/serving/skew.pbtxt (skew.py).
"""
import collections
import os
from typing import List, Mapping, Sequence

import tensorflow_data_validation as tfdv
from tensorflow_data_validation.utils import anomalies_util
from tensorflow_metadata.proto.v0 import anomalies_pb2
from tensorflow_metadata.proto.v0 import schema_pb2
from tensorflow_metadata.proto.v0 import statistics_pb2
from tfx.types import artifact_utils
from tfx.utils import io_utils

from components.data import sessions
from components.data.config import GLOBAL_TIME_SPLIT
from components.data.config import SessionConfig

ANOMALIES_FILE = "SchemaDiff.pb"


def load_schema(path: os.PathLike) -> schema_pb2.Schema:
  """A schema in text format, local or on an object store (an artifact's URI on a cluster)."""
  return io_utils.parse_pbtxt_file(str(path), schema_pb2.Schema())


# What TFDV's drift and skew comparators report (the same types serve both).
_COMPARATOR_TYPES = frozenset((
    anomalies_pb2.AnomalyInfo.COMPARATOR_L_INFTY_HIGH,
    anomalies_pb2.AnomalyInfo.COMPARATOR_JENSEN_SHANNON_DIVERGENCE_HIGH,
    anomalies_pb2.AnomalyInfo.COMPARATOR_NORMALIZED_ABSOLUTE_DIFFERENCE_HIGH,
))


class DataValidationError(RuntimeError):
  """The data break the curated schema; the message lists every anomaly."""


class DataDriftError(DataValidationError):
  """A span's distributions moved past the schema's drift thresholds since the previous span."""


class DegenerateSplitError(DataValidationError):
  """The time split leaves nothing to train on or nothing to evaluate on."""


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
  return comparator_findings(
      tfdv.validate_statistics(statistics, schema, previous_statistics=baseline))


def comparator_findings(anomalies: anomalies_pb2.Anomalies) -> anomalies_pb2.Anomalies:
  """The anomalies with only the drift or skew comparators' reasons, and their measurements."""
  found = anomalies_pb2.Anomalies()
  found.CopyFrom(anomalies)
  found.ClearField("anomaly_info")
  for feature, info in anomalies.anomaly_info.items():
    reasons = [reason for reason in info.reason if reason.type in _COMPARATOR_TYPES]
    if reasons:
      found.anomaly_info[feature].CopyFrom(info)
      del found.anomaly_info[feature].reason[:]
      found.anomaly_info[feature].reason.extend(reasons)
  found.ClearField("dataset_anomaly_info")
  return found


def check_split_counts(counts: Mapping[str, int], config: SessionConfig) -> None:
  """Stops the run before Transform when the time split leaves nothing to train or evaluate on.

  `counts` are SessionBuilder's counters (components/data/sessions.py; Beam reports a counter only
  once it was incremented, so an absent one is 0). A runner that reports no counters at all is
  not judged here, and the evaluator's own checks still stand.
  """
  if sessions.SESSIONS not in counts:
    return
  counts = collections.Counter(counts)
  if config.eval_split == GLOBAL_TIME_SPLIT:
    split = (f"the latest {config.eval_fraction:.0%} of the events by time are the evaluation "
             "split, the rest the training split")
  else:
    split = (f"each user's latest {config.eval_fraction:.0%} of engagements by time are the "
             "evaluation split, the rest the training split; users with fewer than two "
             "engagements at different times are all training")
  if counts[sessions.TRAIN_EXAMPLES] == 0:
    raise DegenerateSplitError(
        f"SessionBuilder: the training split holds no engagement ({split}); give data with "
        "engagements before the latest ones")
  if counts[sessions.EVAL_EXAMPLES] == 0:
    raise DegenerateSplitError(
        f"SessionBuilder: the evaluation split holds no engagement ({split}); give data with "
        "engagements among the latest events, or users with more than one")
  if counts[sessions.EVALUABLE_EVAL_EXAMPLES] == 0:
    raise DegenerateSplitError(
        f"SessionBuilder: each of the {counts[sessions.EVAL_EXAMPLES]} engagements of the "
        f"evaluation split ({split}) is with an item already in that user's recent history, so "
        "with seen items removed from the lists there is nothing to evaluate; give data where "
        "users also engage with items new to them")
