"""TF Serving's REST API for the same registry the gRPC services read.

  GET  /v1/models/<name>[/versions/<v> | /labels/<l>]            model status
  GET  /v1/models/<name>[/versions/<v> | /labels/<l>]/metadata   signature defs
  POST /v1/models/<name>[/versions/<v> | /labels/<l>]:predict    {"instances": [...]} or
                                                                  {"inputs": {...}}
  GET  /monitoring/prometheus/metrics                             Prometheus metrics

As in TF Serving (https://www.tensorflow.org/tfx/serving/api_rest), the row format answers
{"predictions": [...]} with one object per instance, the columnar format {"outputs": {...}};
errors answer {"error": message} with the HTTP status matching the gRPC code. Requests become
tensorflow-serving-api protos and go through serving/handlers.py, so both protocols validate and
answer alike. Strings and integers only, as this model's inputs are (ids, the request time);
TF Serving's base64 ({"b64": ...}) binary encoding is not needed for ids and is rejected.
A Predict request's X-Request-Id header (else a generated id) is echoed in its answer and logged
with it (serving/request_log.py).
"""
import http
import http.server
import json
import re
import threading
from typing import Any, Dict, Optional, Tuple

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.apis import predict_pb2

from schemas import contract
from serving import handlers
from serving import metrics as metrics_lib
from serving import registry as registry_lib
from serving import request_log

_MODEL_PATH = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
    r"(?P<verb>/metadata|:predict)?$")
# The largest request body read; larger ones are refused before parsing.
MAX_BODY_BYTES = 8 * 1024 * 1024

_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: http.HTTPStatus.BAD_REQUEST,
    grpc.StatusCode.NOT_FOUND: http.HTTPStatus.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION: http.HTTPStatus.BAD_REQUEST,
    grpc.StatusCode.UNIMPLEMENTED: http.HTTPStatus.NOT_IMPLEMENTED,
    grpc.StatusCode.RESOURCE_EXHAUSTED: http.HTTPStatus.TOO_MANY_REQUESTS,
    grpc.StatusCode.DEADLINE_EXCEEDED: http.HTTPStatus.GATEWAY_TIMEOUT,
    grpc.StatusCode.UNAVAILABLE: http.HTTPStatus.SERVICE_UNAVAILABLE,
}


def _spec(request, match: re.Match) -> None:
  request.model_spec.name = match["name"]
  if match["version"]:
    request.model_spec.version.value = int(match["version"])
  elif match["label"]:
    request.model_spec.version_label = match["label"]


def _to_tensor_proto(key: str, value: Any):
  array = np.array(value, dtype=object)
  items = array.ravel()
  if any(isinstance(item, (list, dict)) for item in items):
    raise handlers.ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                f"input '{key}' is ragged or nested; rows must have equal length")
  if all(isinstance(item, str) for item in items):
    return tf.make_tensor_proto(array, dtype=tf.string, shape=array.shape)
  # JSON has one number type; bool is a subclass of int in Python and no id or time.
  if all(isinstance(item, int) and not isinstance(item, bool) for item in items):
    return tf.make_tensor_proto(array.astype(np.int64), dtype=tf.int64, shape=array.shape)
  raise handlers.ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                              f"input '{key}' must hold strings or integers, not a mix or "
                              f"other JSON values")


def predict_request(body: Dict[str, Any], match: re.Match) -> Tuple[predict_pb2.PredictRequest,
                                                                      bool]:
  """The PredictRequest of a REST body, and whether it was in the row ("instances") format."""
  request = predict_pb2.PredictRequest()
  _spec(request, match)
  request.model_spec.signature_name = body.get("signature_name", "")
  if ("instances" in body) == ("inputs" in body):
    raise handlers.ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                'the body must have exactly one of "instances" or "inputs"')
  if "inputs" in body:
    if not isinstance(body["inputs"], dict):
      raise handlers.ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                  '"inputs" must map input names to values')
    columns = body["inputs"]
  else:
    instances = body["instances"]
    if not isinstance(instances, list) or not all(isinstance(row, dict) for row in instances):
      raise handlers.ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                  '"instances" must be a list of objects, one per query')
    keys = {key for row in instances for key in row}
    columns = {key: [row.get(key) for row in instances] for key in keys}
    if "history" in columns:  # histories of different lengths are padded, as clients do
      histories = [row or [] for row in columns["history"]]
      if all(isinstance(row, list) for row in histories):
        width = max(map(len, histories), default=0)
        columns["history"] = [row + [""] * (width - len(row)) for row in histories]
  for key, value in columns.items():
    request.inputs[key].CopyFrom(_to_tensor_proto(key, value))
  return request, "instances" in body


def _outputs_json(response: predict_pb2.PredictResponse, rows: bool) -> Dict[str, Any]:
  outputs = {}
  for key, tensor in response.outputs.items():
    array = tf.make_ndarray(tensor)
    outputs[key] = (np.char.decode(array.astype(bytes)) if array.dtype == object
                    else array).tolist()
  if not rows:
    return {"outputs": outputs}
  batch = len(next(iter(outputs.values()))) if outputs else 0
  return {"predictions": [{key: value[index] for key, value in outputs.items()}
                          for index in range(batch)]}


