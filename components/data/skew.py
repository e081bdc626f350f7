"""Training-serving skew: the requests the served model received against the data a candidate
learnt from.

The local server logs sampled requests as TF Serving PredictionLogs (TFRecord files
`<prefix>-<unix_ms>-<pid>.tfrecord`, README "Serving skew"). Each logged request row and each
training transition is a query: a user, the history of items the user engaged with, and the time
it is asked. Both sides are reduced to the same four features:

  user_status     "known" if the user is in the training split (the model's user vocabulary),
                  else "unknown"
  history_length  items in the history ('' pads left out)
  hour_of_week    schemas/contract.py `hour_of_week` of the time, -1 when unknown (timestamp <= 0)
  history_item    every item id of the history

TFDV computes both sides' statistics, and `tfdv.validate_statistics(..., serving_statistics=)`
compares them with the curated schema's skew comparators (schemas/serving/skew.pbtxt): L-infinity
for the categorical features, Jensen-Shannon divergence for the numeric ones.
"""
import dataclasses
from typing import Iterable, List, Optional, Sequence, Tuple

from google.protobuf import message
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import tensorflow as tf
import tensorflow_data_validation as tfdv
from tensorflow_data_validation.statistics import stats_impl
from tensorflow_metadata.proto.v0 import anomalies_pb2
from tensorflow_metadata.proto.v0 import schema_pb2
from tensorflow_metadata.proto.v0 import statistics_pb2
from tensorflow_serving.apis import prediction_log_pb2
from tfx_bsl.coders import example_coder

from components.data import validation
from components.data.config import SkewConfig
from schemas import contract

USER_STATUS = "user_status"
KNOWN_USER = "known"
UNKNOWN_USER = "unknown"
HISTORY_LENGTH = "history_length"
HOUR_OF_WEEK = contract.HOUR_OF_WEEK
HISTORY_ITEM = "history_item"
# The hour of a query without a time: the PADDING index the model reads for it
# (components/models/preprocessing.py).
UNKNOWN_HOUR = -1
# Closed log files only: the server writes `.tfrecord.inprogress` and renames it when it closes.
LOG_FILE_SUFFIX = ".tfrecord"
# Training records decoded per batch.
_DECODE_BATCH = 4096
_MEASURE_NAMES = {
    anomalies_pb2.DriftSkewInfo.Measurement.L_INFTY: "L-infinity",
    anomalies_pb2.DriftSkewInfo.Measurement.JENSEN_SHANNON_DIVERGENCE: "Jensen-Shannon",
}
# What TFX writes under a statistics artifact's split directory; kept beside the anomalies so the
# two sides can be shown with tfdv.visualize_statistics.
TRAINING_STATISTICS_FILE = "training_statistics.pb"
SERVING_STATISTICS_FILE = "serving_statistics.pb"


class ServingSkewError(validation.DataValidationError):
  """The logged requests differ from the training data beyond the skew thresholds."""


class RequestLogError(ValueError):
  """A logged request cannot be read; names the file, the record and the field."""


@dataclasses.dataclass(frozen=True)
class Queries:
  """Queries of one side, as flat columns: one entry per query, histories concatenated."""
  user_ids: np.ndarray  # bytes, [queries]
  timestamps: np.ndarray  # int64, [queries]
  history_lengths: np.ndarray  # int64, [queries]
  history_items: np.ndarray  # bytes, [sum(history_lengths)], query by query, oldest first

  def __len__(self) -> int:
    return len(self.user_ids)


@dataclasses.dataclass(frozen=True)
class SkewCheck:
  """What the check found; `anomalies` is None when it was skipped."""
  summary: str  # one line for the run's output
  requests: int  # logged requests judged
  anomalies: Optional[anomalies_pb2.Anomalies] = None
  training_statistics: Optional[statistics_pb2.DatasetFeatureStatisticsList] = None
  serving_statistics: Optional[statistics_pb2.DatasetFeatureStatisticsList] = None

  @property
  def skewed(self) -> bool:
    return bool(self.anomalies is not None and self.anomalies.anomaly_info)

  def messages(self) -> List[str]:
    return validation.anomaly_messages(self.anomalies) if self.anomalies is not None else []


def _concatenate(parts: Sequence[Queries]) -> Queries:
  if not parts:
    return Queries(np.array([], object), np.array([], np.int64), np.array([], np.int64),
                   np.array([], object))
  return Queries(*(np.concatenate([getattr(part, field.name) for part in parts])
                   for field in dataclasses.fields(Queries)))


