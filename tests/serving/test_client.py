"""RecommenderClient against the real local server, serving the tiny model of test_server.py."""
from concurrent import futures
import contextlib
import pathlib
import time
from typing import Iterator

import grpc
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from schemas import contract
from serving import client as client_lib
from tests.serving.test_server import expected_recommendations
from tests.serving.test_server import RPC_TIMEOUT
from tests.serving.test_server import running_server
from tests.serving.test_server import save_model
from tests.serving.test_server import TOP_K


def expected(user_id, history, k):
  return [client_lib.Recommendation(item_id, score)
          for item_id, score in expected_recommendations(user_id, history)[:k]]


@pytest.fixture(scope="module")
def target(tmp_path_factory) -> Iterator[str]:
  root = tmp_path_factory.mktemp("serving")
  save_model(root / contract.DEFAULT_MODEL_NAME / "1")
  with running_server(root) as target:
    yield target


@pytest.fixture
def client(target) -> Iterator[client_lib.RecommenderClient]:
  with client_lib.RecommenderClient(target, timeout=RPC_TIMEOUT) as client:
    yield client


def test_recommend_returns_the_top_k_best_first(client):
  recommendations = client.recommend("u1", ["item03", "item04"], k=3)

  assert recommendations == expected("u1", ["item03", "item04"], k=3)
  scores = [recommendation.score for recommendation in recommendations]
  assert scores == sorted(scores, reverse=True)


def test_recommend_without_history(client):
  assert client.recommend("u1", k=TOP_K) == expected("u1", [], k=TOP_K)


def test_recommend_batch_pads_histories_of_different_lengths(client):
  users = ["u1", "user22", "u333"]
  histories = [[], ["item01"], ["item01", "item02", "item03"]]

  answers = client.recommend_batch(users, histories, k=2)

  assert answers == [expected(user, history, k=2) for user, history in zip(users, histories)]


@pytest.mark.parametrize("k, message", [(0, "at least 1"), (TOP_K + 1, f"the {TOP_K} items")])
def test_recommend_rejects_k_out_of_range(client, k, message):
  with pytest.raises(ValueError, match=message):
    client.recommend("u1", k=k)


def test_unknown_model_raises_not_found(target):
  with client_lib.RecommenderClient(target, model_name="nope", timeout=RPC_TIMEOUT) as client:
    with pytest.raises(grpc.RpcError) as error:
      client.recommend("u1")
  assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_model_status_and_wait_until_available(client):
  available = client_lib.ModelStatus(version=1, state="AVAILABLE")
  assert client.model_status() == available
  assert client.wait_until_available(timeout=RPC_TIMEOUT) == available


def test_wait_until_available_times_out_while_no_version_is_served(tmp_path: pathlib.Path):
  with running_server(tmp_path) as target, client_lib.RecommenderClient(
      target, timeout=RPC_TIMEOUT) as client:
    with pytest.raises(TimeoutError, match="NOT_FOUND"):
      client.wait_until_available(timeout=0.5)


class _FlakyPredictions(prediction_service_pb2_grpc.PredictionServiceServicer):
  """Fails the first `failures` Predict calls with `code`, then answers one item."""

  def __init__(self, failures: int, code: grpc.StatusCode):
    self.calls = 0
    self.requests = []
    self._failures = failures
    self._code = code

  def Predict(self, request, context):
    self.calls += 1
    self.requests.append(request)
    if self.calls <= self._failures:
      context.abort(self._code, f"failure {self.calls}")
    response = predict_pb2.PredictResponse()
    response.outputs[contract.ITEM_IDS].CopyFrom(tf.make_tensor_proto([["i1"]]))
    response.outputs[contract.SCORES].CopyFrom(tf.make_tensor_proto([[0.5]], dtype=tf.float32))
    return response


@contextlib.contextmanager
def _fake_server(servicer) -> Iterator[str]:
  server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
  prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(servicer, server)
  port = server.add_insecure_port("127.0.0.1:0")
  server.start()
  try:
    yield f"127.0.0.1:{port}"
  finally:
    server.stop(grace=None)


def test_unavailable_is_retried_with_backoff():
  servicer = _FlakyPredictions(failures=2, code=grpc.StatusCode.UNAVAILABLE)
  with _fake_server(servicer) as target, client_lib.RecommenderClient(target) as client:
    assert client.recommend("u", k=1) == [client_lib.Recommendation("i1", 0.5)]
  assert servicer.calls == 3


def test_requests_carry_the_time_now_unless_the_caller_gives_one():
  servicer = _FlakyPredictions(failures=0, code=grpc.StatusCode.OK)
  with _fake_server(servicer) as target, client_lib.RecommenderClient(target) as client:
    before = int(time.time())
    client.recommend("u", k=1)
    after = int(time.time())
    client.recommend("u", k=1, timestamp=1_700_000_000)
  sent = [tf.make_ndarray(request.inputs[contract.TIMESTAMP]).tolist()
          for request in servicer.requests]
  assert before <= sent[0][0] <= after
  assert sent[1] == [1_700_000_000]


def test_retries_stop_after_the_policy_s_attempts():
  servicer = _FlakyPredictions(failures=100, code=grpc.StatusCode.UNAVAILABLE)
  with _fake_server(servicer) as target, client_lib.RecommenderClient(target) as client:
    with pytest.raises(grpc.RpcError) as error:
      client.recommend("u", k=1)
  assert error.value.code() == grpc.StatusCode.UNAVAILABLE
  assert servicer.calls == client_lib.RETRY_POLICY["maxAttempts"]


@pytest.mark.parametrize("code", [grpc.StatusCode.INTERNAL, grpc.StatusCode.INVALID_ARGUMENT,
                                  grpc.StatusCode.DEADLINE_EXCEEDED])
def test_other_failures_are_not_retried(code):
  servicer = _FlakyPredictions(failures=1, code=code)
  with _fake_server(servicer) as target, client_lib.RecommenderClient(target) as client:
    with pytest.raises(grpc.RpcError) as error:
      client.recommend("u", k=1)
  assert error.value.code() == code
  assert servicer.calls == 1