class _Handler(http.server.BaseHTTPRequestHandler):
  """One REST request; `server` carries the registry, limits, metrics and request log."""

  protocol_version = "HTTP/1.1"
  # The Predict request's id, echoed in its answer; the handler serves a connection's requests.
  _request_id: Optional[str] = None

  def handle_one_request(self):
    self._request_id = None
    super().handle_one_request()

  def log_message(self, format, *args):  # pylint: disable=redefined-builtin
    del format, args  # request logs would flood the server log; the metrics count requests

  def do_GET(self):
    if self.path == metrics_lib.METRICS_PATH:
      self._send(http.HTTPStatus.OK, self.server.metrics.exposition(),
                 "text/plain; version=0.0.4")
      return
    match = _MODEL_PATH.match(self.path)
    if match is None or match["verb"] == ":predict":
      self._send_error(handlers.ServingError(grpc.StatusCode.NOT_FOUND,
                                             f"no such endpoint: GET {self.path}"))
    elif match["verb"] == "/metadata":
      self._answer("GetModelMetadata", lambda: self._metadata(match))
    else:
      self._answer("GetModelStatus", lambda: self._status(match))

  def do_POST(self):
    match = _MODEL_PATH.match(self.path)
    if match is None or match["verb"] != ":predict":
      self._send_error(handlers.ServingError(grpc.StatusCode.NOT_FOUND,
                                             f"no such endpoint: POST {self.path}"))
      return
    self._answer("Predict", lambda: self._predict(match))

  def _predict(self, match: re.Match) -> Dict[str, Any]:
    self._request_id = request_log.request_id(self.headers.get(contract.REQUEST_ID_HEADER))
    length = int(self.headers.get("Content-Length") or 0)
    if length > MAX_BODY_BYTES:
      raise handlers.ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                  f"request body of {length} bytes exceeds {MAX_BODY_BYTES}")
    try:
      body = json.loads(self.rfile.read(length) or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
      raise handlers.ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                  f"the body is not JSON: {error}") from error
    if not isinstance(body, dict):
      raise handlers.ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                  "the body must be a JSON object")
    request, rows = predict_request(body, match)
    response = handlers.predict(self.server.model_registry, request, self.server.limits)
    self.server.request_log.log(request, response, self._request_id)
    return _outputs_json(response, rows)

  def _metadata(self, match: re.Match) -> Dict[str, Any]:
    request = get_model_metadata_pb2.GetModelMetadataRequest(
        metadata_field=[handlers.SIGNATURE_DEF_FIELD])
    _spec(request, match)
    response = handlers.model_metadata(self.server.model_registry, request)
    signature_defs = get_model_metadata_pb2.SignatureDefMap()
    response.metadata[handlers.SIGNATURE_DEF_FIELD].Unpack(signature_defs)
    return {"model_spec": json_format.MessageToDict(response.model_spec),
            "metadata": {handlers.SIGNATURE_DEF_FIELD: json_format.MessageToDict(signature_defs)}}

  def _status(self, match: re.Match) -> Dict[str, Any]:
    request = get_model_status_pb2.GetModelStatusRequest()
    _spec(request, match)
    response = handlers.model_status(self.server.model_registry, request)
    return json_format.MessageToDict(response, preserving_proto_field_name=True,
                                     including_default_value_fields=True)

  def _answer(self, method: str, handle) -> None:
    with self.server.metrics.observe(method, "rest") as outcome:
      try:
        body = handle()
      except handlers.ServingError as error:
        outcome.code = error.code
        self._send_error(error)
        return
      except Exception as error:  # pylint: disable=broad-except
        outcome.code = grpc.StatusCode.INTERNAL
        self._send_error(handlers.ServingError(
            grpc.StatusCode.INTERNAL, f"{method} failed: {type(error).__name__}: {error}"))
        return
      self._send(http.HTTPStatus.OK, json.dumps(body).encode(), "application/json")

  def _send_error(self, error: handlers.ServingError) -> None:
    status = _HTTP_STATUS.get(error.code, http.HTTPStatus.INTERNAL_SERVER_ERROR)
    self._send(status, json.dumps({"error": error.message}).encode(), "application/json")

  def _send(self, status: http.HTTPStatus, payload: bytes, content_type: str) -> None:
    self.send_response(status)
    if self._request_id:
      self.send_header(contract.REQUEST_ID_HEADER, self._request_id)
    self.send_header("Content-Type", content_type)
    self.send_header("Content-Length", str(len(payload)))
    self.end_headers()
    self.wfile.write(payload)


class RestServer(http.server.ThreadingHTTPServer):
  """TF Serving's REST API on (host, port); `serve_in_background` starts it on a thread."""

  daemon_threads = True

  def __init__(self, address: Tuple[str, int], model_registry: registry_lib.ModelRegistry,
               limits: handlers.RequestLimits, metrics: metrics_lib.ServingMetrics,
               request_logger: request_log.RequestLogger):
    super().__init__(address, _Handler)
    self.model_registry = model_registry
    self.limits = limits
    self.metrics = metrics
    self.request_log = request_logger
    self._thread: Optional[threading.Thread] = None

  @property
  def port(self) -> int:
    return self.server_address[1]

  def serve_in_background(self) -> None:
    self._thread = threading.Thread(target=self.serve_forever, name="rest-server", daemon=True)
    self._thread.start()

  def stop(self) -> None:
    self.shutdown()
    self.server_close()
