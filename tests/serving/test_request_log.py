"""Request logging (serving/request_log.py): PredictionLog TFRecords as TF Serving writes them,
configured by models.config, written off the request path, never failing a request.

Logs are read back with TensorFlow's own TFRecord reader, which checks every record's CRCs.
"""
import errno
import io
import json
import pathlib
import time
from typing import List
import urllib.request

import grpc
import numpy as np
import prometheus_client
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_log_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc
from tensorflow_serving.config import logging_config_pb2

from components.data import serving_logs
from components.models import queries
from schemas import contract
from serving import client as client_lib
from serving import model_config
from serving import push
from serving import request_log
from serving import server as server_lib
from serving.config import RequestLogWriterConfig
from tests.serving.test_server import GOOD_INPUTS
from tests.serving.test_server import MODEL
from tests.serving.test_server import predict_request
from tests.serving.test_server import RPC_TIMEOUT
from tests.serving.test_server import save_model
from tests.serving.test_server import TinyRecommender
from tests.serving.test_server import TOP_K

# What RecommenderWithPropensities answers for the slots of every slate, best first.
SLOT_PROPENSITIES = tuple(1.0 / slot for slot in range(1, TOP_K + 1))


class RecommenderWithPropensities(TinyRecommender):
  """The tiny model with serving_default's third output: SLOT_PROPENSITIES for every user."""

  @tf.function(input_signature=queries.INPUT_SPECS)
  def serve_with_propensities(self, user_id, history, timestamp):
    outputs = self.serve(user_id, history, timestamp)
    return {**outputs, contract.PROPENSITIES: tf.broadcast_to(
        tf.constant(SLOT_PROPENSITIES), tf.shape(outputs[contract.SCORES]))}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> pathlib.Path:
  path = tmp_path_factory.mktemp("model") / "saved"
  save_model(path)
  return path


@pytest.fixture(scope="module")
def model_with_propensities_dir(tmp_path_factory) -> pathlib.Path:
  path = tmp_path_factory.mktemp("model_with_propensities") / "saved"
  module = RecommenderWithPropensities()
  tf.saved_model.save(module, str(path), signatures={
      contract.SERVING_SIGNATURE: module.serve_with_propensities.get_concrete_function()})
  return path


def log_prefix(serving_root: pathlib.Path) -> pathlib.Path:
  """Where the push's logging config puts the log, as this machine sees it."""
  return (serving_root / model_config.REQUEST_LOG_DIR / MODEL / model_config.REQUEST_LOG_NAME)


def read_logs(serving_root: pathlib.Path) -> List[prediction_log_pb2.PredictionLog]:
  files = request_log.closed_files(log_prefix(serving_root))
  return [prediction_log_pb2.PredictionLog.FromString(record.numpy())
          for record in tf.data.TFRecordDataset([str(path) for path in files])]


def in_progress_files(serving_root: pathlib.Path) -> List[pathlib.Path]:
  return list(serving_root.rglob(f"*{request_log.IN_PROGRESS_SUFFIX}"))


