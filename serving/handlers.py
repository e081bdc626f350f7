"""TF Serving's request semantics, independent of the protocol that carried the request.

The gRPC servicers (serving/server.py) and the REST endpoint (serving/rest.py) both turn their
requests into tensorflow-serving-api protos and call these functions, so they validate, route and
answer identically, with the status codes and messages TF Serving uses.
"""
import dataclasses
import logging
import re
from typing import Dict, List, Optional

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2
from tensorflow.core.framework import tensor_shape_pb2
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import get_model_metadata_pb2
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.apis import model_pb2
from tensorflow_serving.apis import predict_pb2

from schemas import contract
from serving import registry as registry_lib
from serving import tensor_protos

# The only GetModelMetadata field TF Serving knows for SavedModels.
SIGNATURE_DEF_FIELD = "signature_def"
# TensorFlow's status codes are gRPC's, number for number; TF Serving passes a model's error
# code through to the client, and so do we.
GRPC_CODES = {code.value[0]: code for code in grpc.StatusCode}


class ServingError(Exception):
  """A request the server refuses, with the gRPC status code TF Serving answers it with."""

  def __init__(self, code: grpc.StatusCode, message: str):
    super().__init__(message)
    self.code = code
    self.message = message


@dataclasses.dataclass(frozen=True)
class RequestLimits:
  """Bounds on one Predict request, so that no request can take the server down.

  The model would answer larger requests, slowly and with memory proportional to batch × catalog
  for rank_catalog; beyond these a request is a client bug or abuse and gets INVALID_ARGUMENT.
  """
  # TF Serving's limit with serving/deploy/batching_parameters.txt (max_batch_size): the same client
  # requests then work against both servers.
  max_batch_size: int = 64
  max_history_length: int = contract.HISTORY_LENGTH
  max_id_bytes: int = 256  # the longest user or item id accepted


def _model_spec(request) -> model_pb2.ModelSpec:
  if not request.HasField("model_spec"):
    raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
  return request.model_spec


def _labelled_version(spec: model_pb2.ModelSpec, snapshot: registry_lib.Snapshot) -> int:
  """The version the spec's label names, else INVALID_ARGUMENT as TF Serving answers."""
  if spec.version_label not in snapshot.labels:
    raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                       f"Unrecognized servable version label: {spec.version_label}")
  return snapshot.labels[spec.version_label]


def find_servable(registry: registry_lib.ModelRegistry, request) -> registry_lib.Servable:
  """The servable a request's model_spec names (version, label or newest), else NOT_FOUND."""
  spec = _model_spec(request)
  snapshot = registry.snapshot()
  choice = spec.WhichOneof("version_choice")
  if spec.name != registry.model_name:
    servable = None
  elif choice == "version_label":
    servable = snapshot.servables[_labelled_version(spec, snapshot)]
  elif choice == "version":
    servable = snapshot.servables.get(spec.version.value)
  else:
    servable = snapshot.latest()
  if servable is None:
    servable_request = (f"Specific({spec.name}, {spec.version.value})" if choice == "version"
                        else f"Latest({spec.name})")
    raise ServingError(grpc.StatusCode.NOT_FOUND,
                       f"Servable not found for request: {servable_request}")
  return servable


def _dtype_name(dtype: int) -> str:
  return (types_pb2.DataType.Name(dtype) if dtype in types_pb2.DataType.values()
          else f"unknown dtype {dtype}")


def _shape_fits(shape: tensor_shape_pb2.TensorShapeProto,
                expected: tensor_shape_pb2.TensorShapeProto) -> bool:
  """tf.TensorShape(shape).is_compatible_with(tf.TensorShape(expected)), on the protos."""
  if shape.unknown_rank or expected.unknown_rank:
    return True
  return len(shape.dim) == len(expected.dim) and all(
      want.size < 0 or have.size < 0 or want.size == have.size
      for have, want in zip(shape.dim, expected.dim))


