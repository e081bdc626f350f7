"""A local stand-in for TensorFlow Serving: its gRPC and REST APIs, served from a serving root.

Production runs stock `tensorflow/serving`, which cannot be installed everywhere we develop. This
process implements the same services from tensorflow-serving-api's protos (`PredictionService`
Predict and GetModelMetadata, `ModelService` GetModelStatus), TF Serving's REST API and its
Prometheus metrics path, reads the same serving root (serving/push.py: models.config with its
version labels, `<serving_root>/<model_name>/<version>/`), replays the models' warmup requests
and answers with the same status codes, so one client works unchanged against both.

It polls the serving root (serving/registry.py) and swaps new versions in without failing a
request; a version that fails to load leaves the old one serving. It binds 127.0.0.1 unless told
otherwise, and on SIGTERM/SIGINT lets requests in flight finish before stopping.

  python -m serving.server --serving-root .recsys/serving --port 8500 --rest-port 8501
"""
import argparse
from concurrent import futures
import contextlib
import dataclasses
import functools
import logging
import pathlib
import signal
import socket
import subprocess
import sys
import threading
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import grpc
from tensorflow_serving.apis import get_model_metadata_pb2
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.apis import model_service_pb2_grpc
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from schemas import contract
from serving import handlers
from serving import metrics as metrics_lib
from serving import registry as registry_lib
from serving import request_log as request_log_lib
from serving import rest
from serving.config import RequestLogWriterConfig

_LOGGER = logging.getLogger(__name__)

# How long in-flight requests may finish after SIGTERM/SIGINT.
SHUTDOWN_GRACE_SECONDS = 5.0
# How often the serving root is polled for new versions and labels.
DEFAULT_POLL_SECONDS = 2.0
# `python -m serving.server` runs from here, whatever the caller's working directory.
_REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _answers_with_grpc_status(method: Callable) -> Callable:
  """Times and counts every RPC, and turns each failure into the status TF Serving answers.

  Without this, grpc answers UNKNOWN with a Python traceback for anything unexpected.
  """

  @functools.wraps(method)
  def wrapper(self, request, context: grpc.ServicerContext):
    with self._metrics.observe(method.__name__, "grpc") as outcome:
      try:
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
          raise handlers.ServingError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                      "the deadline passed before the request was handled")
        return method(self, request, context)
      except handlers.ServingError as error:
        outcome.code = error.code
        context.abort(error.code, error.message)
      except Exception as error:  # pylint: disable=broad-except
        outcome.code = grpc.StatusCode.INTERNAL
        _LOGGER.exception("%s failed", method.__name__)
        context.abort(grpc.StatusCode.INTERNAL,
                      f"{method.__name__} failed: {type(error).__name__}: {error}")

  return wrapper


class PredictionServiceServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
  """TF Serving's PredictionService for the model in a registry: Predict and GetModelMetadata."""

  def __init__(self, registry: registry_lib.ModelRegistry, limits: handlers.RequestLimits,
               metrics: metrics_lib.ServingMetrics, request_log: request_log_lib.RequestLogger):
    self._registry = registry
    self._limits = limits
    self._metrics = metrics
    self._request_log = request_log

  @_answers_with_grpc_status
  def Predict(self, request: predict_pb2.PredictRequest,
              context: grpc.ServicerContext) -> predict_pb2.PredictResponse:
    request_id = request_log_lib.echo_grpc_request_id(context)
    response = handlers.predict(self._registry, request, self._limits)
    self._request_log.log(request, response, request_id)
    return response

  @_answers_with_grpc_status
  def GetModelMetadata(
      self, request: get_model_metadata_pb2.GetModelMetadataRequest,
      context: grpc.ServicerContext) -> get_model_metadata_pb2.GetModelMetadataResponse:
    return handlers.model_metadata(self._registry, request)

  def _unimplemented(self, request, context: grpc.ServicerContext):
    """The model has a predict signature only; the other TF Serving APIs do not apply to it."""
    context.abort(grpc.StatusCode.UNIMPLEMENTED,
                  "only Predict and GetModelMetadata are implemented by this server")

  Classify = Regress = MultiInference = _unimplemented


