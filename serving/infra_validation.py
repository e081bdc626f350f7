"""Infra validation: can the serving process load this model and answer in time?

The release gate judges what a model recommends; this judges whether it can be served at all,
before it is pushed. As TFX's InfraValidator does with a real model server, the candidate is
loaded by the serving process (`python -m serving.server`) in isolation: a separate process on a
private serving root, so a model that crashes the process, hangs while loading or fails its
warmup cannot touch the server in production. It then sends the model's own warmup requests
(components/models/warmup.py) over gRPC and checks:

  * the version becomes AVAILABLE within `load_timeout_seconds` (else GetModelStatus' error);
  * every request is answered, with item_ids, scores (and propensities) of one shape
    [batch, top_k], top_k ≥ 1, scores finite;
  * every returned id is in the catalog the model was trained on;
  * the p99 latency of `latency_requests` single-user requests is within the budget.
"""
import dataclasses
import os
import pathlib
import subprocess
import tempfile
import time
from typing import AbstractSet, Dict, List, Optional

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.apis import model_service_pb2_grpc
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from components.models import warmup
from schemas import contract
from serving import server as server_lib
from serving.config import InfraValidationConfig

_CHECKED_VERSION = 1


@dataclasses.dataclass(frozen=True)
class InfraReport:
  passed: bool
  reason: str  # one line: what failed, or what was checked
  requests_sent: int = 0
  latency_p50_ms: Optional[float] = None
  latency_p99_ms: Optional[float] = None

  def to_dict(self) -> Dict:
    return dataclasses.asdict(self)


class InfraValidationError(Exception):
  """The model cannot be served as it is."""


def validate(model_dir: os.PathLike, catalog: AbstractSet[str],
             model_name: str = contract.DEFAULT_MODEL_NAME,
             config: InfraValidationConfig = InfraValidationConfig()) -> InfraReport:
  """Loads the model in an isolated serving process and checks it as the module docstring says."""
  requests = warmup.read(model_dir)
  if not requests:
    return InfraReport(False, f"{model_dir} has no warmup requests ({warmup.WARMUP_FILE}); "
                              "the Trainer writes them at export")
  with tempfile.TemporaryDirectory(prefix="infra-validation-") as serving_root:
    version_dir = pathlib.Path(serving_root) / model_name / str(_CHECKED_VERSION)
    version_dir.parent.mkdir(parents=True)
    # A link, not a copy: the serving process only reads the model.
    os.symlink(os.path.abspath(model_dir), version_dir)
    # The server's log goes to a file in the private root: a pipe nobody reads could fill up
    # and block it.
    log = pathlib.Path(serving_root) / "server.log"
    try:
      with open(log, "w") as log_file, server_lib.running_process(
          pathlib.Path(serving_root), model_name, poll_seconds=0,
          stderr=log_file) as (target, process):
        with grpc.insecure_channel(target) as channel:
          _wait_until_loaded(model_service_pb2_grpc.ModelServiceStub(channel), model_name,
                             process, log, config.load_timeout_seconds)
          predict = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict
          for index, request in enumerate(requests):
            _check_response(_send(predict, request, config), request, catalog,
                            f"warmup request {index}")
          latencies = _latencies(predict, requests[0], config)
    except InfraValidationError as error:
      return InfraReport(False, str(error), len(requests))
  p50, p99 = np.percentile(latencies, [50, 99])
  sent = len(requests) + len(latencies)
  if p99 > config.latency_budget_ms:
    return InfraReport(False, f"p99 latency {p99:.1f} ms exceeds the budget of "
                              f"{config.latency_budget_ms:g} ms (p50 {p50:.1f} ms)",
                       sent, float(p50), float(p99))
  return InfraReport(True, f"loaded, answered {sent} requests with catalog ids; p99 "
                           f"{p99:.1f} ms within {config.latency_budget_ms:g} ms",
                     sent, float(p50), float(p99))


def _wait_until_loaded(models: model_service_pb2_grpc.ModelServiceStub, model_name: str,
                       process: subprocess.Popen, log: pathlib.Path, timeout: float) -> None:
  """Returns once the version is AVAILABLE; raises with the reason it never will be."""
  request = get_model_status_pb2.GetModelStatusRequest()
  request.model_spec.name = model_name
  deadline = time.monotonic() + timeout
  last_seen = "no answer"
  while time.monotonic() < deadline:
    if process.poll() is not None:
      raise InfraValidationError(f"the serving process exited with code {process.returncode} "
                                 f"while loading: {_last_line(log.read_text())}")
    try:
      (status,) = models.GetModelStatus(request, timeout=2.0).model_version_status
      if status.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE:
        return
      if status.state == get_model_status_pb2.ModelVersionStatus.END:
        raise InfraValidationError(status.status.error_message)
      last_seen = get_model_status_pb2.ModelVersionStatus.State.Name(status.state)
    except grpc.RpcError as error:  # not listening yet, or nothing loaded yet
      last_seen = f"{error.code().name}: {error.details()}"
    time.sleep(0.25)
  raise InfraValidationError(f"not AVAILABLE within {timeout:g} s; last seen: {last_seen}")


def _last_line(text: str) -> str:
  lines = [line for line in (text or "").splitlines() if line.strip()]
  return lines[-1] if lines else "(no output)"


def _send(predict, request: predict_pb2.PredictRequest,
          config: InfraValidationConfig) -> predict_pb2.PredictResponse:
  try:
    return predict(request, timeout=config.request_timeout_seconds)
  except grpc.RpcError as error:
    raise InfraValidationError(f"Predict failed: {error.code().name}: {error.details()}") from error


def _check_response(response: predict_pb2.PredictResponse, request: predict_pb2.PredictRequest,
                    catalog: AbstractSet[str], what: str) -> None:
  batch = tf.TensorShape(request.inputs[contract.USER_ID].tensor_shape)[0]
  missing = {contract.ITEM_IDS, contract.SCORES} - set(response.outputs)
  if missing:
    raise InfraValidationError(f"{what}: the answer lacks outputs {sorted(missing)}")
  outputs = {key: tf.make_ndarray(tensor) for key, tensor in response.outputs.items()}
  item_ids = outputs[contract.ITEM_IDS]
  if item_ids.ndim != 2 or item_ids.shape[0] != batch or item_ids.shape[1] < 1:
    raise InfraValidationError(f"{what}: item_ids has shape {list(item_ids.shape)}, expected "
                               f"[{batch}, top_k ≥ 1]")
  for key, value in outputs.items():
    if value.shape != item_ids.shape:
      raise InfraValidationError(f"{what}: {key} has shape {list(value.shape)}, item_ids "
                                 f"{list(item_ids.shape)}")
  if not np.isfinite(outputs[contract.SCORES]).all():
    raise InfraValidationError(f"{what}: scores are not all finite")
  unknown = sorted({item.decode() for item in item_ids.ravel()} - set(catalog))
  if unknown:
    raise InfraValidationError(f"{what}: {len(unknown)} returned ids are not in the catalog, "
                               f"e.g. {unknown[:5]}")


def _latencies(predict, request: predict_pb2.PredictRequest,
               config: InfraValidationConfig) -> List[float]:
  latencies = []
  for _ in range(config.latency_requests):
    start = time.perf_counter()
    _send(predict, request, config)
    latencies.append((time.perf_counter() - start) * 1000)
  return latencies
