"""A gRPC client for the recommender, for the local server and TensorFlow Serving alike.

It speaks only TF Serving's own API through the official stubs, so pointing it at a stock
`tensorflow/serving` instead of `serving.server` changes nothing but the target.

  with RecommenderClient("127.0.0.1:8500") as client:
    client.wait_until_available(timeout=60)
    recommendations = client.recommend("u00042", history=["i00007", "i00013"], k=10)
    for recommendation in recommendations:
      print(recommendation.item_id, recommendation.score)
    print(recommendations.request_id)  # what feedback on these recommendations is reported against
"""
import json
import time
from typing import List, NamedTuple, Optional, Sequence
import uuid

import grpc
import tensorflow as tf
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.apis import model_service_pb2_grpc
from tensorflow_serving.apis import prediction_service_pb2_grpc

from components.models import queries
from schemas import contract
from serving import request_log

# Status codes that mean "not yet" while a server starts: UNAVAILABLE until it listens,
# NOT_FOUND until it has loaded a version, DEADLINE_EXCEEDED while it is too busy loading to answer.
_STARTING_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND,
                   grpc.StatusCode.DEADLINE_EXCEEDED)
_AVAILABLE = get_model_status_pb2.ModelVersionStatus.State.Name(
    get_model_status_pb2.ModelVersionStatus.AVAILABLE)
