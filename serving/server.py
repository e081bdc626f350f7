"""A local stand-in for TensorFlow Serving: its gRPC API, served from a SavedModel on disk.

Production runs stock `tensorflow/serving`, which cannot be installed everywhere we develop. This
process implements the same services from tensorflow-serving-api's protos (`PredictionService`
Predict and GetModelMetadata, `ModelService` GetModelStatus), reads the same serving root layout
(`<serving_root>/<model_name>/<version>/`) and answers with the same gRPC status codes, so one
client works unchanged against both.

  python -m serving.server --serving-root .recsys/serving --port 8500
"""
import argparse
import dataclasses
import functools
import logging
import pathlib
import signal
import threading
from concurrent import futures
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import grpc
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow.python.saved_model import loader_impl
from tensorflow_serving.apis import get_model_metadata_pb2
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.apis import model_pb2
from tensorflow_serving.apis import model_service_pb2_grpc
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from serving import signature

_LOGGER = logging.getLogger(__name__)

# The Pusher copies this file last, so its presence marks a version directory as complete.
SAVED_MODEL_PB = "saved_model.pb"
# The only GetModelMetadata field TF Serving knows for SavedModels.
SIGNATURE_DEF_FIELD = "signature_def"
# How long in-flight requests may finish after SIGTERM/SIGINT.
SHUTDOWN_GRACE_SECONDS = 5.0

# TensorFlow's status codes are gRPC's, number for number; TF Serving passes a model's error
# code through to the client, and so do we.
_GRPC_CODES = {code.value[0]: code for code in grpc.StatusCode}


class ServingError(Exception):
  """A request the server refuses, with the gRPC status code TF Serving answers it with."""

  def __init__(self, code: grpc.StatusCode, message: str):
    super().__init__(message)
    self.code = code
    self.message = message


@dataclasses.dataclass(frozen=True)
class Servable:
  """One loaded version of a model; immutable, so a request keeps a consistent view of it."""

  name: str
  version: int
  path: pathlib.Path
  # What `tf.saved_model.load` returns; `model.signatures` holds the callable signatures.
  model: Any
  # The SignatureDefs as stored in saved_model.pb: what TF Serving validates requests against and
  # returns from GetModelMetadata (dtypes and shapes, which the loaded functions do not expose).
  signature_defs: Mapping[str, meta_graph_pb2.SignatureDef]

  @classmethod
  def load(cls, name: str, version: int, path: pathlib.Path) -> "Servable":
    saved_model = loader_impl.parse_saved_model(str(path))
    meta_graph = next((graph for graph in saved_model.meta_graphs
                       if tf.saved_model.SERVING in graph.meta_info_def.tags), None)
    if meta_graph is None:
      raise ValueError(f"{path} has no MetaGraph tagged '{tf.saved_model.SERVING}'")
    model = tf.saved_model.load(str(path), tags=[tf.saved_model.SERVING])
    return cls(name, version, path, model, dict(meta_graph.signature_def))


def latest_version(base_path: pathlib.Path) -> Optional[int]:
  """The newest complete version under a model's base path, as TF Serving's `latest` policy picks.

  Versions are integer directory names; anything else (such as the Pusher's temporary '.'-dirs)
  is not a version, and a version without saved_model.pb is still being copied.
  """
  versions = [int(marker.parent.name) for marker in base_path.glob(f"*/{SAVED_MODEL_PB}")
              if marker.parent.name.isdecimal()]
  return max(versions, default=None)


class ModelRegistry:
  """The servable of one model, swapped under a lock.

  Servicers take the current servable once per request, so a version loaded later (for example
  by a poller calling `load_latest`) replaces it without disturbing requests in flight.
  """

  def __init__(self, serving_root: pathlib.Path, model_name: str):
    self.model_name = model_name
    self.base_path = pathlib.Path(serving_root) / model_name
    self._lock = threading.Lock()
    self._servable: Optional[Servable] = None

  def current(self) -> Optional[Servable]:
    with self._lock:
      return self._servable

  def load_latest(self) -> Optional[Servable]:
    """Loads the newest complete version unless it is already served; returns what is served."""
    version = latest_version(self.base_path)
    served = self.current()
    if version is None:
      _LOGGER.warning("No complete version of model %r under %s (a version is an integer "
                      "directory holding %s)", self.model_name, self.base_path, SAVED_MODEL_PB)
      return served
    if served is not None and served.version == version:
      return served
    path = self.base_path / str(version)
    # Loading takes seconds; it happens outside the lock so requests keep using the old version.
    servable = Servable.load(self.model_name, version, path)
    with self._lock:
      self._servable = servable
    _LOGGER.info("Serving model %r version %d from %s", self.model_name, version, path)
    return servable


