"""The versions a server serves, loaded in the background and swapped in whole.

What to serve comes from the serving root (serving/push.py writes it): the versions listed in
models.config with their labels, or without that file the newest complete version, as TF Serving's
`latest` policy. `ModelRegistry.refresh` loads what is wanted and not yet loaded, replays the
model's warmup requests, and only then publishes a new immutable `Snapshot`; requests read one
snapshot each, so a swap never fails a request in flight. A version that fails to load or to answer
its warmup requests is recorded (GetModelStatus reports it, state END with the error) and not
retried, and the label keeps pointing at the version that served before: the old model keeps
serving.
"""
import dataclasses
import logging
import pathlib
import threading
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow.python.saved_model import constants as saved_model_constants
from tensorflow.python.saved_model import loader_impl
from tensorflow_serving.config import logging_config_pb2

from components.models import warmup
from serving import model_config
from serving import push

_LOGGER = logging.getLogger(__name__)


# Each Session.run executes on the thread that calls it instead of being handed to TensorFlow's
# inter-op thread pool. A request's graph is a few dozen small ops: waking a pool thread for it
# costs more than the ops (0.3 ms of a 1.2 ms call at 10k items, measured with a gap between
# calls as requests arrive, README "Latency"), and the server's request threads are the
# parallelism. TensorFlow allows this for graphs without ops that wait on one another (queues),
# which a serving signature does not have.
_SESSION_CONFIG = config_pb2.ConfigProto(inter_op_parallelism_threads=-1)
# SignatureDefs a SavedModel stores for its own loading and training: never served.
_INTERNAL_SIGNATURES = frozenset({saved_model_constants.INIT_OP_SIGNATURE_KEY,
                                  saved_model_constants.TRAIN_OP_SIGNATURE_KEY})