def _values(records: pa.RecordBatch, name: str) -> np.ndarray:
  """A scalar feature's values, one per record."""
  return records.column(records.schema.get_field_index(name)).flatten().to_numpy(
      zero_copy_only=False)


def training_queries(file_pattern: str) -> Queries:
  """The queries of SessionBuilder's transitions (gzipped TFRecords of tf.Examples)."""
  schema = schema_pb2.Schema()
  for name, kind in ((contract.USER_ID, schema_pb2.BYTES), (contract.HISTORY, schema_pb2.BYTES),
                     (contract.TIMESTAMP, schema_pb2.INT)):
    schema.feature.add(name=name, type=kind)
  decoder = example_coder.ExamplesToRecordBatchDecoder(schema.SerializeToString())
  files = tf.io.gfile.glob(file_pattern)
  if not files:
    raise FileNotFoundError(f"no training data matches {file_pattern}")
  parts = []
  for batch in tf.data.TFRecordDataset(files, compression_type="GZIP").batch(
      _DECODE_BATCH).as_numpy_iterator():
    records = decoder.DecodeBatch(list(batch))
    history = records.column(records.schema.get_field_index(contract.HISTORY))
    parts.append(Queries(
        user_ids=_values(records, contract.USER_ID).astype(object),
        timestamps=_values(records, contract.TIMESTAMP).astype(np.int64),
        # A user's first step has an empty history, which the record leaves out.
        history_lengths=pc.fill_null(pc.list_value_length(history), 0).to_numpy().astype(
            np.int64),
        history_items=history.flatten().to_numpy(zero_copy_only=False).astype(object)))
  return _concatenate(parts)


def log_files(prefix: str) -> List[str]:
  """The request log's closed files, `<prefix>-<unix_ms>-<pid>.tfrecord`, oldest first."""
  return sorted(tf.io.gfile.glob(f"{prefix}-*{LOG_FILE_SUFFIX}"))


def _input(request, name: str, where: str) -> np.ndarray:
  if name not in request.inputs:
    raise RequestLogError(f"{where}: the logged request has no input '{name}' (inputs: "
                          f"{sorted(request.inputs)})")
  return tf.make_ndarray(request.inputs[name])


def _request_queries(log: prediction_log_pb2.PredictionLog, where: str) -> Queries:
  """The request rows of one PredictLog."""
  request = log.predict_log.request
  user_ids = _input(request, contract.USER_ID, where).reshape(-1)
  histories = _input(request, contract.HISTORY, where)
  timestamps = _input(request, contract.TIMESTAMP, where).reshape(-1).astype(np.int64)
  histories = histories.reshape(len(histories), -1) if histories.size else np.empty(
      (len(user_ids), 0), object)
  if not len(user_ids) == len(histories) == len(timestamps):
    raise RequestLogError(f"{where}: the logged request's inputs disagree on the batch size: "
                          f"{contract.USER_ID} {len(user_ids)}, {contract.HISTORY} "
                          f"{len(histories)}, {contract.TIMESTAMP} {len(timestamps)}")
  items = [row[row != b""] for row in histories]
  return Queries(user_ids=user_ids.astype(object), timestamps=timestamps,
                 history_lengths=np.array([len(row) for row in items], np.int64),
                 history_items=np.concatenate(items).astype(object) if items else
                 np.array([], object))


def _read_logs(files: Iterable[str]) -> List[Tuple[int, Queries]]:
  """(log time, request rows) of each PredictLog in the files; other logs are not requests."""
  logged = []
  for path in files:
    for index, record in enumerate(tf.data.TFRecordDataset(path).as_numpy_iterator()):
      where = f"{path}, record {index}"
      log = prediction_log_pb2.PredictionLog()
      try:
        log.ParseFromString(record)
      except message.DecodeError as error:
        raise RequestLogError(f"{where}: not a PredictionLog ({error})") from error
      if log.WhichOneof("log_type") == "predict_log":
        logged.append((log.log_metadata.timestamp_secs, _request_queries(log, where)))
  return logged


def serving_queries(files: Iterable[str], window_days: float) -> Queries:
  """The request rows logged within `window_days` of the newest logged request."""
  logged = _read_logs(files)
  if not logged:
    return _concatenate([])
  newest = max(seconds for seconds, _ in logged)
  since = newest - window_days * 24 * 3600
  return _concatenate([queries for seconds, queries in logged if seconds >= since])