def _check_input(key: str, tensor: tensor_pb2.TensorProto, expected: meta_graph_pb2.TensorInfo,
                 signature_name: str) -> None:
  """Rejects an input whose dtype or shape the signature cannot take, naming both."""
  if tensor.dtype != expected.dtype:
    raise ServingError(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"input '{key}' has dtype {_dtype_name(tensor.dtype)}, but signature "
        f"'{signature_name}' expects {_dtype_name(expected.dtype)}")
  if not _shape_fits(tensor.tensor_shape, expected.tensor_shape):
    shape, expected_shape = (tf.TensorShape(tensor.tensor_shape),
                             tf.TensorShape(expected.tensor_shape))
    raise ServingError(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"input '{key}' has shape {shape} (rank {shape.rank}), but signature '{signature_name}' "
        f"expects shape {expected_shape} (rank {expected_shape.rank})")


def _check_limits(key: str, array: np.ndarray, limits: RequestLimits) -> None:
  if array.ndim and array.shape[0] > limits.max_batch_size:
    raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                       f"input '{key}' has a batch of {array.shape[0]}, more than the "
                       f"{limits.max_batch_size} this server accepts in one request")
  if key == contract.HISTORY and array.ndim == 2 and array.shape[1] > limits.max_history_length:
    raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                       f"input '{key}' has {array.shape[1]} items per user, more than the "
                       f"{limits.max_history_length} this server accepts")
  if array.dtype == object and array.size:
    longest = max(map(len, array.ravel()))
    if longest > limits.max_id_bytes:
      raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                         f"input '{key}' holds a string of {longest} bytes; ids are at most "
                         f"{limits.max_id_bytes} bytes")


def _to_arrays(request: predict_pb2.PredictRequest, signature_def: meta_graph_pb2.SignatureDef,
               signature_name: str, limits: RequestLimits) -> Dict[str, np.ndarray]:
  """The request's inputs as arrays, after checking them against the signature and limits."""
  missing = sorted(set(signature_def.inputs) - set(request.inputs))
  extra = sorted(set(request.inputs) - set(signature_def.inputs))
  if missing or extra:
    raise ServingError(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"inputs do not match signature '{signature_name}', which takes "
        f"{sorted(signature_def.inputs)}: missing {missing}, unexpected {extra}")
  arrays = {}
  for key, tensor in request.inputs.items():
    _check_input(key, tensor, signature_def.inputs[key], signature_name)
    try:
      array = tensor_protos.to_ndarray(tensor)
    except (ValueError, TypeError) as error:  # e.g. fewer values than its shape needs
      raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                         f"input '{key}' is not a valid TensorProto: {error}") from error
    _check_limits(key, array, limits)
    arrays[key] = array
  _check_batch_sizes(arrays)
  return arrays


def _check_batch_sizes(arrays: Dict[str, np.ndarray]) -> None:
  """Every input holds one row per query: refused before the graph runs when they disagree."""
  sizes = {key: array.shape[0] for key, array in sorted(arrays.items()) if array.ndim}
  if len(set(sizes.values())) > 1:
    raise ServingError(
        grpc.StatusCode.INVALID_ARGUMENT,
        "inputs disagree on the batch size (their first dimension, one row per query): "
        + ", ".join(f"'{key}' has {size}" for key, size in sizes.items()))


def model_error_message(error: tf.errors.OpError) -> str:
  """The part of a model's error a client can act on, without TensorFlow's graph stack text.

  A graph execution error reads "Graph execution error: / Detected at node ... defined at (most
  recent call last): / <Python stack of the model's code> / <the error> [[{{node ...}}]]
  [Op:...]"; only the error itself is the client's business (the server logs the rest).
  """
  last_paragraph = re.split(r"\n\s*\n", error.message.strip())[-1]
  lines = [line.strip() for line in last_paragraph.splitlines()
           if line.strip() and not line.strip().startswith("[[")]
  return re.sub(r"\s*\[Op:[^\]]*\]$", "", " ".join(lines)) or type(error).__name__


def _output_keys(request: predict_pb2.PredictRequest, signature_def: meta_graph_pb2.SignatureDef,
                 signature_name: str) -> List[str]:
  """The outputs to return: those in output_filter, or all of them when it is empty."""
  for key in request.output_filter:
    if key not in signature_def.outputs:
      raise ServingError(
          grpc.StatusCode.INVALID_ARGUMENT,
          f"output_filter names '{key}', which signature '{signature_name}' does not output; "
          f"its outputs are {sorted(signature_def.outputs)}")
  if len(set(request.output_filter)) != len(request.output_filter):
    raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                       f"output_filter names an output twice: {list(request.output_filter)}")
  return list(request.output_filter) or list(signature_def.outputs)