@dataclasses.dataclass(frozen=True)
class Servable:
  """One loaded version of a model, run as TF Serving runs it: its SignatureDefs in a Session.

  TF Serving loads a SavedModel's MetaGraph into a session and runs a signature by feeding its
  input tensors and fetching its outputs. A session callable does that here too, from numpy
  arrays to numpy arrays. Calling the TF2 object's signature function instead (what
  `tf.saved_model.load` gives) binds keyword arguments and converts every input and output
  between numpy and eager tensors: about 0.5 ms more per request over gRPC at batch 1, at 10k
  items (README, "Latency").
  """

  name: str
  version: int
  path: pathlib.Path
  # The SignatureDefs as stored in saved_model.pb: what TF Serving validates requests against and
  # returns from GetModelMetadata.
  signature_defs: Mapping[str, meta_graph_pb2.SignatureDef]
  _signatures: Mapping[str, "_SessionSignature"]

  @classmethod
  def load(cls, name: str, version: int, path: pathlib.Path) -> "Servable":
    loader = loader_impl.SavedModelLoader(str(path))
    meta_graph = next((graph for graph in loader.saved_model.meta_graphs
                       if tf.saved_model.SERVING in graph.meta_info_def.tags), None)
    if meta_graph is None:
      raise ValueError(f"{path} has no MetaGraph tagged '{tf.saved_model.SERVING}'")
    session = tf.compat.v1.Session(graph=tf.Graph(), config=_SESSION_CONFIG)
    loader.load(session, [tf.saved_model.SERVING])
    signatures = {name: _SessionSignature.of(session, signature_def)
                  for name, signature_def in meta_graph.signature_def.items()
                  if name not in _INTERNAL_SIGNATURES}
    return cls(name, version, path, dict(meta_graph.signature_def), signatures)

  @property
  def signature_names(self) -> List[str]:
    """The signatures a request can run: the stored ones but the SavedModel's internal ones."""
    return sorted(self._signatures)

  def run(self, signature_name: str, inputs: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """The signature's outputs for `inputs`, which name each of its SignatureDef's inputs.

    Raises the model's tf.errors.OpError when it fails on the inputs.
    """
    signature = self._signatures[signature_name]
    outputs = signature.call(*[inputs[key] for key in signature.input_keys])
    return dict(zip(signature.output_keys, outputs))


@dataclasses.dataclass(frozen=True)
class _SessionSignature:
  """One SignatureDef as a session callable: arrays of its inputs in, arrays of its outputs out."""

  input_keys: Tuple[str, ...]
  output_keys: Tuple[str, ...]
  # Holds the session: it closes when the last request of a version no longer served lets go.
  call: Callable[..., List[np.ndarray]]

  @classmethod
  def of(cls, session: tf.compat.v1.Session,
         signature_def: meta_graph_pb2.SignatureDef) -> "_SessionSignature":
    input_keys, output_keys = tuple(sorted(signature_def.inputs)), tuple(
        sorted(signature_def.outputs))
    # `make_callable` with feeds goes through `Session.run`'s Python feed and fetch handling on
    # every call (0.3-0.4 ms at batch 1); a callable made from CallableOptions hands the arrays
    # to the C API as they are, as TF Serving's C++ Session::Run does. Keras' graph-mode
    # functions (tf_keras' backend.GraphExecutionFunction) make theirs the same way. The arrays
    # must have the signature's dtypes, which `handlers` checks before a request gets here.
    options = config_pb2.CallableOptions(
        feed=[signature_def.inputs[key].name for key in input_keys],
        fetch=[signature_def.outputs[key].name for key in output_keys])
    return cls(input_keys, output_keys,
               session._make_callable_from_options(options))  # pylint: disable=protected-access


@dataclasses.dataclass(frozen=True)
class Snapshot:
  """What is served at one moment; never changed, only replaced."""

  servables: Mapping[int, Servable] = dataclasses.field(default_factory=dict)
  # Label -> loaded version; '' is the newest version when the serving root has no models.config.
  labels: Mapping[str, int] = dataclasses.field(default_factory=dict)
  failures: Mapping[int, str] = dataclasses.field(default_factory=dict)  # version -> error
  # The model's request logging in models.config, its path on this machine; None logs nothing.
  request_logging: Optional[logging_config_pb2.LoggingConfig] = None

  def latest(self) -> Optional[Servable]:
    """The servable a request without version or label gets: the newest, as in TF Serving."""
    return self.servables[max(self.servables)] if self.servables else None


# Runs one warmup request against a freshly loaded servable; raises if it cannot be answered.
WarmupRunner = Callable[[Servable, Any], None]


class ModelRegistry:
  """The served versions of one model, refreshed from the serving root."""

  def __init__(self, serving_root: pathlib.Path, model_name: str,
               run_warmup_request: Optional[WarmupRunner] = None):
    self.model_name = model_name
    self.serving_root = pathlib.Path(serving_root)
    self.base_path = self.serving_root / model_name
    self._run_warmup_request = run_warmup_request
    self._snapshot = Snapshot()
    self._refresh_lock = threading.Lock()  # one refresh at a time; requests never wait on it

  def snapshot(self) -> Snapshot:
    return self._snapshot  # replaced whole by one assignment: atomic for readers

  def wanted(self) -> Tuple[List[int], Dict[str, int]]:
    """(versions, label -> version) the serving root asks to serve.

    models.config decides when it lists the model; otherwise the newest complete version is
    served, labelled '' (no client can ask for that label).
    """
    served, labels = model_config.read(self.serving_root, self.model_name)
    if served:
      return served, labels
    available = push.versions(self.base_path)
    return (available[-1:], {"": available[-1]}) if available else ([], {})

  def refresh(self) -> Snapshot:
    """Loads what the serving root wants and is not loaded; publishes and returns the snapshot."""
    with self._refresh_lock:
      old = self._snapshot
      try:
        wanted_versions, wanted = self.wanted()
        request_logging = model_config.read_local_logging(self.serving_root, self.model_name)
      except ValueError as error:  # a malformed models.config: keep serving what is served
        _LOGGER.error("Keeping the served versions: %s", error)
        return old
      servables = {}
      failures = dict(old.failures)
      for version in wanted_versions:
        if version in old.servables:
          servables[version] = old.servables[version]
        elif version not in failures:
          # Loading takes seconds; requests keep reading the old snapshot meanwhile.
          loaded = self._load(version)
          if isinstance(loaded, Servable):
            servables[version] = loaded
          else:
            failures[version] = loaded
      labels = {}
      for label, version in wanted.items():
        if version in servables:
          labels[label] = version
        elif label in old.labels:  # the wanted version failed: the label's old version serves on
          labels[label] = old.labels[label]
          servables[old.labels[label]] = old.servables[old.labels[label]]
      self._snapshot = Snapshot(servables, labels, failures, request_logging)
      for version in sorted(set(self._snapshot.servables) - set(old.servables)):
        _LOGGER.info("Serving model %r version %d", self.model_name, version)
      return self._snapshot

  def _load(self, version: int):
    """The loaded, warmed-up servable, or the error message if it cannot serve."""
    path = self.base_path / str(version)
    try:
      servable = Servable.load(self.model_name, version, path)
      requests = warmup.read(path)
      if self._run_warmup_request is not None:
        for request in requests:
          self._run_warmup_request(servable, request)
      _LOGGER.info("Loaded model %r version %d from %s (%d warmup requests replayed)",
                   self.model_name, version, path, len(requests))
      return servable
    except Exception as error:  # pylint: disable=broad-except
      message = f"version {version} at {path} failed to load: {type(error).__name__}: {error}"
      _LOGGER.error("Keeping the served versions: %s", message)
      return message


class Poller:
  """Refreshes a registry every `interval` seconds on a daemon thread, like TF Serving's
  `--file_system_poll_wait_seconds`."""

  def __init__(self, registry: ModelRegistry, interval: float):
    self._registry = registry
    self._interval = interval
    self._stopped = threading.Event()
    self._thread = threading.Thread(target=self._run, name="serving-root-poller", daemon=True)

  def start(self) -> None:
    self._thread.start()

  def stop(self) -> None:
    self._stopped.set()
    self._thread.join()

  def _run(self) -> None:
    while not self._stopped.wait(self._interval):
      try:
        self._registry.refresh()
      except Exception:  # pylint: disable=broad-except
        _LOGGER.exception("Polling %s failed; trying again in %ss", self._registry.base_path,
                          self._interval)
