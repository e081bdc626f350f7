"""The local TF Serving stand-in over real gRPC: answers, status codes, version picking.

A tiny SavedModel with the serving contract stands in for the trained recommender, so these tests
take seconds; `test_client.py` reuses it through `save_model` and `running_server`.
"""
import contextlib
import pathlib
import shutil
from typing import Iterator, List, Optional, Sequence, Tuple

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import classification_pb2
from tensorflow_serving.apis import get_model_metadata_pb2
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.apis import inference_pb2
from tensorflow_serving.apis import model_pb2
from tensorflow_serving.apis import model_service_pb2_grpc
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc
from tensorflow_serving.apis import regression_pb2

from components.models import queries
from schemas import contract
from serving import handlers
from serving import server as server_lib

MODEL = contract.DEFAULT_MODEL_NAME
CATALOG = tuple(f"item{index:02d}" for index in range(20))
TOP_K = 5
# Every RPC in the tests is bounded, so a hung server fails a test instead of stalling the suite.
RPC_TIMEOUT = 10.0

USERS = np.array([b"u1", b"user22"], dtype=object)
HISTORIES = np.array([[b"item03", b""], [b"item07", b"item08"]], dtype=object)
TIMES = np.array([1_700_000_000, contract.UNKNOWN_TIME], dtype=np.int64)
GOOD_INPUTS = {contract.USER_ID: USERS, contract.HISTORY: HISTORIES,
               contract.TIMESTAMP: TIMES}


class TinyRecommender(tf.Module):
  """The serving contract over a fixed catalog, with answers a test can work out by hand.

  Each user's ranking is the catalog rotated by len(user_id) plus the number of items in their
  history ('' is padding) plus `offset`, scored 0, -1, -2, ...; see `expected_recommendations`.
  Models with different offsets answer differently, so a test can tell versions apart. The time
  is taken, as the contract requires, and not used.
  """

  def __init__(self, offset: int = 0):
    super().__init__()
    self.offset = offset

  @tf.function(input_signature=queries.INPUT_SPECS)
  def serve(self, user_id, history, timestamp):
    del timestamp
    # Gives the tests an error raised inside the model call.
    tf.debugging.assert_equal(tf.shape(user_id)[0], tf.shape(history)[0],
                              message="user_id and history differ in batch size")
    history_len = tf.reduce_sum(tf.cast(tf.not_equal(history, ""), tf.int32), axis=1)
    shift = tf.strings.length(user_id) + history_len + self.offset
    ranks = tf.math.floormod(tf.range(len(CATALOG))[tf.newaxis, :] - shift[:, tf.newaxis],
                             len(CATALOG))
    scores, indices = tf.math.top_k(tf.cast(-ranks, tf.float32), k=TOP_K)
    return {contract.ITEM_IDS: tf.gather(tf.constant(CATALOG), indices),
            contract.SCORES: scores}


def expected_recommendations(user_id: str, history: Sequence[str],
                             offset: int = 0) -> List[Tuple[str, float]]:
  shift = len(user_id) + sum(1 for item in history if item) + offset
  return [(CATALOG[(shift + rank) % len(CATALOG)], -float(rank)) for rank in range(TOP_K)]


def save_model(version_dir: pathlib.Path, offset: int = 0) -> None:
  module = TinyRecommender(offset)
  tf.saved_model.save(module, str(version_dir), signatures={
      contract.SERVING_SIGNATURE: module.serve.get_concrete_function()})


@contextlib.contextmanager
def running_server(serving_root: pathlib.Path) -> Iterator[str]:
  """The real server, in-process on a free loopback port; yields its target."""
  server = server_lib.build_server(serving_root, port=0, max_workers=4)
  server.start()
  try:
    yield f"127.0.0.1:{server.port}"
  finally:
    server.stop(grace=None)


def predict_request(inputs=None, output_filter: Sequence[str] = (), name: str = MODEL,
                    version: Optional[int] = None, **model_spec) -> predict_pb2.PredictRequest:
  request = predict_pb2.PredictRequest(
      model_spec=model_pb2.ModelSpec(name=name, **model_spec), output_filter=output_filter)
  if version is not None:
    request.model_spec.version.value = version
  for key, value in (GOOD_INPUTS if inputs is None else inputs).items():
    request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
  return request


def status_request(name: str = MODEL, version: Optional[int] = None):
  request = get_model_status_pb2.GetModelStatusRequest(model_spec=model_pb2.ModelSpec(name=name))
  if version is not None:
    request.model_spec.version.value = version
  return request


def metadata_request(metadata_field: Sequence[str] = (handlers.SIGNATURE_DEF_FIELD,)):
  return get_model_metadata_pb2.GetModelMetadataRequest(
      model_spec=model_pb2.ModelSpec(name=MODEL), metadata_field=metadata_field)


