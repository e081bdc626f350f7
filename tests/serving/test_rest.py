"""TF Serving's REST API and the Prometheus metrics of the local server (serving/rest.py)."""
import json
import pathlib
from typing import Iterator, Tuple
import urllib.error
import urllib.request

import grpc
from prometheus_client.parser import text_string_to_metric_families
import pytest
from tensorflow_serving.apis import prediction_service_pb2_grpc

from schemas import contract
from serving import push
from serving import server as server_lib
from tests.serving.test_server import expected_recommendations
from tests.serving.test_server import MODEL
from tests.serving.test_server import RPC_TIMEOUT
from tests.serving.test_server import save_model
from tests.serving.test_serving_under_load import request_for

TIMEOUT = 10


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[server_lib.ModelServer]:
  root = tmp_path_factory.mktemp("serving")
  model_dir = tmp_path_factory.mktemp("model") / "saved"
  save_model(model_dir)
  push.push(model_dir, root, MODEL, version=3)
  model_server = server_lib.build_server(root, port=0, rest_port=0, poll_seconds=None)
  model_server.start()
  yield model_server
  model_server.stop(grace=None)


def call(server, path: str, body=None) -> Tuple[int, dict]:
  data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
  request = urllib.request.Request(f"http://127.0.0.1:{server.rest_port}{path}", data=data,
                                   method="GET" if body is None else "POST")
  try:
    with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
      return response.status, json.loads(response.read())
  except urllib.error.HTTPError as error:
    return error.code, json.loads(error.read())


def expected_row(user, history):
  items, scores = zip(*expected_recommendations(user, history))
  return {contract.ITEM_IDS: list(items), contract.SCORES: list(scores)}


def test_predict_in_the_row_format_pads_histories(server):
  status, body = call(server, f"/v1/models/{MODEL}:predict", {"instances": [
      {"user_id": "u1", "history": ["item03"], "timestamp": 1_700_000_000},
      {"user_id": "user22", "history": ["item07", "item08"], "timestamp": 0},
      {"user_id": "new", "history": [], "timestamp": 1_700_000_000}]})
  assert status == 200
  assert body == {"predictions": [expected_row("u1", ["item03"]),
                                  expected_row("user22", ["item07", "item08"]),
                                  expected_row("new", [])]}


def test_predict_in_the_columnar_format_by_version_and_label(server):
  body = {"signature_name": contract.SERVING_SIGNATURE,
          "inputs": {"user_id": ["u1"], "history": [["item03", ""]], "timestamp": [0]}}
  for path in (f"/v1/models/{MODEL}:predict", f"/v1/models/{MODEL}/versions/3:predict",
               f"/v1/models/{MODEL}/labels/stable:predict"):
    status, answer = call(server, path, body)
    assert status == 200, answer
    assert answer == {"outputs": {key: [value] for key, value in
                                  expected_row("u1", ["item03"]).items()}}


@pytest.mark.parametrize("path, body, status, message", [
    (f"/v1/models/{MODEL}:predict", b"{not json", 400, "not JSON"),
    (f"/v1/models/{MODEL}:predict",
     {"instances": [{"user_id": 1, "history": [], "timestamp": 0}]}, 400,
     "input 'user_id' has dtype DT_INT64, but signature 'serving_default' expects DT_STRING"),
    (f"/v1/models/{MODEL}:predict",
     {"instances": [{"user_id": "u", "history": [], "timestamp": 1.5}]}, 400,
     "input 'timestamp' must hold strings or integers"),
    (f"/v1/models/{MODEL}:predict", {"inputs": {"user_id": ["u"], "timestamp": [0]}}, 400,
     "missing ['history']"),
    (f"/v1/models/{MODEL}:predict", {"inputs": {"user_id": ["u"], "history": [[]]}}, 400,
     "missing ['timestamp']"),
    (f"/v1/models/{MODEL}:predict", {"inputs": {"user_id": ["u"], "history": [["a"], []]}}, 400,
     "ragged"),
    (f"/v1/models/{MODEL}:predict", {"instances": [], "inputs": {}}, 400, "exactly one of"),
    (f"/v1/models/{MODEL}:predict",
     {"inputs": {"user_id": ["u", "v"], "history": [["a"]], "timestamp": [0, 0]}}, 400,
     "inputs disagree on the batch size (their first dimension, one row per query): "
     "'history' has 1, 'timestamp' has 2, 'user_id' has 2"),
    (f"/v1/models/{MODEL}/versions/9:predict", {"inputs": {"user_id": ["u"],
                                                           "history": [[]]}}, 404,
     "Servable not found"),
    (f"/v1/models/{MODEL}/labels/canary:predict", {"inputs": {"user_id": ["u"],
                                                              "history": [[]]}}, 400,
     "Unrecognized servable version label: canary"),
    ("/v1/models/nope:predict", {"inputs": {"user_id": ["u"], "history": [[]]}}, 404,
     "Servable not found"),
])
def test_bad_rest_requests_get_tf_serving_errors(server, path, body, status, message):
  code, answer = call(server, path, body)
  assert code == status
  assert message in answer["error"]


def test_model_status_and_metadata(server):
  status, body = call(server, f"/v1/models/{MODEL}")
  assert status == 200
  assert body == {"model_version_status": [{
      "version": "3", "state": "AVAILABLE", "status": {"error_code": "OK",
                                                       "error_message": ""}}]}
  status, body = call(server, f"/v1/models/{MODEL}/labels/stable/metadata")
  assert status == 200
  assert body["model_spec"] == {"name": MODEL, "version": "3"}
  outputs = body["metadata"]["signature_def"]["signatureDef"][contract.SERVING_SIGNATURE][
      "outputs"]
  assert set(outputs) == {contract.ITEM_IDS, contract.SCORES}
  assert call(server, "/v1/nothing")[0] == 404


def _samples(server) -> dict:
  with urllib.request.urlopen(f"http://127.0.0.1:{server.rest_port}/monitoring/prometheus/"
                              "metrics", timeout=TIMEOUT) as response:
    text = response.read().decode()
  return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
          for family in text_string_to_metric_families(text) for sample in family.samples}


def test_metrics_count_requests_errors_latency_and_the_loaded_version(server):
  before = _samples(server)
  with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    for _ in range(3):
      stub.Predict(request_for("u1"), timeout=RPC_TIMEOUT)
    bad = request_for("u1")
    bad.model_spec.name = "nope"
    with pytest.raises(grpc.RpcError):
      stub.Predict(bad, timeout=RPC_TIMEOUT)
  after = _samples(server)
  grpc_predict = (("method", "Predict"), ("protocol", "grpc"))

  def delta(name, labels):
    return after.get((name, labels), 0) - before.get((name, labels), 0)

  assert delta("recsys_serving_requests_total", grpc_predict) == 4
  assert delta("recsys_serving_request_errors_total", tuple(sorted(
      grpc_predict + (("code", "NOT_FOUND"),)))) == 1
  assert delta("recsys_serving_request_latency_seconds_count", grpc_predict) == 4
  assert after[("recsys_serving_model_version", (("model", MODEL),))] == 3
  assert after[("recsys_serving_failed_versions", (("model", MODEL),))] == 0


def test_rest_binds_loopback_by_default(tmp_path: pathlib.Path):
  model_server = server_lib.build_server(tmp_path, port=0, rest_port=0, poll_seconds=None)
  try:
    assert model_server.rest_server.server_address[0] == "127.0.0.1"
  finally:
    model_server.rest_server.server_close()
    model_server.grpc_server.stop(None)