def _answers_with_grpc_status(method: Callable) -> Callable:
  """Turns every failure of an RPC method into the gRPC status TF Serving would answer with.

  Without this, grpc answers UNKNOWN with a Python traceback for anything unexpected.
  """

  @functools.wraps(method)
  def wrapper(self, request, context: grpc.ServicerContext):
    try:
      return method(self, request, context)
    except ServingError as error:
      context.abort(error.code, error.message)
    except tf.errors.OpError as error:
      # Raised by the model itself, e.g. an InvalidArgumentError from an assertion on the inputs.
      context.abort(_GRPC_CODES.get(error.error_code, grpc.StatusCode.INTERNAL), error.message)
    except Exception as error:  # pylint: disable=broad-except
      _LOGGER.exception("%s failed", method.__name__)
      context.abort(grpc.StatusCode.INTERNAL,
                    f"{method.__name__} failed: {type(error).__name__}: {error}")

  return wrapper


def _model_spec(request) -> model_pb2.ModelSpec:
  if not request.HasField("model_spec"):
    raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
  return request.model_spec


def _find_servable(registry: ModelRegistry, request) -> Servable:
  """The servable a request's model_spec names, or NOT_FOUND with TF Serving's message."""
  spec = _model_spec(request)
  if spec.WhichOneof("version_choice") == "version_label":
    # TF Serving only knows labels from its model config; this server has none.
    raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                       f"Unrecognized servable version label: {spec.version_label}")
  servable = registry.current()
  wanted_version = spec.version.value if spec.HasField("version") else None
  if (spec.name != registry.model_name or servable is None
      or wanted_version not in (None, servable.version)):
    servable_request = (f"Latest({spec.name})" if wanted_version is None
                        else f"Specific({spec.name}, {wanted_version})")
    raise ServingError(grpc.StatusCode.NOT_FOUND,
                       f"Servable not found for request: {servable_request}")
  return servable


def _check_input(key: str, tensor: tensor_pb2.TensorProto, expected: meta_graph_pb2.TensorInfo,
                 signature_name: str) -> None:
  """Rejects an input whose dtype or shape the signature cannot take, naming both."""
  if tensor.dtype != expected.dtype:
    raise ServingError(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"input '{key}' has dtype {types_pb2.DataType.Name(tensor.dtype)}, but signature "
        f"'{signature_name}' expects {types_pb2.DataType.Name(expected.dtype)}")
  shape, expected_shape = tf.TensorShape(tensor.tensor_shape), tf.TensorShape(expected.tensor_shape)
  if not shape.is_compatible_with(expected_shape):
    raise ServingError(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"input '{key}' has shape {shape} (rank {shape.rank}), but signature '{signature_name}' "
        f"expects shape {expected_shape} (rank {expected_shape.rank})")


def _to_tensors(request: predict_pb2.PredictRequest, signature_def: meta_graph_pb2.SignatureDef,
                signature_name: str) -> Dict[str, tf.Tensor]:
  """The request's inputs as tensors, after checking them against the signature."""
  missing = sorted(set(signature_def.inputs) - set(request.inputs))
  extra = sorted(set(request.inputs) - set(signature_def.inputs))
  if missing or extra:
    raise ServingError(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"inputs do not match signature '{signature_name}', which takes "
        f"{sorted(signature_def.inputs)}: missing {missing}, unexpected {extra}")
  tensors = {}
  for key, tensor in request.inputs.items():
    _check_input(key, tensor, signature_def.inputs[key], signature_name)
    try:
      array = tf.make_ndarray(tensor)
    except ValueError as error:  # e.g. fewer values than its shape needs
      raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                         f"input '{key}' is not a valid TensorProto: {error}") from error
    tensors[key] = tf.convert_to_tensor(array, dtype=tf.dtypes.as_dtype(tensor.dtype))
  return tensors


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


class PredictionServiceServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
  """TF Serving's PredictionService for the model in a registry: Predict and GetModelMetadata."""

  def __init__(self, registry: ModelRegistry):
    self._registry = registry

  @_answers_with_grpc_status
  def Predict(self, request: predict_pb2.PredictRequest,
              context: grpc.ServicerContext) -> predict_pb2.PredictResponse:
    servable = _find_servable(self._registry, request)
    signature_name = request.model_spec.signature_name or signature.SERVING_SIGNATURE
    # `model.signatures` holds the callable signatures; the SignatureDef map also lists
    # internal ones such as '__saved_model_init_op', which cannot be called.
    if signature_name not in servable.model.signatures:
      raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                         f'Serving signature key "{signature_name}" not found.')
    signature_def = servable.signature_defs[signature_name]
    inputs = _to_tensors(request, signature_def, signature_name)
    output_keys = _output_keys(request, signature_def, signature_name)

    outputs = servable.model.signatures[signature_name](**inputs)
    response = predict_pb2.PredictResponse()
    response.model_spec.name = servable.name
    response.model_spec.version.value = servable.version
    response.model_spec.signature_name = signature_name
    for key in output_keys:
      response.outputs[key].CopyFrom(tf.make_tensor_proto(outputs[key].numpy()))
    return response

  @_answers_with_grpc_status
  def GetModelMetadata(
      self, request: get_model_metadata_pb2.GetModelMetadataRequest,
      context: grpc.ServicerContext) -> get_model_metadata_pb2.GetModelMetadataResponse:
    servable = _find_servable(self._registry, request)
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

  def _unimplemented(self, request, context: grpc.ServicerContext):
    """The model has a predict signature only; the other TF Serving APIs do not apply to it."""
    context.abort(grpc.StatusCode.UNIMPLEMENTED,
                  "only Predict and GetModelMetadata are implemented by this server")

  Classify = Regress = MultiInference = _unimplemented


class ModelServiceServicer(model_service_pb2_grpc.ModelServiceServicer):
  """TF Serving's ModelService for the model in a registry: GetModelStatus."""

  def __init__(self, registry: ModelRegistry):
    self._registry = registry

  @_answers_with_grpc_status
  def GetModelStatus(
      self, request: get_model_status_pb2.GetModelStatusRequest,
      context: grpc.ServicerContext) -> get_model_status_pb2.GetModelStatusResponse:
    spec = _model_spec(request)
    servable = self._registry.current()
    if spec.name != self._registry.model_name or servable is None:
      raise ServingError(grpc.StatusCode.NOT_FOUND,
                         f"Could not find any versions of model {spec.name}")
    if spec.HasField("version") and spec.version.value != servable.version:
      raise ServingError(grpc.StatusCode.NOT_FOUND,
                         f"Could not find version {spec.version.value} of model {spec.name}")
    response = get_model_status_pb2.GetModelStatusResponse()
    # The default status is error_code OK, which is what TF Serving reports for a loaded version.
    response.model_version_status.add(
        version=servable.version, state=get_model_status_pb2.ModelVersionStatus.AVAILABLE)
    return response

  def HandleReloadConfigRequest(self, request, context: grpc.ServicerContext):
    context.abort(grpc.StatusCode.UNIMPLEMENTED,
                  "this server serves one model from --serving-root and takes no model config")


def build_server(serving_root: pathlib.Path, model_name: str = signature.DEFAULT_MODEL_NAME,
                 host: str = "127.0.0.1", port: int = 8500,
                 max_workers: int = 8) -> Tuple[grpc.Server, int]:
  """A gRPC server, not yet started, serving the newest complete version of `model_name`.

  It starts without any version too, answering NOT_FOUND as TF Serving does until one is loaded.
  Port 0 picks a free port; the port actually bound is returned with the server.
  """
  registry = ModelRegistry(serving_root, model_name)
  registry.load_latest()
  # Without SO_REUSEPORT a port already in use fails here, instead of silently sharing it (and
  # its requests) with another server, such as one left running from an earlier session.
  server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers),
                       options=[("grpc.so_reuseport", 0)])
  prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
      PredictionServiceServicer(registry), server)
  model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServiceServicer(registry), server)
  address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"  # IPv6 literals need brackets
  bound_port = server.add_insecure_port(address)
  return server, bound_port


def main(argv: Optional[Sequence[str]] = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--serving-root", required=True, type=pathlib.Path,
                      help="Holds <model-name>/<version>/ SavedModel directories.")
  parser.add_argument("--model-name", default=signature.DEFAULT_MODEL_NAME)
  parser.add_argument("--host", default="127.0.0.1",
                      help="Interface to bind; the default keeps the server off the network.")
  parser.add_argument("--port", type=int, default=8500, help="0 picks a free port.")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

  server, port = build_server(args.serving_root, args.model_name, args.host, args.port)
  server.start()
  _LOGGER.info("Listening for gRPC on %s:%d", args.host, port)

  def stop(signum, frame):
    _LOGGER.info("%s: finishing requests in flight, then stopping", signal.Signals(signum).name)
    server.stop(grace=SHUTDOWN_GRACE_SECONDS)

  for signum in (signal.SIGTERM, signal.SIGINT):
    signal.signal(signum, stop)
  server.wait_for_termination()
  _LOGGER.info("Stopped")


if __name__ == "__main__":
  main()
