"""The local server under load, across version swaps, bad versions, rollbacks and fuzzed input.

Loopback only, every RPC bounded by a timeout. Versions are pushed with serving/push.py, as the
pipeline pushes them; the server polls the serving root.
"""
from concurrent import futures
import contextlib
import pathlib
import threading
import time
from typing import Callable, Iterator, List, Tuple

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2
from tensorflow.core.framework import tensor_shape_pb2
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.apis import model_service_pb2_grpc
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_log_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from components.models import queries
from schemas import contract
from serving import model_config
from serving import push
from serving import request_log
from serving import server as server_lib
from tests.serving.test_server import expected_recommendations
from tests.serving.test_server import MODEL
from tests.serving.test_server import RPC_TIMEOUT
from tests.serving.test_server import save_model

POLL_SECONDS = 0.2
CONCURRENCY = 32
USERS = [f"user{index}" for index in range(7)]


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory) -> List[pathlib.Path]:
  """SavedModels whose rankings differ by offset 0, 1, 2: a response shows which one answered."""
  root = tmp_path_factory.mktemp("models")
  for offset in range(3):
    save_model(root / str(offset), offset=offset)
  return [root / str(offset) for offset in range(3)]


@contextlib.contextmanager
def serving(serving_root: pathlib.Path) -> Iterator[grpc.Channel]:
  server = server_lib.build_server(serving_root, port=0, poll_seconds=POLL_SECONDS,
                                   max_workers=8)
  server.start()
  try:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
      yield channel
  finally:
    server.stop(grace=None)


def request_for(user: str, history=("item03",)) -> predict_pb2.PredictRequest:
  return queries.predict_request([user], [list(history)], MODEL)


def answer(response: predict_pb2.PredictResponse) -> List[Tuple[str, float]]:
  items = tf.make_ndarray(response.outputs[contract.ITEM_IDS])[0]
  scores = tf.make_ndarray(response.outputs[contract.SCORES])[0]
  return [(item.decode(), float(score)) for item, score in zip(items, scores)]


def wait_for(condition: Callable[[], bool], timeout: float = 60.0) -> None:
  deadline = time.monotonic() + timeout
  while not condition():
    assert time.monotonic() < deadline, "condition not met in time"
    time.sleep(POLL_SECONDS / 2)


def served_version(channel: grpc.Channel) -> int:
  stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
  return stub.Predict(request_for(USERS[0]), timeout=RPC_TIMEOUT).model_spec.version.value


class Load:
  """`CONCURRENCY` threads sending Predict until stopped, checking every answer.

  Each answer must be exactly what the version that answered computes (offset = version - 1),
  so a request served by a half-swapped model would count as wrong.
  """

  def __init__(self, channel: grpc.Channel, requests: int):
    self._stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    self._remaining = requests
    self._lock = threading.Lock()
    self.errors: List[str] = []
    self.wrong: List[str] = []
    self.versions_seen: List[int] = []
    self._pool = futures.ThreadPoolExecutor(CONCURRENCY)
    self._workers = [self._pool.submit(self._run, worker) for worker in range(CONCURRENCY)]

  def _take(self) -> bool:
    with self._lock:
      self._remaining -= 1
      return self._remaining >= 0

  def _run(self, worker: int) -> None:
    while self._take():
      user = USERS[worker % len(USERS)]
      try:
        response = self._stub.Predict(request_for(user), timeout=RPC_TIMEOUT)
      except grpc.RpcError as error:
        self.errors.append(f"{error.code().name}: {error.details()}")
        continue
      version = response.model_spec.version.value
      self.versions_seen.append(version)
      if answer(response) != expected_recommendations(user, ["item03"], offset=version - 1):
        self.wrong.append(f"version {version} answered {answer(response)} for {user}")

  def join(self) -> None:
    for worker in self._workers:
      worker.result()
    self._pool.shutdown()


def test_10k_requests_at_concurrency_32_without_an_error(saved_models, tmp_path):
  push.push(saved_models[0], tmp_path, MODEL, version=1, request_log_sampling_rate=1.0)
  with serving(tmp_path) as channel:
    load = Load(channel, requests=10_000)
    load.join()
  assert load.errors == []
  assert load.wrong == []
  assert len(load.versions_seen) == 10_000
  # Every request logged, once, in closed files only (the server stopped).
  prefix = tmp_path / model_config.REQUEST_LOG_DIR / MODEL / model_config.REQUEST_LOG_NAME
  logged = tf.data.TFRecordDataset([str(path) for path in request_log.closed_files(prefix)])
  ids = {prediction_log_pb2.PredictionLog.FromString(record.numpy()).predict_log.request.inputs[
      contract.REQUEST_ID].string_val[0] for record in logged}
  assert len(ids) == 10_000
  assert not list(prefix.parent.glob(f"*{request_log.IN_PROGRESS_SUFFIX}"))


def test_a_version_swap_under_load_fails_no_request(saved_models, tmp_path):
  push.push(saved_models[0], tmp_path, MODEL, version=1)
  with serving(tmp_path) as channel:
    load = Load(channel, requests=6_000)
    wait_for(lambda: len(load.versions_seen) > 500)
    push.push(saved_models[1], tmp_path, MODEL, version=2)
    load.join()
    assert served_version(channel) == 2
  assert load.errors == []
  assert load.wrong == []
  assert {1, 2} <= set(load.versions_seen)
  # Once version 2 answered, version 1 never did again: the swap is one step.
  first_new = load.versions_seen.index(2)
  assert load.versions_seen[first_new:].count(1) <= CONCURRENCY  # requests already in flight


