"""The data gate (TFDV anomalies stop the run) and the resolver strategy the gates use."""

import pytest
from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx.types import artifact_utils
from tfx.types import standard_artifacts

from components import artifact_properties
from components import resolvers
from components.data import validation as data_validation


def _anomalies(**feature_problems) -> anomalies_pb2.Anomalies:
  anomalies = anomalies_pb2.Anomalies()
  for feature, description in feature_problems.items():
    info = anomalies.anomaly_info[feature]
    info.reason.add(description=description)
  return anomalies


def test_anomaly_messages_name_feature_and_problem():
  messages = data_validation.anomaly_messages(
      _anomalies(price="Unexpectedly low values: -9.5<0", event="Unexpected string values: buy"))
  assert messages == ["feature 'event': Unexpected string values: buy",
                      "feature 'price': Unexpectedly low values: -9.5<0"]


def _anomalies_artifact(tmp_path, per_split):
  artifact = standard_artifacts.ExampleAnomalies()
  artifact.uri = str(tmp_path)
  artifact.split_names = artifact_utils.encode_split_names(list(per_split))
  for split, anomalies in per_split.items():
    split_dir = tmp_path / f"Split-{split}"
    split_dir.mkdir()
    (split_dir / data_validation.ANOMALIES_FILE).write_bytes(anomalies.SerializeToString())
  return artifact


def test_clean_splits_pass(tmp_path):
  artifact = _anomalies_artifact(tmp_path, {"train": _anomalies(), "eval": _anomalies()})
  data_validation.check_split_anomalies(artifact, ["train", "eval"])


def test_any_anomaly_stops_with_split_and_feature(tmp_path):
  artifact = _anomalies_artifact(
      tmp_path, {"train": _anomalies(), "eval": _anomalies(timestamp="Out-of-range values")})
  with pytest.raises(data_validation.DataValidationError,
                     match=r"\[eval\] feature 'timestamp': Out-of-range values"):
    data_validation.check_split_anomalies(artifact, ["train", "eval"])


def _evaluation(artifact_id, blessed=None):
  artifact = standard_artifacts.ModelEvaluation()
  artifact.id = artifact_id
  if blessed is not None:
    artifact.set_int_custom_property(artifact_properties.BLESSED, blessed)
  return artifact


def test_recent_artifacts_strategy_keeps_the_newest_and_filters_by_flag():
  artifacts = [_evaluation(3, 1), _evaluation(7, 0), _evaluation(5, 1), _evaluation(9),
               _evaluation(8, 1)]
  newest = resolvers.RecentArtifactsStrategy(limit=2).resolve_artifacts(None, {"a": artifacts})
  assert [artifact.id for artifact in newest["a"]] == [9, 8]
  blessed = resolvers.RecentArtifactsStrategy(
      limit=2, flag=artifact_properties.BLESSED).resolve_artifacts(None, {"a": artifacts})
  assert [artifact.id for artifact in blessed["a"]] == [8, 5]
  assert resolvers.RecentArtifactsStrategy(limit=2).resolve_artifacts(None, {"a": []}) == {"a": []}