def _one_per_row(values: np.ndarray, kind: pa.DataType) -> pa.ListArray:
  return pa.ListArray.from_arrays(pa.array(np.arange(len(values) + 1), pa.int32()),
                                  pa.array(values, kind))


def query_statistics(queries: Queries, known_users: np.ndarray
                     ) -> statistics_pb2.DatasetFeatureStatisticsList:
  """TFDV statistics of the queries' four skew features (the module's docstring)."""
  known = np.isin(queries.user_ids, known_users)
  hours = np.where(queries.timestamps > 0, contract.hour_of_week(queries.timestamps),
                   UNKNOWN_HOUR)
  offsets = np.concatenate([[0], np.cumsum(queries.history_lengths)]).astype(np.int64)
  features = pa.RecordBatch.from_arrays([
      _one_per_row(np.where(known, KNOWN_USER, UNKNOWN_USER).astype(object), pa.binary()),
      _one_per_row(queries.history_lengths, pa.int64()),
      _one_per_row(hours.astype(np.int64), pa.int64()),
      pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()),
                                    pa.array(queries.history_items, pa.binary())),
  ], [USER_STATUS, HISTORY_LENGTH, HOUR_OF_WEEK, HISTORY_ITEM])
  return stats_impl.generate_statistics_in_memory(features)


def skew_anomalies(training: statistics_pb2.DatasetFeatureStatisticsList,
                   serving: statistics_pb2.DatasetFeatureStatisticsList,
                   schema: schema_pb2.Schema) -> anomalies_pb2.Anomalies:
  """TFDV's skew comparison of serving with training statistics, only its comparator findings.

  `drift_skew_info` keeps every measured distance, over its threshold or not.
  """
  return validation.comparator_findings(
      tfdv.validate_statistics(training, schema, serving_statistics=serving))


def measurements(anomalies: anomalies_pb2.Anomalies) -> List[str]:
  """Each compared feature's distance and threshold, e.g. "user_status L-infinity 0.92 > 0.5"."""
  found = []
  for info in sorted(anomalies.drift_skew_info, key=lambda info: tuple(info.path.step)):
    for measure in info.skew_measurements:
      relation = ">" if measure.value > measure.threshold else "<="
      found.append(f"{'.'.join(info.path.step)} {_MEASURE_NAMES.get(measure.type, measure.type)} "
                   f"{measure.value:.3f} {relation} {measure.threshold:g}")
  return found


def check_serving_skew(training_pattern: str, log_prefix: str, schema: schema_pb2.Schema,
                       config: SkewConfig) -> SkewCheck:
  """Compares the logged requests under `log_prefix` with the training split's queries.

  Skipped, saying why, without closed log files (the first push, or request logging off) or with
  fewer than `config.min_requests` requests logged within the window.
  """
  files = log_files(log_prefix)
  if not files:
    return SkewCheck(f"skipped: no request log under {log_prefix}-*{LOG_FILE_SUFFIX} (nothing "
                     "served yet, or request logging off)", requests=0)
  serving = serving_queries(files, config.window_days)
  if len(serving) < config.min_requests:
    return SkewCheck(f"skipped: {len(serving)} requests logged in {len(files)} files under "
                     f"{log_prefix}, fewer than the {config.min_requests} it judges",
                     requests=len(serving))
  training = training_queries(training_pattern)
  known_users = np.unique(training.user_ids)
  training_statistics = query_statistics(training, known_users)
  serving_statistics = query_statistics(serving, known_users)
  anomalies = skew_anomalies(training_statistics, serving_statistics, schema)
  verdict = (f"skew in {', '.join(sorted(anomalies.anomaly_info))}" if anomalies.anomaly_info
             else "no skew")
  summary = (f"{verdict} over {len(serving)} logged requests against {len(training)} training "
             f"queries ({'; '.join(measurements(anomalies))})")
  return SkewCheck(summary, len(serving), anomalies, training_statistics, serving_statistics)


def judge(check: SkewCheck, stop: bool) -> str:
  """The line the run prints; raises ServingSkewError on skew when `stop` is set."""
  if check.skewed and stop:
    raise ServingSkewError(
        "The served model's logged requests differ from the training data beyond the thresholds "
        "in schemas/serving/skew.pbtxt; the run stops before the model is trained, and nothing "
        "is pushed (serving_skew.stop=true; --set serving_skew.stop=false reports instead):\n  "
        + "\n  ".join(check.messages()) + f"\n  ({check.summary})")
  if check.skewed:
    return f"Serving skew (reported, not stopping): {check.summary}"
  return f"Serving skew: {check.summary}"