def rpc_error(rpc, request) -> grpc.RpcError:
  with pytest.raises(grpc.RpcError) as error:
    rpc(request, timeout=RPC_TIMEOUT)
  return error.value


@pytest.fixture(scope="module")
def serving_root(tmp_path_factory) -> pathlib.Path:
  root = tmp_path_factory.mktemp("serving")
  save_model(root / MODEL / "1")
  return root


@pytest.fixture(scope="module")
def channel(serving_root) -> Iterator[grpc.Channel]:
  with running_server(serving_root) as target, grpc.insecure_channel(target) as channel:
    yield channel


@pytest.fixture
def predictions(channel) -> prediction_service_pb2_grpc.PredictionServiceStub:
  return prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture
def models(channel) -> model_service_pb2_grpc.ModelServiceStub:
  return model_service_pb2_grpc.ModelServiceStub(channel)


@pytest.mark.parametrize("signature_name", ["", contract.SERVING_SIGNATURE])
def test_predict_answers_as_the_saved_model(predictions, serving_root, signature_name):
  response = predictions.Predict(predict_request(signature_name=signature_name),
                                 timeout=RPC_TIMEOUT)

  serve = tf.saved_model.load(str(serving_root / MODEL / "1")).signatures[
      contract.SERVING_SIGNATURE]
  direct = serve(**{key: tf.constant(value) for key, value in GOOD_INPUTS.items()})
  assert set(response.outputs) == {contract.ITEM_IDS, contract.SCORES}
  for key, tensor in direct.items():
    answer = tf.make_ndarray(response.outputs[key])
    assert answer.dtype == tensor.numpy().dtype
    np.testing.assert_array_equal(answer, tensor.numpy())
  assert response.model_spec == model_pb2.ModelSpec(
      name=MODEL, version={"value": 1}, signature_name=contract.SERVING_SIGNATURE)


def test_predict_with_empty_history(predictions):
  inputs = {contract.USER_ID: np.array([b"u1"], dtype=object),
            contract.HISTORY: np.empty((1, 0), dtype=object), contract.TIMESTAMP: TIMES[:1]}
  response = predictions.Predict(predict_request(inputs), timeout=RPC_TIMEOUT)

  item_ids = tf.make_ndarray(response.outputs[contract.ITEM_IDS])
  expected = [item_id.encode() for item_id, _ in expected_recommendations("u1", [])]
  assert item_ids.tolist() == [expected]


def test_predict_returns_only_the_filtered_outputs(predictions):
  response = predictions.Predict(predict_request(output_filter=[contract.SCORES]),
                                 timeout=RPC_TIMEOUT)
  assert set(response.outputs) == {contract.SCORES}


@pytest.mark.parametrize("request_args, code, message", [
    (dict(name="nope"), grpc.StatusCode.NOT_FOUND,
     "Servable not found for request: Latest(nope)"),
    (dict(version=7), grpc.StatusCode.NOT_FOUND,
     f"Servable not found for request: Specific({MODEL}, 7)"),
    (dict(version_label="stable"), grpc.StatusCode.INVALID_ARGUMENT,
     "Unrecognized servable version label: stable"),
    (dict(signature_name="predict"), grpc.StatusCode.INVALID_ARGUMENT,
     'Serving signature key "predict" not found'),
    (dict(inputs={contract.USER_ID: USERS, contract.TIMESTAMP: TIMES}),
     grpc.StatusCode.INVALID_ARGUMENT, "missing ['history']"),
    (dict(inputs={**GOOD_INPUTS, "age": np.array([30, 40])}), grpc.StatusCode.INVALID_ARGUMENT,
     "unexpected ['age']"),
    (dict(inputs={**GOOD_INPUTS, contract.USER_ID: np.array([1, 2], dtype=np.int64)}),
     grpc.StatusCode.INVALID_ARGUMENT,
     "input 'user_id' has dtype DT_INT64, but signature 'serving_default' expects DT_STRING"),
    (dict(inputs={**GOOD_INPUTS, contract.USER_ID: USERS[:, np.newaxis]}),
     grpc.StatusCode.INVALID_ARGUMENT, "input 'user_id' has shape (2, 1) (rank 2)"),
    (dict(output_filter=["logits"]), grpc.StatusCode.INVALID_ARGUMENT,
     "output_filter names 'logits'"),
    (dict(inputs={**GOOD_INPUTS, contract.USER_ID: USERS[:1]}),
     grpc.StatusCode.INVALID_ARGUMENT,
     "inputs disagree on the batch size (their first dimension, one row per query): "
     "'history' has 2, 'timestamp' has 2, 'user_id' has 1"),
], ids=["unknown model", "unknown version", "version label", "unknown signature",
        "missing input", "extra input", "wrong dtype", "wrong rank", "unknown output",
        "batch sizes disagree"])