_POLL_INTERVAL_SECONDS = 0.25
# gRPC's own retries (https://github.com/grpc/proposal/blob/master/A6-client-retries.md): only
# UNAVAILABLE is retried, since the request never reached a model (server restarting, connection
# reset); any other code is an answer. Backoff is exponential with jitter, and every attempt
# counts against the call's one deadline, so retries never make a call outlast its timeout.
RETRY_POLICY = {"maxAttempts": 4, "initialBackoff": "0.1s", "maxBackoff": "1s",
                "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}
_SERVICE_CONFIG = json.dumps({"methodConfig": [{
    "name": [{"service": "tensorflow.serving.PredictionService"},
             {"service": "tensorflow.serving.ModelService"}],
    "retryPolicy": RETRY_POLICY}]})


class Recommendation(NamedTuple):
  item_id: str
  score: float


class Recommendations(list):
  """One user's recommendations, best first, with the request id the server logged them under.

  Feedback on them (what the user clicked, bought) is reported against `request_id`: the server's
  request log holds what was shown under the same id (serving/request_log.py).
  """

  def __init__(self, recommendations: Sequence[Recommendation], request_id: str):
    super().__init__(recommendations)
    self.request_id = request_id


class ModelStatus(NamedTuple):
  version: int
  state: str  # A ModelVersionStatus.State name, e.g. 'AVAILABLE'.


class RecommenderClient:
  """Top-k recommendations over TF Serving's gRPC API; use as a context manager or `close()` it.

  Every RPC has `timeout` seconds, retries included (`RETRY_POLICY`: UNAVAILABLE only). gRPC
  failures propagate as `grpc.RpcError` with TF Serving's status code (e.g. NOT_FOUND for an
  unknown model), so callers can tell them apart. `version_label` (e.g. 'stable', 'canary')
  asks for the version the server's model config labels so; without it the server answers
  with the newest version it serves.
  """

  def __init__(self, target: str = "127.0.0.1:8500",
               model_name: str = contract.DEFAULT_MODEL_NAME, timeout: float = 10.0,
               version_label: Optional[str] = None):
    self.target = target
    self.model_name = model_name
    self.timeout = timeout
    self.version_label = version_label
    self._channel = grpc.insecure_channel(target, options=[
        ("grpc.enable_retries", 1), ("grpc.service_config", _SERVICE_CONFIG)])
    self._predictions = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
    self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)

  def recommend(self, user_id: str, history: Sequence[str] = (), k: int = 10,
                timestamp: Optional[int] = None,
                request_id: Optional[str] = None) -> Recommendations:
    """The best `k` items for one user, best first; `history` is recent item ids, oldest first.

    `timestamp`: when the user asks, in seconds since the epoch; None means now. `request_id`:
    the id to log the request under (printable ASCII, at most 256 characters); None generates
    one. The answer's `request_id` is the id used.
    """
    return self.recommend_batch([user_id], [history], k,
                                None if timestamp is None else [timestamp], request_id)[0]

  def recommend_batch(self, user_ids: Sequence[str], histories: Sequence[Sequence[str]],
                      k: int = 10, timestamps: Optional[Sequence[int]] = None,
                      request_id: Optional[str] = None) -> List[Recommendations]:
    """The best `k` items for each user, in one request; histories may differ in length.

    Only the most recent `contract.HISTORY_LENGTH` items of each history are sent. `timestamps`
    say when each user asks (seconds since the epoch); None means now for all. The request goes
    with `request_id` (None: a new uuid4 hex) as `x-request-id` metadata; each user's answer
    carries the id the server logs that user's row under: `request_id` itself for a single
    user, `<request_id>/<row>` for several (serving/request_log.py, `row_request_ids`).
    """
    if k < 1:
      raise ValueError(f"k must be at least 1, got {k}")
    request_id = request_id or uuid.uuid4().hex
    if timestamps is None:
      timestamps = [int(time.time())] * len(user_ids)
    # The most recent items at a fixed width: what the model reads, in a shape TF Serving batches.
    request = queries.predict_request(
        user_ids, [list(history)[-contract.HISTORY_LENGTH:] for history in histories],
        self.model_name, history_width=contract.HISTORY_LENGTH, timestamps=timestamps)
    if self.version_label:
      request.model_spec.version_label = self.version_label
    # No output_filter: the answer holds every output of the signature, so propensities where it
    # has them (serving_default's contract: item ids, scores and propensities). The server logs
    # the answer as sent, and a slate logged without propensities is left out of the next run's
    # off-policy estimates (components/data/serving_logs.py).
    response = self._predictions.Predict(request, timeout=self.timeout,
                                         metadata=((contract.REQUEST_ID_HEADER, request_id),))

    item_ids = tf.make_ndarray(response.outputs[contract.ITEM_IDS])
    scores = tf.make_ndarray(response.outputs[contract.SCORES])
    # The model's top_k is fixed when it is exported, so k can only be checked against the answer.
    top_k = item_ids.shape[1]
    if k > top_k:
      raise ValueError(f"k={k} is more than the {top_k} items model '{self.model_name}' version "
                       f"{response.model_spec.version.value} returns per user")
    return [Recommendations([Recommendation(item_id.decode(), float(score))
                             for item_id, score in zip(user_items[:k], user_scores[:k])], row_id)
            for user_items, user_scores, row_id in zip(
                item_ids, scores, request_log.row_request_ids(request_id, len(user_ids)))]

  def model_status(self) -> ModelStatus:
    """The served version and its state.

    TF Serving lists every version it knows, e.g. the old one AVAILABLE while a new one is LOADING;
    the newest AVAILABLE version is the one answering requests, so that one is reported, else the
    newest version in whatever state it is.
    """
    return self._model_status(self.timeout)

  def _model_status(self, timeout: float) -> ModelStatus:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = self.model_name
    response = self._models.GetModelStatus(request, timeout=timeout)
    served = max(response.model_version_status, key=lambda status: (
        status.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE, status.version))
    return ModelStatus(served.version,
                       get_model_status_pb2.ModelVersionStatus.State.Name(served.state))

  def wait_until_available(self, timeout: float = 60.0) -> ModelStatus:
    """Polls the model's status until a version is AVAILABLE, for scripts that start a server.

    Raises TimeoutError after `timeout` seconds, with the last state or error seen.
    """
    deadline = time.monotonic() + timeout
    while True:
      try:
        # No single poll may outlast the deadline.
        status = self._model_status(min(self.timeout, max(deadline - time.monotonic(), 0.01)))
        if status.state == _AVAILABLE:
          return status
        last_seen = f"version {status.version} is {status.state}"
      except grpc.RpcError as error:
        if error.code() not in _STARTING_CODES:
          raise
        last_seen = f"{error.code().name}: {error.details()}"
      remaining = deadline - time.monotonic()
      if remaining <= 0:
        raise TimeoutError(f"model '{self.model_name}' at {self.target} was not AVAILABLE "
                           f"within {timeout}s; last seen: {last_seen}")
      time.sleep(min(_POLL_INTERVAL_SECONDS, remaining))

  def close(self) -> None:
    self._channel.close()

  def __enter__(self) -> "RecommenderClient":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()
