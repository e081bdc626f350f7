"""Request logging as TF Serving does it: sampled requests and answers as PredictionLog TFRecords.

TF Serving logs a model's requests when its models.config entry has a `logging_config`
(`tensorflow_serving.config.LoggingConfig`): each request is sampled with
`sampling_config.sampling_rate`, and a sampled one becomes a `PredictionLog` (the request, the
response, and `log_metadata`: the model spec with the version that answered, the sampling config,
the time) that a log collector writes under `log_collector_config.filename_prefix`. This module
is that logger and collector for the local server, in the format the log's readers rely on
(README, "Request logging"):

  <filename_prefix>-<unix_ms_at_open>-<pid>.tfrecord.inprogress   while written
  <filename_prefix>-<unix_ms_at_open>-<pid>.tfrecord              once closed: the only files read

Each record's request carries one extra input, `request_id` (string [batch]): the client's
`x-request-id` or a generated uuid4 hex, `<id>/<row>` per row when the batch has several rows.

Logging never holds up or fails a request: the request thread only samples and puts the record on
a bounded queue (dropped and counted when it is full); one writer thread serializes and writes.
A write error (a full disk, a directory that cannot be created) is counted and logged, the record
is lost, and the writer tries a new file a second later. A file is closed (fsync'd and renamed)
when it reaches its size or age limit, when the config names another prefix, and on `stop`.
"""
import dataclasses
import errno
import io
import logging
import os
import pathlib
import queue
import random
import struct
import threading
import time
from typing import BinaryIO, Callable, List, Optional
import uuid

import google_crc32c
import grpc
import prometheus_client
from tensorflow.core.framework import tensor_pb2
from tensorflow.core.framework import tensor_shape_pb2
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import logging_pb2
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_log_pb2
from tensorflow_serving.config import logging_config_pb2

from schemas import contract
from serving import handlers
from serving.config import RequestLogWriterConfig

_LOGGER = logging.getLogger(__name__)

CLOSED_SUFFIX = ".tfrecord"
IN_PROGRESS_SUFFIX = ".inprogress"
# After a write error the writer drops records for this long before it opens a new file: on a
# full disk it would otherwise create (and delete) a file per record, and log each failure.
ERROR_BACKOFF_SECONDS = 1.0
# Request ids are ids, like user ids (handlers.RequestLimits.max_id_bytes).
MAX_REQUEST_ID_BYTES = handlers.RequestLimits.max_id_bytes

# Outcomes of a sampled record (recsys_serving_request_log_records_total{outcome}).
WRITTEN = "written"
DROPPED = "dropped"  # the queue was full
FAILED = "failed"  # lost to a write error, or during the backoff after one
# Reasons of recsys_serving_request_log_errors_total{reason}.
DISK_FULL = "disk_full"
IO_ERROR = "io_error"
INTERNAL = "internal"  # a bug: a record that could not be built
_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)

# TFRecord framing: length, masked CRC-32C of the length, data, masked CRC-32C of the data.
_CRC_MASK_DELTA = 0xA282EAD8

# The current logging config of the model (the registry's snapshot's), None when it logs nothing.
LoggingConfigSource = Callable[[], Optional[logging_config_pb2.LoggingConfig]]
# Opens a new file for writing, failing if it exists.
FileOpener = Callable[[str], BinaryIO]


def request_id(sent: Optional[str]) -> str:
  """The id of a request: the one its client sent, else a new uuid4 hex.

  Raises:
    handlers.ServingError: INVALID_ARGUMENT if the sent id is longer than MAX_REQUEST_ID_BYTES or
      not printable ASCII (what gRPC metadata and HTTP headers carry safely).
  """
  if not sent:
    return uuid.uuid4().hex
  if len(sent) > MAX_REQUEST_ID_BYTES or not (sent.isascii() and sent.isprintable()):
    raise handlers.ServingError(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"{contract.REQUEST_ID_HEADER} must be printable ASCII of at most "
        f"{MAX_REQUEST_ID_BYTES} characters, got {len(sent)} characters: {sent[:64]!r}")
  return sent


def echo_grpc_request_id(context: grpc.ServicerContext) -> str:
  """The gRPC request's id (`request_id`), sent back in the answer's trailing metadata.

  Trailing metadata goes out with the status, errors included, in the answer's last batch of
  operations; initial metadata would be a batch of its own, 0.1 ms per request (README, "Latency").
  """
  id_ = request_id(dict(context.invocation_metadata()).get(contract.REQUEST_ID_HEADER))
  context.set_trailing_metadata(((contract.REQUEST_ID_HEADER, id_),))
  return id_


def row_request_ids(request_id_: str, batch_size: int) -> List[str]:
  """The id logged for each row of a request: the request's own for one row, else `<id>/<row>`."""
  if batch_size == 1:
    return [request_id_]
  return [f"{request_id_}/{row}" for row in range(batch_size)]


def _batch_size(request: predict_pb2.PredictRequest) -> int:
  """The rows of a request that was answered (its inputs agree on their first dimension)."""
  for tensor in request.inputs.values():
    if tensor.tensor_shape.dim:
      return tensor.tensor_shape.dim[0].size
  return 1