class ModelServiceServicer(model_service_pb2_grpc.ModelServiceServicer):
  """TF Serving's ModelService for the model in a registry: GetModelStatus."""

  def __init__(self, registry: registry_lib.ModelRegistry, metrics: metrics_lib.ServingMetrics):
    self._registry = registry
    self._metrics = metrics

  @_answers_with_grpc_status
  def GetModelStatus(
      self, request: get_model_status_pb2.GetModelStatusRequest,
      context: grpc.ServicerContext) -> get_model_status_pb2.GetModelStatusResponse:
    return handlers.model_status(self._registry, request)

  def HandleReloadConfigRequest(self, request, context: grpc.ServicerContext):
    context.abort(grpc.StatusCode.UNIMPLEMENTED,
                  "this server reads its model config from the serving root (models.config)")


@dataclasses.dataclass
class ModelServer:
  """The gRPC server, the REST server and the poller of one serving root, started together."""

  registry: registry_lib.ModelRegistry
  grpc_server: grpc.Server
  port: int
  rest_server: Optional[rest.RestServer]
  poller: Optional[registry_lib.Poller]
  request_log: request_log_lib.RequestLogger

  @property
  def rest_port(self) -> Optional[int]:
    return self.rest_server.port if self.rest_server else None

  def start(self) -> None:
    self.request_log.start()
    self.grpc_server.start()
    if self.rest_server:
      self.rest_server.serve_in_background()
    if self.poller:
      self.poller.start()

  def stop(self, grace: Optional[float] = None) -> None:
    """Stops taking requests, lets those in flight finish within `grace` seconds, then writes
    and closes the request log."""
    if self.poller:
      self.poller.stop()
    if self.rest_server:
      self.rest_server.stop()
    self.grpc_server.stop(grace=grace).wait()
    self.request_log.stop()


def build_server(serving_root: pathlib.Path, model_name: str = contract.DEFAULT_MODEL_NAME,
                 host: str = "127.0.0.1", port: int = 8500, rest_port: Optional[int] = None,
                 poll_seconds: Optional[float] = DEFAULT_POLL_SECONDS, max_workers: int = 8,
                 limits: handlers.RequestLimits = handlers.RequestLimits(),
                 request_log: RequestLogWriterConfig = RequestLogWriterConfig()) -> ModelServer:
  """A server, not yet started, serving what the serving root asks for.

  The first load happens here, before the server listens, so it answers from its first request.
  It starts without any version too, answering NOT_FOUND as TF Serving does until one is loaded.
  Port 0 picks a free port (the bound ports are on the returned server); `rest_port=None` serves
  no REST API and `poll_seconds=None` never reloads. Requests are logged as the model's
  logging_config in models.config asks (serving/request_log.py), written as `request_log` says.
  """
  registry = registry_lib.ModelRegistry(
      serving_root, model_name,
      run_warmup_request=lambda servable, request: handlers.predict_with(
          servable, request, limits))
  registry.refresh()
  metrics = metrics_lib.ServingMetrics(registry)
  request_logger = request_log_lib.RequestLogger(lambda: registry.snapshot().request_logging,
                                                 metrics.registry, request_log)
  # Without SO_REUSEPORT a port already in use fails here, instead of silently sharing it (and
  # its requests) with another server, such as one left running from an earlier session.
  grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers),
                            options=[("grpc.so_reuseport", 0)])
  prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
      PredictionServiceServicer(registry, limits, metrics, request_logger), grpc_server)
  model_service_pb2_grpc.add_ModelServiceServicer_to_server(
      ModelServiceServicer(registry, metrics), grpc_server)
  address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"  # IPv6 literals need brackets
  bound_port = grpc_server.add_insecure_port(address)
  rest_server = (rest.RestServer((host, rest_port), registry, limits, metrics, request_logger)
                 if rest_port is not None else None)
  poller = registry_lib.Poller(registry, poll_seconds) if poll_seconds else None
  return ModelServer(registry, grpc_server, bound_port, rest_server, poller, request_logger)


def command(serving_root: pathlib.Path, model_name: str = contract.DEFAULT_MODEL_NAME,
            host: str = "127.0.0.1", port: int = 8500, rest_port: Optional[int] = None,
            poll_seconds: float = DEFAULT_POLL_SECONDS,
            request_log: RequestLogWriterConfig = RequestLogWriterConfig()) -> List[str]:
  """The command line that runs this server in a process of its own (see `main`)."""
  arguments = [sys.executable, "-m", "serving.server", "--serving-root", str(serving_root),
               "--model-name", model_name, "--host", host, "--port", str(port),
               "--poll-seconds", str(poll_seconds),
               "--request-log-max-file-bytes", str(request_log.max_file_bytes),
               "--request-log-max-file-seconds", str(request_log.max_file_seconds),
               "--request-log-queue-records", str(request_log.queue_records)]
  return arguments + (["--rest-port", str(rest_port)] if rest_port is not None else [])


