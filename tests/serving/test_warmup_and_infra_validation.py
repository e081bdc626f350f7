"""Warmup requests in TF Serving's format (components/models/warmup.py) and infra validation
(serving/infra_validation.py), which loads a model in an isolated serving process."""
import pathlib
import shutil

import grpc
import pytest
import tensorflow as tf
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.apis import model_service_pb2_grpc
from tensorflow_serving.apis import prediction_log_pb2

from components.models import warmup
from schemas import contract
from serving import infra_validation
from serving import push
from serving import server as server_lib
from serving.config import InfraValidationConfig
from tests.serving.test_server import CATALOG
from tests.serving.test_server import MODEL
from tests.serving.test_server import RPC_TIMEOUT
from tests.serving.test_server import save_model


@pytest.fixture(scope="module")
def warm_model(tmp_path_factory) -> pathlib.Path:
  path = tmp_path_factory.mktemp("model") / "saved"
  save_model(path)
  warmup.write(path, warmup.representative_requests(["u1", "user22"], ["item03", "item07"]))
  return path


def test_warmup_records_are_prediction_logs_at_tf_serving_s_path(warm_model):
  records = list(tf.data.TFRecordDataset(
      str(warm_model / "assets.extra" / "tf_serving_warmup_requests")).as_numpy_iterator())
  logs = [prediction_log_pb2.PredictionLog.FromString(record) for record in records]
  assert [log.WhichOneof("log_type") for log in logs] == ["predict_log"] * 3
  requests = warmup.read(warm_model)
  assert [log.predict_log.request for log in logs] == requests
  shapes = [tuple(tf.make_ndarray(request.inputs[contract.HISTORY]).shape)
            for request in requests]
  assert shapes == [(1, contract.HISTORY_LENGTH), (1, contract.HISTORY_LENGTH),
                    (8, contract.HISTORY_LENGTH)]
  users = [tf.make_ndarray(request.inputs[contract.USER_ID]).tolist() for request in requests]
  assert users[1] == [warmup.UNKNOWN_USER.encode()]  # the cold-start path is warmed up too


def test_warmup_needs_ids_and_bounds_the_record_count(tmp_path):
  with pytest.raises(ValueError, match="at least one known user"):
    warmup.representative_requests([], ["i"])
  with pytest.raises(ValueError, match="1 to 1000"):
    warmup.write(tmp_path, [])
  assert warmup.read(tmp_path) == []


def test_a_model_failing_its_warmup_is_not_served(warm_model, tmp_path):
  bad = tmp_path / "bad"
  shutil.copytree(warm_model, bad)
  request = warmup.read(warm_model)[0]
  request.inputs["unknown_input"].CopyFrom(request.inputs[contract.USER_ID])
  warmup.write(bad, [request])
  push.push(bad, tmp_path / "serving", MODEL, version=1)
  model_server = server_lib.build_server(tmp_path / "serving", port=0, poll_seconds=None)
  model_server.start()
  try:
    with grpc.insecure_channel(f"127.0.0.1:{model_server.port}") as channel:
      status_request = get_model_status_pb2.GetModelStatusRequest()
      status_request.model_spec.name = MODEL
      (status,) = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
          status_request, timeout=RPC_TIMEOUT).model_version_status
  finally:
    model_server.stop(grace=None)
  assert status.state == get_model_status_pb2.ModelVersionStatus.END
  assert "unexpected ['unknown_input']" in status.status.error_message


def test_a_servable_model_passes_infra_validation(warm_model):
  report = infra_validation.validate(warm_model, set(CATALOG), MODEL)
  assert report.passed, report.reason
  assert report.requests_sent == 3 + InfraValidationConfig.latency_requests
  assert 0 < report.latency_p50_ms <= report.latency_p99_ms


@pytest.mark.parametrize("catalog, config, reason", [
    (set(CATALOG[:3]), InfraValidationConfig(), "not in the catalog"),
    (set(CATALOG), InfraValidationConfig(latency_budget_ms=0.001,
                                                          latency_requests=5),
     "exceeds the budget of 0.001 ms"),
])
def test_infra_validation_refuses_what_cannot_be_served_as_promised(warm_model, catalog, config,
                                                                     reason):
  report = infra_validation.validate(warm_model, catalog, MODEL, config)
  assert not report.passed
  assert reason in report.reason


def test_infra_validation_refuses_a_model_that_does_not_load(warm_model, tmp_path):
  corrupt = tmp_path / "corrupt"
  shutil.copytree(warm_model, corrupt)
  (corrupt / contract.SAVED_MODEL_PB).write_bytes(b"not a SavedModel")
  report = infra_validation.validate(corrupt, set(CATALOG), MODEL)
  assert not report.passed
  assert "failed to load" in report.reason


def test_infra_validation_needs_warmup_requests(tmp_path):
  save_model(tmp_path / "cold")
  report = infra_validation.validate(tmp_path / "cold", set(CATALOG), MODEL)
  assert not report.passed
  assert "no warmup requests" in report.reason