def _varint(value: int) -> bytes:
  encoded = bytearray()
  while value > 0x7F:
    encoded.append(value & 0x7F | 0x80)
    value >>= 7
  encoded.append(value)
  return bytes(encoded)


def _message_field(message_type, field_name: str, serialized: bytes) -> bytes:
  """`serialized` as the wire encoding of the message field `field_name` of `message_type`."""
  number = message_type.DESCRIPTOR.fields_by_name[field_name].number
  return _varint(number << 3 | 2) + _varint(len(serialized)) + serialized


def prediction_log(request: predict_pb2.PredictRequest, response: predict_pb2.PredictResponse,
                   request_id_: str, timestamp_secs: int,
                   sampling_config: logging_config_pb2.SamplingConfig) -> bytes:
  """The serialized PredictionLog of one answered request: what TF Serving logs, plus the
  request's row ids as the input REQUEST_ID.

  Built on the wire rather than by copying the request and response into a PredictionLog (which
  took most of the writer's time): a message's encoding is the concatenation of its fields', and
  an encoded map entry appended to an encoded request adds that entry.
  """
  metadata = logging_pb2.LogMetadata(sampling_config=sampling_config,
                                     timestamp_secs=timestamp_secs)
  metadata.model_spec.CopyFrom(response.model_spec)
  ids = row_request_ids(request_id_, _batch_size(request))
  request_ids = predict_pb2.PredictRequest()
  request_ids.inputs[contract.REQUEST_ID].CopyFrom(tensor_pb2.TensorProto(
      dtype=types_pb2.DT_STRING,
      tensor_shape=tensor_shape_pb2.TensorShapeProto(
          dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=len(ids))]),
      string_val=[row_id.encode() for row_id in ids]))
  predict_log = (
      _message_field(prediction_log_pb2.PredictLog, "request",
                     request.SerializeToString() + request_ids.SerializeToString())
      + _message_field(prediction_log_pb2.PredictLog, "response", response.SerializeToString()))
  return (_message_field(prediction_log_pb2.PredictionLog, "log_metadata",
                         metadata.SerializeToString())
          + _message_field(prediction_log_pb2.PredictionLog, "predict_log", predict_log))


def _masked_crc(data: bytes) -> bytes:
  crc = google_crc32c.value(data)
  return struct.pack("<I", (((crc >> 15) | (crc << 17)) + _CRC_MASK_DELTA) & 0xFFFFFFFF)


def tfrecord(data: bytes) -> bytes:
  """One TFRecord: what tf.io.TFRecordWriter writes for `data`, uncompressed."""
  length = struct.pack("<Q", len(data))
  return length + _masked_crc(length) + data + _masked_crc(data)


def closed_files(filename_prefix: os.PathLike) -> List[pathlib.Path]:
  """The closed (complete, readable) log files of a prefix, oldest first."""
  prefix = pathlib.Path(filename_prefix)
  if not prefix.parent.is_dir():
    return []
  return sorted(prefix.parent.glob(f"{prefix.name}-*{CLOSED_SUFFIX}"),
                key=lambda path: (int(path.name[len(prefix.name) + 1:].split("-")[0]), path.name))


def _open_new_file(path: str) -> BinaryIO:
  # Unbuffered: each record is one write, so a failure is the record's, and a crash loses
  # nothing written before it.
  return io.FileIO(path, "xb")


@dataclasses.dataclass
class _Entry:
  config: logging_config_pb2.LoggingConfig
  request: predict_pb2.PredictRequest
  response: predict_pb2.PredictResponse
  request_id: str
  timestamp_secs: int


_STOP = object()