def free_loopback_port() -> int:
  with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    return probe.getsockname()[1]


@contextlib.contextmanager
def running_process(serving_root: pathlib.Path, model_name: str = contract.DEFAULT_MODEL_NAME,
                    poll_seconds: float = DEFAULT_POLL_SECONDS,
                    stderr=None) -> Iterator[Tuple[str, subprocess.Popen]]:
  """This server in its own process on a free loopback port: yields (target, process).

  On exit it is stopped as a deployment stops it (SIGTERM, requests in flight finish), and
  killed if it has not stopped within 30 s.
  """
  port = free_loopback_port()
  process = subprocess.Popen(command(serving_root, model_name, port=port,
                                     poll_seconds=poll_seconds),
                             cwd=_REPO_ROOT, stdout=subprocess.DEVNULL, stderr=stderr)
  try:
    yield f"127.0.0.1:{port}", process
  finally:
    process.terminate()
    try:
      process.wait(timeout=30)
    except subprocess.TimeoutExpired:
      process.kill()
      process.wait()


def parse_arguments(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  """`main`'s command line (see `command`), with the request log's flags as `request_log`."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--serving-root", required=True, type=pathlib.Path,
                      help="Holds models.config and <model-name>/<version>/ SavedModels.")
  parser.add_argument("--model-name", default=contract.DEFAULT_MODEL_NAME)
  parser.add_argument("--host", default="127.0.0.1",
                      help="Interface to bind; the default keeps the server off the network.")
  parser.add_argument("--port", type=int, default=8500, help="gRPC port; 0 picks a free port.")
  parser.add_argument("--rest-port", type=int, default=None,
                      help="REST and metrics port (TF Serving uses 8501); none by default.")
  parser.add_argument("--poll-seconds", type=float, default=DEFAULT_POLL_SECONDS,
                      help="How often to look for new versions and labels; 0 never.")
  parser.add_argument("--max-batch-size", type=int, default=handlers.RequestLimits.max_batch_size)
  parser.add_argument("--max-history-length", type=int,
                      default=handlers.RequestLimits.max_history_length)
  parser.add_argument("--request-log-max-file-bytes", type=int,
                      default=RequestLogWriterConfig.max_file_bytes,
                      help="A request log file is closed at this size.")
  parser.add_argument("--request-log-max-file-seconds", type=float,
                      default=RequestLogWriterConfig.max_file_seconds,
                      help="...or this long after it was opened.")
  parser.add_argument("--request-log-queue-records", type=int,
                      default=RequestLogWriterConfig.queue_records,
                      help="Records waiting to be written; beyond, they are dropped and counted.")
  args = parser.parse_args(argv)
  args.request_log = RequestLogWriterConfig(max_file_bytes=args.request_log_max_file_bytes,
                                            max_file_seconds=args.request_log_max_file_seconds,
                                            queue_records=args.request_log_queue_records)
  return args


def main(argv: Optional[Sequence[str]] = None) -> None:
  args = parse_arguments(argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  # TensorFlow's INFO lines (a Saver restoring each version's variables) say nothing the
  # registry's "Loaded model" line does not.
  logging.getLogger("tensorflow").setLevel(logging.WARNING)

  server = build_server(args.serving_root, args.model_name, args.host, args.port, args.rest_port,
                        args.poll_seconds or None, limits=handlers.RequestLimits(
                            max_batch_size=args.max_batch_size,
                            max_history_length=args.max_history_length),
                        request_log=args.request_log)
  server.start()
  _LOGGER.info("Listening for gRPC on %s:%d%s", args.host, server.port,
               f", REST on port {server.rest_port}" if server.rest_port else "")
  stopped = threading.Event()

  def stop(signum, frame):
    del frame
    _LOGGER.info("%s: finishing requests in flight, then stopping", signal.Signals(signum).name)
    stopped.set()

  for signum in (signal.SIGTERM, signal.SIGINT):
    signal.signal(signum, stop)
  stopped.wait()
  server.stop(grace=SHUTDOWN_GRACE_SECONDS)
  _LOGGER.info("Stopped")


if __name__ == "__main__":
  main()