def test_records_hold_request_response_version_request_id_and_time(model_dir, tmp_path):
  push.push(model_dir, tmp_path, MODEL, version=3, request_log_sampling_rate=1.0)
  server = server_lib.build_server(tmp_path, port=0, rest_port=0, poll_seconds=None)
  server.start()
  started = int(time.time())
  try:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
      stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
      batch = predict_request()  # two users
      response, call = stub.Predict.with_call(
          batch, timeout=RPC_TIMEOUT, metadata=((contract.REQUEST_ID_HEADER, "req-1"),))
      assert dict(call.trailing_metadata())[contract.REQUEST_ID_HEADER] == "req-1"
      single = predict_request({key: value[:1] for key, value in GOOD_INPUTS.items()})
      _, call = stub.Predict.with_call(single, timeout=RPC_TIMEOUT)
      generated = dict(call.trailing_metadata())[contract.REQUEST_ID_HEADER]
      assert len(generated) == 32 and int(generated, 16) >= 0  # a uuid4 hex
      refused = predict_request({contract.USER_ID: GOOD_INPUTS[contract.USER_ID]})
      with pytest.raises(grpc.RpcError) as error:  # refused, not logged, but its id is echoed
        stub.Predict(refused, timeout=RPC_TIMEOUT, metadata=((contract.REQUEST_ID_HEADER, "bad"),))
      assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
      assert dict(error.value.trailing_metadata())[contract.REQUEST_ID_HEADER] == "bad"
    body = {"instances": [{"user_id": "u9", "history": ["item01"], "timestamp": 5}]}
    with urllib.request.urlopen(urllib.request.Request(
        f"http://127.0.0.1:{server.rest_port}/v1/models/{MODEL}:predict",
        data=json.dumps(body).encode(), headers={"X-Request-Id": "rest-7"}),
                                timeout=RPC_TIMEOUT) as answer:
      assert answer.status == 200
      assert answer.headers["X-Request-Id"] == "rest-7"
  finally:
    server.stop(grace=None)
  finished = int(time.time())

  assert in_progress_files(tmp_path) == []
  logs = read_logs(tmp_path)
  assert len(logs) == 3
  first = logs[0]
  assert first.log_metadata.model_spec.name == MODEL
  assert first.log_metadata.model_spec.version.value == 3
  assert first.log_metadata.model_spec.signature_name == contract.SERVING_SIGNATURE
  assert first.log_metadata.sampling_config.sampling_rate == 1.0
  assert started <= first.log_metadata.timestamp_secs <= finished
  assert first.predict_log.response == response
  logged_request = predict_pb2.PredictRequest()
  logged_request.CopyFrom(first.predict_log.request)
  ids = tf.make_ndarray(logged_request.inputs.pop(contract.REQUEST_ID)).tolist()
  assert ids == [b"req-1/0", b"req-1/1"]
  assert logged_request == batch  # otherwise the request as received
  assert tf.make_ndarray(logs[1].predict_log.request.inputs[contract.REQUEST_ID]).tolist() == [
      generated.encode()]
  rest = logs[2].predict_log.request
  assert tf.make_ndarray(rest.inputs[contract.REQUEST_ID]).tolist() == [b"rest-7"]
  assert tf.make_ndarray(rest.inputs[contract.USER_ID]).tolist() == [b"u9"]
  assert tf.make_ndarray(logs[2].predict_log.response.outputs[contract.ITEM_IDS]).shape[0] == 1
  name = request_log.closed_files(log_prefix(tmp_path))[0].name
  assert name.startswith(f"{model_config.REQUEST_LOG_NAME}-")
  assert name.endswith(request_log.CLOSED_SUFFIX)


@pytest.mark.parametrize("with_propensities", [True, False])
def test_the_client_sends_and_returns_the_request_id_the_server_logs(
    with_propensities, model_dir, model_with_propensities_dir, tmp_path):
  push.push(model_with_propensities_dir if with_propensities else model_dir, tmp_path, MODEL,
            version=1, request_log_sampling_rate=1.0)
  server = server_lib.build_server(tmp_path, port=0, poll_seconds=None)
  server.start()
  try:
    with client_lib.RecommenderClient(f"127.0.0.1:{server.port}") as client:
      mine = client.recommend("u1", ["item03"], k=2, request_id="app-42")
      generated = client.recommend("u1", ["item03"], k=2)
      batch = client.recommend_batch(["u1", "u2"], [[], ["item01"]], k=2, request_id="b")
  finally:
    server.stop(grace=None)
  assert mine.request_id == "app-42"
  assert len(generated.request_id) == 32
  assert [answer.request_id for answer in batch] == ["b/0", "b/1"]
  logged = [tf.make_ndarray(log.predict_log.request.inputs[contract.REQUEST_ID]).tolist()
            for log in read_logs(tmp_path)]
  assert logged == [[b"app-42"], [generated.request_id.encode()], [b"b/0", b"b/1"]]
  # What ingest-logs reads of them: each slate with the served policy's propensities where the
  # signature has them, none claimed where it has not.
  slates = serving_logs.read_prediction_logs(log_prefix(tmp_path).parent)
  assert slates[contract.REQUEST_ID].tolist() == ["app-42", generated.request_id, "b/0", "b/1"]
  expected = SLOT_PROPENSITIES if with_propensities else (np.nan,) * TOP_K
  for propensities in slates["propensities"]:
    np.testing.assert_allclose(propensities, expected, rtol=1e-6)


def test_a_request_id_that_is_not_an_id_is_refused(model_dir, tmp_path):
  push.push(model_dir, tmp_path, MODEL, version=1, request_log_sampling_rate=1.0)
  server = server_lib.build_server(tmp_path, port=0, poll_seconds=None)
  server.start()
  try:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
      stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
      with pytest.raises(grpc.RpcError) as error:
        stub.Predict(predict_request(), timeout=RPC_TIMEOUT,
                     metadata=((contract.REQUEST_ID_HEADER, "x" * 300),))
  finally:
    server.stop(grace=None)
  assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
  assert contract.REQUEST_ID_HEADER in error.value.details()
  assert read_logs(tmp_path) == []