class RequestLogger:
  """Samples answered requests on the request path, writes them on its own thread.

  `config_source` gives the model's current logging config (models.config's, re-read by the
  registry), so a change of rate or prefix applies from the next request, as in TF Serving.
  Counters go to the server's Prometheus `registry`. `open_file` opens each new file (by default
  unbuffered, failing if the file exists).
  """

  def __init__(self, config_source: LoggingConfigSource,
               registry: prometheus_client.CollectorRegistry,
               writer: RequestLogWriterConfig = RequestLogWriterConfig(),
               open_file: Optional[FileOpener] = None):
    self._config_source = config_source
    self._writer = writer
    self._open_file = open_file or _open_new_file
    self._queue: "queue.Queue" = queue.Queue(writer.queue_records)
    self._random = random.Random()
    self._thread = threading.Thread(target=self._run, name="request-log-writer", daemon=True)
    self._records = prometheus_client.Counter(
        "recsys_serving_request_log_records", "Sampled requests, by what became of their record.",
        ["outcome"], registry=registry)
    self._errors = prometheus_client.Counter(
        "recsys_serving_request_log_errors", "Request log write errors, by reason.",
        ["reason"], registry=registry)
    for outcome in (WRITTEN, DROPPED, FAILED):
      self._records.labels(outcome)
    for reason in (DISK_FULL, IO_ERROR, INTERNAL):
      self._errors.labels(reason)
    prometheus_client.Gauge(
        "recsys_serving_request_log_queue_records", "Records waiting to be written.",
        registry=registry).set_function(self._queue.qsize)
    # The open file; only the writer thread touches these.
    self._file: Optional[BinaryIO] = None
    self._path = ""
    self._prefix = ""
    self._size = 0
    self._opened_at = 0.0  # time.monotonic()
    self._last_open_ms = 0
    self._retry_at = 0.0  # time.monotonic()

  def start(self) -> None:
    self._thread.start()

  def log(self, request: predict_pb2.PredictRequest, response: predict_pb2.PredictResponse,
          request_id_: str) -> None:
    """Queues an answered request for the log if the model logs and the sample takes it.

    Called on the request path after the response is built: never waits, never raises.
    """
    try:
      config = self._config_source()
      if config is None or self._random.random() >= config.sampling_config.sampling_rate:
        return
      self._queue.put_nowait(_Entry(config, request, response, request_id_, int(time.time())))
    except queue.Full:
      self._records.labels(DROPPED).inc()
    except Exception:  # pylint: disable=broad-except
      self._errors.labels(INTERNAL).inc()
      _LOGGER.exception("Could not queue a request for the request log")

  def stop(self) -> None:
    """Writes what is queued, closes the file; requests must have stopped."""
    if not self._thread.is_alive():
      return
    self._queue.put(_STOP)  # waits while the queue is full: the writer is emptying it
    self._thread.join()

  def _run(self) -> None:
    while True:
      timeout = None
      if self._file is not None:
        timeout = max(self._opened_at + self._writer.max_file_seconds - time.monotonic(), 0.0)
      try:
        entry = self._queue.get(timeout=timeout)
      except queue.Empty:
        self._close()  # the file reached its age limit
        continue
      if entry is _STOP:
        self._close()
        return
      self._write(entry)

  def _write(self, entry: _Entry) -> None:
    if time.monotonic() < self._retry_at:
      self._records.labels(FAILED).inc()
      return
    try:
      record = tfrecord(prediction_log(entry.request, entry.response, entry.request_id,
                                       entry.timestamp_secs, entry.config.sampling_config))
    except Exception:  # pylint: disable=broad-except
      self._records.labels(FAILED).inc()
      self._errors.labels(INTERNAL).inc()
      _LOGGER.exception("Could not build the request log record of request %s", entry.request_id)
      return
    prefix = entry.config.log_collector_config.filename_prefix
    if self._file is not None and (
        prefix != self._prefix
        or self._size + len(record) > self._writer.max_file_bytes
        or time.monotonic() - self._opened_at >= self._writer.max_file_seconds):
      self._close()
    try:
      if self._file is None:
        self._open(prefix)
      view = memoryview(record)
      while view:  # a raw write may write less than asked
        view = view[self._file.write(view):]
    except OSError as error:
      self._records.labels(FAILED).inc()
      self._fail(f"could not write request {entry.request_id} to {self._path or prefix}", error)
      return
    self._size += len(record)
    self._records.labels(WRITTEN).inc()

  def _open(self, prefix: str) -> None:
    # Unique and in opening order even when files are rotated within one millisecond.
    opened_ms = max(int(time.time() * 1000), self._last_open_ms + 1)
    self._last_open_ms = opened_ms
    path = f"{prefix}-{opened_ms}-{os.getpid()}{CLOSED_SUFFIX}{IN_PROGRESS_SUFFIX}"
    self._path, self._prefix, self._size = path, prefix, 0
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    self._file = self._open_file(path)
    self._opened_at = time.monotonic()

  def _fail(self, message: str, error: OSError) -> None:
    """Counts and logs a write error, drops the partial record, backs off."""
    self._count_error(f"{message}; dropping records for {ERROR_BACKOFF_SECONDS:.0f} s", error)
    self._retry_at = time.monotonic() + ERROR_BACKOFF_SECONDS
    if self._file is not None:
      try:
        self._file.truncate(self._size)  # readers must never meet half a record
        truncated = True
      except OSError:
        truncated = False  # then the file stays .inprogress, which no reader reads
      self._close(keep_in_progress=not truncated)

  def _count_error(self, message: str, error: OSError) -> None:
    self._errors.labels(DISK_FULL if error.errno in _DISK_FULL_ERRNOS else IO_ERROR).inc()
    _LOGGER.error("Request log: %s: %s", message, error)

  def _close(self, keep_in_progress: bool = False) -> None:
    """Closes the file and renames it to its closed name (deletes it if empty); never raises."""
    if self._file is None:
      return
    file, path, size = self._file, self._path, self._size
    self._file, self._path, self._size = None, "", 0
    if size and not keep_in_progress:
      try:
        os.fsync(file.fileno())  # a closed file is complete, even after the machine crashes
      except OSError as error:
        self._count_error(f"could not fsync {path}", error)
    try:
      file.close()
      if keep_in_progress:
        return
      if size:
        os.rename(path, path[:-len(IN_PROGRESS_SUFFIX)])
      else:
        os.unlink(path)
    except OSError as error:
      self._count_error(f"could not close {path}", error)
