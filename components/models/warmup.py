"""Warmup requests stored in the SavedModel, in TensorFlow Serving's format.

TF Serving replays `assets.extra/tf_serving_warmup_requests` (a TFRecord file of `PredictionLog`
protos) when it loads a version and before it marks it AVAILABLE, so the first real requests do
not pay for graph initialisation and lazily allocated memory. The local server replays the same
file, and the infra validation step sends the same requests: one set of representative requests,
written once, at export.

The requests cover what clients send (serving/client.py: histories at the fixed width
contract.HISTORY_LENGTH): a known user with a history, a user the model has never seen with an
empty history (the cold-start path), and a batch mixing both.
"""
import os
from typing import List, Sequence

import tensorflow as tf
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_log_pb2

from components.models import queries
from schemas import contract

# TF Serving's fixed location, relative to the SavedModel directory.
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
# TF Serving reads at most 1000 warmup records; ours stay far below.
MAX_WARMUP_RECORDS = 1000
# An id no training data uses: exercises the out-of-vocabulary (cold-start) embedding.
UNKNOWN_USER = "__warmup_unknown_user__"
_A_MONDAY_NOON = 1_700_481_600  # 2023-11-20 12:00 UTC


def representative_requests(known_users: Sequence[str], item_ids: Sequence[str],
                            model_name: str = contract.DEFAULT_MODEL_NAME,
                            history_length: int = contract.HISTORY_LENGTH
                            ) -> List[predict_pb2.PredictRequest]:
  """Requests of the shapes clients send, built from ids the model knows.

  Args:
    known_users: Some user ids of the training data (at least one).
    item_ids: Some catalog item ids (at least one), used as histories.
    model_name: The model name TF Serving serves the model under.
    history_length: The longest history to send.
  """
  if not known_users or not item_ids:
    raise ValueError("warmup requests need at least one known user and one item id, got "
                     f"{len(known_users)} users and {len(item_ids)} items")
  history = [item_ids[index % len(item_ids)] for index in range(history_length)]
  batch_users = [known_users[index % len(known_users)] for index in range(7)] + [UNKNOWN_USER]
  batch_histories = [history[:index % (history_length + 1)] for index in range(8)]
  # Known and unknown times alike: the graph takes both paths.
  batch_times = [contract.UNKNOWN_TIME if index % 2 else _A_MONDAY_NOON + index * 3600
                 for index in range(8)]
  return [queries.predict_request(users, histories, model_name,
                                  history_width=contract.HISTORY_LENGTH, timestamps=times)
          for users, histories, times in (
              ([known_users[0]], [history], [_A_MONDAY_NOON]),
              ([UNKNOWN_USER], [[]], [contract.UNKNOWN_TIME]),
              (batch_users, batch_histories, batch_times))]


def write(model_dir: os.PathLike, requests: Sequence[predict_pb2.PredictRequest]) -> str:
  """Writes the requests into the SavedModel's warmup file; returns its path."""
  if not 0 < len(requests) <= MAX_WARMUP_RECORDS:
    raise ValueError(f"TF Serving replays 1 to {MAX_WARMUP_RECORDS} warmup requests, "
                     f"got {len(requests)}")
  path = os.path.join(os.fspath(model_dir), WARMUP_FILE)
  tf.io.gfile.makedirs(os.path.dirname(path))
  with tf.io.TFRecordWriter(path) as writer:
    for request in requests:
      log = prediction_log_pb2.PredictionLog(
          predict_log=prediction_log_pb2.PredictLog(request=request))
      writer.write(log.SerializeToString())
  return path


def read(model_dir: os.PathLike) -> List[predict_pb2.PredictRequest]:
  """The warmup Predict requests of a SavedModel; none if it has no warmup file."""
  path = os.path.join(os.fspath(model_dir), WARMUP_FILE)
  if not tf.io.gfile.exists(path):
    return []
  requests = []
  for index, record in enumerate(tf.data.TFRecordDataset(path).as_numpy_iterator()):
    log = prediction_log_pb2.PredictionLog.FromString(record)
    if not log.HasField("predict_log"):
      raise ValueError(f"{path}: record {index} is a {log.WhichOneof('log_type')}, "
                       "not a predict_log; this model only serves Predict")
    requests.append(log.predict_log.request)
  return requests