def test_a_corrupt_new_version_leaves_the_old_one_serving(saved_models, tmp_path):
  push.push(saved_models[0], tmp_path, MODEL, version=1)
  corrupt = tmp_path / "corrupt"
  corrupt.mkdir()
  (corrupt / contract.SAVED_MODEL_PB).write_bytes(b"this is not a SavedModel")
  with serving(tmp_path) as channel:
    push.push(corrupt, tmp_path, MODEL, version=2)
    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = MODEL
    models = model_service_pb2_grpc.ModelServiceStub(channel)
    statuses = lambda: {status.version: status for status in models.GetModelStatus(
        status_request, timeout=RPC_TIMEOUT).model_version_status}
    wait_for(lambda: 2 in statuses())
    failed = statuses()[2]
    assert failed.state == get_model_status_pb2.ModelVersionStatus.END
    assert "version 2" in failed.status.error_message
    assert "failed to load" in failed.status.error_message
    assert statuses()[1].state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert served_version(channel) == 1
    stable = request_for(USERS[0])
    stable.model_spec.version_label = model_config.STABLE
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    assert stub.Predict(stable, timeout=RPC_TIMEOUT).model_spec.version.value == 1
    # A good version pushed after the corrupt one is served.
    push.push(saved_models[2], tmp_path, MODEL, version=3)
    wait_for(lambda: served_version(channel) == 3)


def test_rollback_restores_the_previous_answers(saved_models, tmp_path):
  push.push(saved_models[0], tmp_path, MODEL, version=1)
  with serving(tmp_path) as channel:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    before = answer(stub.Predict(request_for(USERS[3]), timeout=RPC_TIMEOUT))
    push.push(saved_models[1], tmp_path, MODEL, version=2)
    wait_for(lambda: served_version(channel) == 2)
    assert answer(stub.Predict(request_for(USERS[3]), timeout=RPC_TIMEOUT)) != before
    assert push.rollback(tmp_path, MODEL) == 1
    wait_for(lambda: served_version(channel) == 1)
    assert answer(stub.Predict(request_for(USERS[3]), timeout=RPC_TIMEOUT)) == before


def _tensor(dtype: int, shape: List[int], **values) -> tensor_pb2.TensorProto:
  return tensor_pb2.TensorProto(dtype=dtype, tensor_shape=tensor_shape_pb2.TensorShapeProto(
      dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in shape]), **values)


def _fuzzed_requests(seed: int, count: int) -> Iterator[predict_pb2.PredictRequest]:
  """Malformed requests: wrong dtypes, ranks, sizes, missing or extra inputs, huge strings,
  contents that disagree with their shape, random bytes."""
  rng = np.random.default_rng(seed)
  dtypes = [types_pb2.DT_STRING, types_pb2.DT_INT64, types_pb2.DT_FLOAT, types_pb2.DT_INT32,
            types_pb2.DT_BOOL, types_pb2.DT_INVALID, 999]
  for _ in range(count):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL if rng.random() < 0.9 else "x" * int(rng.integers(0, 300))
    for key in rng.choice([contract.USER_ID, contract.HISTORY, "extra"],
                          size=int(rng.integers(0, 4)), replace=True):
      shape = [int(size) for size in rng.integers(-2, 70, size=int(rng.integers(0, 4)))]
      values = {}
      kind = rng.integers(0, 4)
      if kind == 0:
        values["string_val"] = [rng.bytes(int(rng.integers(0, 2_000))) for _ in range(3)]
      elif kind == 1:
        values["int64_val"] = rng.integers(-5, 5, size=4).tolist()
      elif kind == 2:
        values["tensor_content"] = rng.bytes(int(rng.integers(0, 100)))
      request.inputs[str(key)].CopyFrom(_tensor(int(rng.choice(dtypes)), shape, **values))
    yield request
  huge = request_for("u" * 3_000_000)  # a 3 MB id, inside gRPC's 4 MB message limit
  yield huge
  oversize = request_for("u")
  oversize.inputs[contract.USER_ID].CopyFrom(tf.make_tensor_proto(["u"] * 65, dtype=tf.string))
  yield oversize


def test_fuzzed_requests_are_refused_and_never_crash_the_server(saved_models, tmp_path):
  push.push(saved_models[0], tmp_path, MODEL, version=1)
  with serving(tmp_path) as channel:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    codes = []
    for request in _fuzzed_requests(seed=0, count=300):
      try:
        stub.Predict(request, timeout=RPC_TIMEOUT)
        codes.append(grpc.StatusCode.OK)  # a random request can happen to be valid
      except grpc.RpcError as error:
        codes.append(error.code())
    assert served_version(channel) == 1  # still up and serving
  # Refused as the client's fault, never an internal error.
  assert set(codes) <= {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                        grpc.StatusCode.OK}
  assert codes.count(grpc.StatusCode.OK) < 10
  assert codes[-2:] == [grpc.StatusCode.INVALID_ARGUMENT] * 2