def test_predict_rejects_bad_requests_and_keeps_serving(predictions, request_args, code,
                                                        message):
  error = rpc_error(predictions.Predict, predict_request(**request_args))
  assert error.code() == code
  assert message in error.details()
  assert "Traceback" not in error.details() and "File " not in error.details()
  assert predictions.Predict(predict_request(), timeout=RPC_TIMEOUT).outputs


@pytest.mark.parametrize("method, request_type", [
    ("Classify", classification_pb2.ClassificationRequest),
    ("Regress", regression_pb2.RegressionRequest),
    ("MultiInference", inference_pb2.MultiInferenceRequest),
])
def test_other_prediction_apis_are_unimplemented(predictions, method, request_type):
  error = rpc_error(getattr(predictions, method), request_type())
  assert error.code() == grpc.StatusCode.UNIMPLEMENTED


def test_get_model_metadata_returns_the_signature_defs(predictions):
  response = predictions.GetModelMetadata(metadata_request(), timeout=RPC_TIMEOUT)

  assert response.model_spec.name == MODEL
  assert response.model_spec.version.value == 1
  signature_defs = get_model_metadata_pb2.SignatureDefMap()
  assert response.metadata[handlers.SIGNATURE_DEF_FIELD].Unpack(signature_defs)
  serving_default = signature_defs.signature_def[contract.SERVING_SIGNATURE]
  assert set(serving_default.inputs) == {
      contract.USER_ID, contract.HISTORY, contract.TIMESTAMP}
  assert set(serving_default.outputs) == {contract.ITEM_IDS, contract.SCORES}
  assert serving_default.inputs[contract.USER_ID].dtype == tf.string.as_datatype_enum
  assert serving_default.outputs[contract.SCORES].dtype == tf.float32.as_datatype_enum


@pytest.mark.parametrize("metadata_field", [[], ["weights"]])
def test_get_model_metadata_supports_only_signature_def(predictions, metadata_field):
  error = rpc_error(predictions.GetModelMetadata, metadata_request(metadata_field))
  assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_get_model_status_reports_the_loaded_version(models):
  response = models.GetModelStatus(status_request(), timeout=RPC_TIMEOUT)

  [status] = response.model_version_status
  assert status.version == 1
  assert status.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
  assert status.status.error_code == 0  # OK
  assert models.GetModelStatus(status_request(version=1), timeout=RPC_TIMEOUT) == response


@pytest.mark.parametrize("request_args", [dict(name="nope"), dict(version=9)])
def test_get_model_status_of_unknown_model_or_version_is_not_found(models, request_args):
  error = rpc_error(models.GetModelStatus, status_request(**request_args))
  assert error.code() == grpc.StatusCode.NOT_FOUND


def test_serves_the_newest_complete_version(serving_root, tmp_path):
  model_dir = tmp_path / MODEL
  for name in ["1", "2", "3", ".4-incoming"]:
    shutil.copytree(serving_root / MODEL / "1", model_dir / name)
  # The Pusher is still copying version 3, and '.4-incoming' is not a version at all.
  (model_dir / "3" / contract.SAVED_MODEL_PB).unlink()

  with running_server(tmp_path) as target, grpc.insecure_channel(target) as channel:
    predictions = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    response = predictions.Predict(predict_request(), timeout=RPC_TIMEOUT)
    old_version_error = rpc_error(predictions.Predict, predict_request(version=1))
    status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
        status_request(), timeout=RPC_TIMEOUT)

  assert response.model_spec.version.value == 2
  assert old_version_error.code() == grpc.StatusCode.NOT_FOUND
  assert [version.version for version in status.model_version_status] == [2]


def test_empty_serving_root_answers_not_found(tmp_path):
  with running_server(tmp_path) as target, grpc.insecure_channel(target) as channel:
    predictions = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    models = model_service_pb2_grpc.ModelServiceStub(channel)
    errors = [rpc_error(predictions.Predict, predict_request()),
              rpc_error(predictions.GetModelMetadata, metadata_request()),
              rpc_error(models.GetModelStatus, status_request()),
              rpc_error(predictions.Predict, predict_request())]  # still up after the others

  assert [error.code() for error in errors] == [grpc.StatusCode.NOT_FOUND] * 4
  assert errors[2].details() == f"Could not find any versions of model {MODEL}"


def test_a_model_s_own_error_reaches_the_client_without_tensorflow_s_stack_text():
  @tf.function
  def model(user_id, history):
    tf.debugging.assert_equal(tf.shape(user_id)[0], tf.shape(history)[0],
                              message="user_id and history differ in batch size")
    return user_id

  with pytest.raises(tf.errors.InvalidArgumentError) as raised:
    model(tf.constant(["a"]), tf.constant([["x"], ["y"]]))
  assert "defined at (most recent call last)" in raised.value.message  # what TF says
  message = handlers.model_error_message(raised.value)
  assert "user_id and history differ in batch size" in message
  assert "File " not in message and "[Op:" not in message and "\n" not in message