def _serve_and_send(serving_root: pathlib.Path, count: int) -> str:
  """Sends `count` Predict requests, each of which must succeed; returns the metrics after."""
  server = server_lib.build_server(serving_root, port=0, rest_port=0, poll_seconds=None)
  server.start()
  try:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
      stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
      for _ in range(count):
        stub.Predict(predict_request(), timeout=RPC_TIMEOUT)  # raises if any request fails
    with urllib.request.urlopen(
        f"http://127.0.0.1:{server.rest_port}/monitoring/prometheus/metrics",
        timeout=RPC_TIMEOUT) as answer:
      metrics = answer.read().decode()
  finally:
    server.stop(grace=None)
  return metrics


def test_sampling_rate_zero_logs_nothing_and_no_config_logs_nothing(model_dir, tmp_path):
  push.push(model_dir, tmp_path / "zero", MODEL, version=1, request_log_sampling_rate=0.0)
  push.push(model_dir, tmp_path / "none", MODEL, version=1)
  for root in (tmp_path / "zero", tmp_path / "none"):
    metrics = _serve_and_send(root, 20)
    assert 'recsys_serving_request_log_records_total{outcome="written"} 0.0' in metrics
    assert not (root / model_config.REQUEST_LOG_DIR).exists()


def test_a_log_directory_that_cannot_be_made_fails_no_request_and_is_counted(model_dir,
                                                                             tmp_path):
  push.push(model_dir, tmp_path, MODEL, version=1, request_log_sampling_rate=1.0)
  (tmp_path / model_config.REQUEST_LOG_DIR).write_text("a file where the log directory goes")
  metrics = _serve_and_send(tmp_path, 5)  # every request answered
  assert 'recsys_serving_request_log_errors_total{reason="io_error"} 1.0' in metrics
  assert 'recsys_serving_request_log_records_total{outcome="failed"} 5.0' in metrics
  assert 'recsys_serving_request_log_records_total{outcome="written"} 0.0' in metrics


# The logger on its own, fed answered requests directly: fast enough for thousands of records.

@pytest.fixture(scope="module")
def answered() -> tuple:
  request = predict_request()
  response = predict_pb2.PredictResponse()
  response.model_spec.name = MODEL
  response.model_spec.version.value = 1
  response.outputs[contract.ITEM_IDS].CopyFrom(tf.make_tensor_proto([["a", "b"], ["c", "d"]]))
  return request, response


def _logger(prefix: pathlib.Path, rate: float = 1.0, open_file=None, **writer) -> tuple:
  config = model_config.request_logging(MODEL, rate)
  config.log_collector_config.filename_prefix = str(prefix)
  registry = prometheus_client.CollectorRegistry()
  logger = request_log.RequestLogger(lambda: config, registry, RequestLogWriterConfig(**writer),
                                     open_file)
  return logger, registry


def _records(prefix: pathlib.Path) -> List[prediction_log_pb2.PredictionLog]:
  return [prediction_log_pb2.PredictionLog.FromString(record.numpy())
          for record in tf.data.TFRecordDataset(
              [str(path) for path in request_log.closed_files(prefix)])]


def _ids(logs) -> List[bytes]:
  return [tf.make_ndarray(log.predict_log.request.inputs[contract.REQUEST_ID])[0]
          for log in logs]


def _record_bytes(answered: tuple, request_id: str) -> int:
  """The size of one record of `answered`, logged now."""
  return len(request_log.tfrecord(request_log.prediction_log(
      *answered, request_id, int(time.time()),
      logging_config_pb2.SamplingConfig(sampling_rate=1.0))))


def test_a_fractional_rate_logs_that_fraction(tmp_path, answered):
  logger, registry = _logger(tmp_path / "p", rate=0.3)
  logger.start()
  for index in range(2000):
    logger.log(*answered, f"r{index}")
  logger.stop()
  written = len(_records(tmp_path / "p"))
  # Binomial(2000, 0.3): mean 600, standard deviation 20.5; five deviations either side.
  assert 497 <= written <= 703
  assert registry.get_sample_value("recsys_serving_request_log_records_total",
                                   {"outcome": "written"}) == written