def predict_with(servable: registry_lib.Servable, request: predict_pb2.PredictRequest,
                 limits: RequestLimits = RequestLimits()) -> predict_pb2.PredictResponse:
  """Runs a Predict request on one servable (also how warmup requests are replayed)."""
  signature_name = request.model_spec.signature_name or contract.SERVING_SIGNATURE
  if signature_name not in servable.signature_names:
    raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                       f'Serving signature key "{signature_name}" not found.')
  signature_def = servable.signature_defs[signature_name]
  inputs = _to_arrays(request, signature_def, signature_name, limits)
  output_keys = _output_keys(request, signature_def, signature_name)
  try:
    outputs = servable.run(signature_name, inputs)
  except tf.errors.OpError as error:
    # Raised by the model itself, e.g. an InvalidArgumentError from an assertion on the inputs.
    logging.warning("Model %s version %d failed on a request: %s", servable.name,
                    servable.version, error.message)
    raise ServingError(GRPC_CODES.get(error.error_code, grpc.StatusCode.INTERNAL),
                       model_error_message(error)) from error
  response = predict_pb2.PredictResponse()
  response.model_spec.name = servable.name
  response.model_spec.version.value = servable.version
  response.model_spec.signature_name = signature_name
  for key in output_keys:
    tensor_protos.fill_proto(response.outputs[key], outputs[key])
  return response


def predict(registry: registry_lib.ModelRegistry, request: predict_pb2.PredictRequest,
            limits: RequestLimits) -> predict_pb2.PredictResponse:
  """A client's Predict, over gRPC or REST; their servers log what it answers (warmup requests
  call `predict_with` directly and are not logged)."""
  return predict_with(find_servable(registry, request), request, limits)


def model_metadata(registry: registry_lib.ModelRegistry,
                   request: get_model_metadata_pb2.GetModelMetadataRequest
                   ) -> get_model_metadata_pb2.GetModelMetadataResponse:
  servable = find_servable(registry, request)
  if not request.metadata_field:
    raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                       "GetModelMetadataRequest must specify at least one metadata_field")
  for field in request.metadata_field:
    if field != SIGNATURE_DEF_FIELD:
      raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                         f"Metadata field {field} is not supported")
  signature_def_map = get_model_metadata_pb2.SignatureDefMap()
  for name, signature_def in servable.signature_defs.items():
    signature_def_map.signature_def[name].CopyFrom(signature_def)
  response = get_model_metadata_pb2.GetModelMetadataResponse()
  response.model_spec.name = servable.name
  response.model_spec.version.value = servable.version
  response.metadata[SIGNATURE_DEF_FIELD].Pack(signature_def_map)
  return response


def model_status(registry: registry_lib.ModelRegistry,
                 request: get_model_status_pb2.GetModelStatusRequest
                 ) -> get_model_status_pb2.GetModelStatusResponse:
  """Every version the server knows: AVAILABLE when served, END with the error when it failed."""
  spec = _model_spec(request)
  snapshot = registry.snapshot()
  statuses = {version: None for version in snapshot.servables}
  statuses.update(snapshot.failures)
  choice = spec.WhichOneof("version_choice")
  wanted: Optional[int] = None
  if choice == "version":
    wanted = spec.version.value
  elif choice == "version_label":
    wanted = _labelled_version(spec, snapshot)
  if spec.name != registry.model_name or not statuses:
    raise ServingError(grpc.StatusCode.NOT_FOUND,
                       f"Could not find any versions of model {spec.name}")
  if wanted is not None and wanted not in statuses:
    raise ServingError(grpc.StatusCode.NOT_FOUND,
                       f"Could not find version {wanted} of model {spec.name}")
  response = get_model_status_pb2.GetModelStatusResponse()
  for version in sorted(statuses, reverse=True):
    if wanted is not None and version != wanted:
      continue
    status = response.model_version_status.add(version=version)
    if statuses[version] is None:
      status.state = get_model_status_pb2.ModelVersionStatus.AVAILABLE
      status.status.SetInParent()  # error_code OK, as TF Serving reports a loaded version
    else:
      status.state = get_model_status_pb2.ModelVersionStatus.END
      status.status.error_code = grpc.StatusCode.UNKNOWN.value[0]
      status.status.error_message = statuses[version]
  return response
