"""The data gate (TFDV anomalies stop the run) and the model gate (recall@K floor)."""

import pytest
import tensorflow as tf
from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx.types import artifact_utils
from tfx.types import standard_artifacts

from components import data_validation
from components import retrieval_evaluation


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


def test_judge_recall_blesses_at_the_floor_and_refuses_below():
  assert retrieval_evaluation.judge_recall({"recall@10": 0.2}, 10, 0.2).blessed
  verdict = retrieval_evaluation.judge_recall({"recall@10": 0.15}, 10, 0.2)
  assert not verdict.blessed
  assert verdict.reason == "recall@10 = 0.1500 is below the floor 0.2000 by 0.0500"


class _FixedRanker(tf.Module):
  """Recommends b, a, c to everyone."""

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string),
                                tf.TensorSpec([None, None], tf.string)])
  def serve(self, user_id, history):
    batch = tf.shape(user_id)[0]
    return {"item_ids": tf.tile(tf.constant([["b", "a", "c"]]), [batch, 1]),
            "scores": tf.tile(tf.constant([[3.0, 2.0, 1.0]]), [batch, 1])}


def _write_events(split_dir, items):
  split_dir.mkdir(parents=True)
  with tf.io.TFRecordWriter(str(split_dir / "data.gz"), options="GZIP") as writer:
    for index, item in enumerate(items):
      feature = lambda *values: tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
      writer.write(tf.train.Example(features=tf.train.Features(feature={
          "user_id": feature(f"u{index}".encode()), "item_id": feature(item.encode()),
          "history": feature(*([b"a"] * index)),
      })).SerializeToString())


def test_recall_at_k_counts_items_in_the_served_top_k(tmp_path):
  model_dir = str(tmp_path / "model")
  module = _FixedRanker()
  tf.saved_model.save(module, model_dir,
                      signatures={"serving_default": module.serve.get_concrete_function()})
  _write_events(tmp_path / "Split-eval", ["a", "c", "z", "b"])
  events = lambda: retrieval_evaluation.read_events(str(tmp_path / "Split-eval"), batch_size=3)
  assert retrieval_evaluation.recall_at_k(model_dir, events(), k=2) == {
      "recall@2": 0.5, "num_events": 4}
  assert retrieval_evaluation.recall_at_k(model_dir, events(), k=3)["recall@3"] == 0.75
  with pytest.raises(ValueError, match="recall@5 needs at least 5"):
    retrieval_evaluation.recall_at_k(model_dir, events(), k=5)


def test_read_events_without_files_names_the_directory(tmp_path):
  with pytest.raises(FileNotFoundError, match=str(tmp_path)):
    next(retrieval_evaluation.read_events(str(tmp_path)))