def test_files_rotate_by_size_and_all_are_closed_after_stop(tmp_path, answered):
  one_record = _record_bytes(answered, "r00")
  logger, _ = _logger(tmp_path / "p", max_file_bytes=3 * one_record)
  logger.start()
  for index in range(20):
    logger.log(*answered, f"r{index:02d}")
  logger.stop()
  files = request_log.closed_files(tmp_path / "p")
  assert len(files) == 7  # 3 records a file
  assert all(path.stat().st_size <= 3 * one_record for path in files)
  assert _ids(_records(tmp_path / "p")) == [f"r{index:02d}/0".encode() for index in range(20)]
  assert in_progress_files(tmp_path) == []


def test_a_file_is_closed_at_its_age_limit_while_the_server_runs(tmp_path, answered):
  logger, _ = _logger(tmp_path / "p", max_file_seconds=0.2)
  logger.start()
  logger.log(*answered, "early")
  deadline = time.monotonic() + 10
  while not request_log.closed_files(tmp_path / "p"):
    assert time.monotonic() < deadline, "the file was not closed at its age limit"
    time.sleep(0.05)
  assert in_progress_files(tmp_path) == []
  logger.stop()
  assert _ids(_records(tmp_path / "p")) == [b"early/0"]


class _SmallDisk(io.FileIO):
  """A real file on a disk with `free` bytes: a write beyond fills it, then fails with ENOSPC,
  as write(2) does."""

  free = 0

  def write(self, data) -> int:
    room = type(self).free - self.tell()
    if room <= 0:
      raise OSError(errno.ENOSPC, "No space left on device")
    return super().write(bytes(data)[:room])


def test_a_full_disk_is_counted_and_leaves_only_whole_records(tmp_path, answered, monkeypatch):
  monkeypatch.setattr(request_log, "ERROR_BACKOFF_SECONDS", 0.2)
  one_record = _record_bytes(answered, "r0")
  _SmallDisk.free = int(2.5 * one_record)  # room for two records and half of a third
  logger, registry = _logger(tmp_path / "p", open_file=lambda path: _SmallDisk(path, "xb"))
  logger.start()
  for index in range(4):
    logger.log(*answered, f"r{index}")  # r2 is cut short, r3 falls in the backoff
  time.sleep(0.5)
  logger.log(*answered, "after")  # a new file
  logger.stop()
  count = lambda name, **labels: registry.get_sample_value(name, labels)
  assert count("recsys_serving_request_log_errors_total", reason="disk_full") == 1
  assert count("recsys_serving_request_log_records_total", outcome="failed") == 2
  assert count("recsys_serving_request_log_records_total", outcome="written") == 3
  # The cut record was truncated away: every closed file reads back whole.
  assert _ids(_records(tmp_path / "p")) == [b"r0/0", b"r1/0", b"after/0"]
  assert in_progress_files(tmp_path) == []


def test_a_full_queue_drops_and_counts_without_waiting(tmp_path, answered):
  logger, registry = _logger(tmp_path / "p", queue_records=5)  # not started: nothing drains
  started = time.monotonic()
  for index in range(50):
    logger.log(*answered, f"r{index}")
  assert time.monotonic() - started < 1.0
  assert registry.get_sample_value("recsys_serving_request_log_records_total",
                                   {"outcome": "dropped"}) == 45


def test_row_request_ids():
  assert request_log.row_request_ids("a", 1) == ["a"]
  assert request_log.row_request_ids("a", 3) == ["a/0", "a/1", "a/2"]


def test_the_tfrecord_framing_is_tensorflow_s(tmp_path):
  path = tmp_path / "records"
  with tf.io.TFRecordWriter(str(path)) as writer:
    writer.write(b"hello")
    writer.write(b"")
  assert path.read_bytes() == request_log.tfrecord(b"hello") + request_log.tfrecord(b"")


def test_a_new_prefix_or_rate_in_the_config_applies_from_the_next_request(tmp_path, answered):
  config = model_config.request_logging(MODEL, 1.0)
  config.log_collector_config.filename_prefix = str(tmp_path / "a" / "p")
  logger = request_log.RequestLogger(lambda: config, prometheus_client.CollectorRegistry())
  logger.start()
  logger.log(*answered, "to-a")
  moved = model_config.request_logging(MODEL, 1.0)
  moved.log_collector_config.filename_prefix = str(tmp_path / "b" / "p")
  config = moved
  logger.log(*answered, "to-b")
  config = model_config.request_logging(MODEL, 0.0)
  logger.log(*answered, "not-sampled")
  logger.stop()
  assert _ids(_records(tmp_path / "a" / "p")) == [b"to-a/0"]  # closed when the prefix moved
  assert _ids(_records(tmp_path / "b" / "p")) == [b"to-b/0"]
  assert in_progress_files(tmp_path) == []
