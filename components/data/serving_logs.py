"""Served slates from the server's request log, joined with the app's feedback, as a new span.

The loop this closes: the server logs a sample of the requests it answers (TF Serving's
PredictionLog TFRecords, `ModelConfig.logging_config`), the app reports what users did with the
items shown, and `recsys ingest-logs` turns both into events the next `recsys run` trains and
is judged on.

The request log (`read_prediction_logs`): the closed `*.tfrecord` files of a directory (a file
still being written is named `*.tfrecord.inprogress` and is never read), each record a
PredictionLog whose `predict_log` holds the PredictRequest (user_id, history, timestamp and the
`request_id` input the server adds, one per batch row) and the PredictResponse (item_ids and
propensities, [batch, k]). One served slate is a request row: its user, its items by position,
the serving policy's propensity of each item at its position (none where the logged response
has no `propensities`: the answer of a signature without them, or of a request whose
`output_filter` left them out; serving/client.py sets none), the model version that answered,
and the request time: the request's own `timestamp` input where the client sent one, else the
server's time of the request (`log_metadata.timestamp_secs`).

The feedback file (`read_feedback`), a CSV (or `.parquet`) with one row per engagement:

  | column | required | meaning |
  | request_id | yes | the id of the request whose answer the user engaged with (the id the app
  |            |     | sent as `x-request-id`, or the one the server generated and returned) |
  | item_id | yes | the item engaged with: one of that request's answer |
  | event | yes | `click` or `purchase` (a purchase implies the click) |
  | price | no | what the item sold for, a number >= 0; default the item's latest known price |

Other columns (such as the engagement's own time) are ignored: the engagement is recorded on its
slate's row, at the slate's time, as the impression log's convention has it (contract.IMPRESSION:
a shown item's row carries its strongest outcome), so a slate stays one timestamp with positions
0..k-1, which is how the evaluator's off-policy estimates find slates
(components/evaluation/model_evaluation.py). Rows that cannot be read, an event other than click
or purchase, a negative price and an item that is not in its request's slate are refused with an
`ingest.InputDataError` naming file, line, field and value. A request id the log does not hold is
counted and reported, not refused: the server logs a sample of requests (`sampling_rate`), so
feedback on requests it did not keep is expected.

The join (`served_events`): every shown position of every logged slate (the answer's first
`slate_size` items, `recsys ingest-logs --slate-size`: the server answers with the model's top_k,
100 by default, of which an app shows a page) becomes one event row (user, item, request time,
impression, click or purchase, position, propensity, request_id, model_version), with the item's category, price and title from the latest span's events
(`unknown`, 0 and none for an item the data have never had). Slates whose request id the latest
span already holds were ingested before and are left out, so ingesting the same logs twice adds
nothing.

The new span (`ingest_logs`) holds the latest span's events and the new ones: ImportExampleGen
reads the latest span only, so a span of the new events alone would make the next run train on
one round of feedback and forget the rest. It is written as `recsys run` writes its spans
(`ingest.write_examples` into a staging directory, `spans.publish`), so it appears whole or not
at all.
"""
import dataclasses
import os
import pathlib
from typing import Dict, List, Optional

from absl import logging
import numpy as np
import pandas as pd
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from components.data import ingest
from components.data import spans
from components.data.config import DataMinimums
from schemas import contract

# pylint: disable=protected-access  # the ingest module's readers give feedback its error style

# A closed log file's suffix (serving/request_log.py's CLOSED_SUFFIX; data does not import serving).
LOG_SUFFIX = ".tfrecord"
FEEDBACK_EVENTS = ("click", contract.PURCHASE_EVENT)


@dataclasses.dataclass(frozen=True)
class IngestReport:
  """What one ingestion of request logs and feedback did."""
  span: int  # the span the next run reads
  slates: int  # logged slates new to the data
  already_ingested: int  # logged slates the latest span held already
  engagements: int  # feedback rows joined to a slate (after duplicates were merged)
  unknown_requests: int  # feedback rows whose request id the log does not hold
  events: int  # events in the new span, the latest span's included


def _tensor(tensors, name: str, where: str) -> np.ndarray:
  if name not in tensors:
    raise ingest.InputDataError(f"{where}: no '{name}' tensor; found "
                                f"{', '.join(sorted(tensors)) or 'none'}")
  return tf.make_ndarray(tensors[name])


def _decoded(values: np.ndarray) -> np.ndarray:
  return np.vectorize(lambda value: value.decode("utf-8"), otypes=[object])(values)


def _slates_of(log: prediction_log_pb2.PredictionLog, where: str) -> List[dict]:
  """The slates of one logged request, one per batch row."""
  if log.WhichOneof("log_type") != "predict_log":
    raise ingest.InputDataError(f"{where}: a {log.WhichOneof('log_type')}, not a predict_log")
  inputs, outputs = log.predict_log.request.inputs, log.predict_log.response.outputs
  request_ids = _decoded(_tensor(inputs, contract.REQUEST_ID, where))
  users = _decoded(_tensor(inputs, contract.USER_ID, where))
  times = (_tensor(inputs, contract.TIMESTAMP, where) if contract.TIMESTAMP in inputs
           else np.zeros(len(users), dtype=np.int64))
  items = _decoded(_tensor(outputs, contract.ITEM_IDS, where))
  # Not logged (a signature without them, or a client's output_filter left them out): not
  # claimed. The evaluator's off-policy estimates leave such slates out.
  propensities = (_tensor(outputs, contract.PROPENSITIES, where)
                  if contract.PROPENSITIES in outputs else np.full(items.shape, np.nan))
  if not len(request_ids) == len(users) == len(times) == len(items) == len(propensities):
    raise ingest.InputDataError(
        f"{where}: batch sizes disagree: {contract.REQUEST_ID} {len(request_ids)}, "
        f"{contract.USER_ID} {len(users)}, {contract.TIMESTAMP} {len(times)}, "
        f"{contract.ITEM_IDS} {len(items)}, {contract.PROPENSITIES} {len(propensities)}")
  server_time = log.log_metadata.timestamp_secs
  version = log.log_metadata.model_spec.version.value
  return [{contract.REQUEST_ID: request_id, contract.USER_ID: user,
           contract.TIMESTAMP: int(time) if time > contract.UNKNOWN_TIME else server_time,
           contract.MODEL_VERSION: version, "items": tuple(row_items),
           "propensities": tuple(float(p) for p in row_propensities), "where": where}
          for request_id, user, time, row_items, row_propensities in zip(
              request_ids, users, times, items, propensities)]


def log_files(predictions_dir: os.PathLike) -> List[pathlib.Path]:
  """The closed log files of a directory, oldest first (their names start with the open time)."""
  directory = pathlib.Path(predictions_dir)
  if not directory.is_dir():
    raise ingest.InputDataError(f"{directory}: no such directory of request logs")
  files = sorted(path for path in directory.iterdir()
                 if path.name.endswith(LOG_SUFFIX) and path.is_file())
  if not files:
    raise ingest.InputDataError(
        f"{directory}: no closed request log (*{LOG_SUFFIX}); the server closes its file when "
        f"it rotates it or stops")
  return files


def read_prediction_logs(predictions_dir: os.PathLike) -> pd.DataFrame:
  """The served slates of a directory's closed request logs, one row per request row.

  Columns: request_id, user_id, timestamp (the request time), model_version, items and
  propensities (tuples, position 0 first). A request logged twice with the same slate (a retry
  the server answered alike) is kept once; with two different slates the feedback could not be
  joined, and it is refused.
  """
  slates = []
  for path in log_files(predictions_dir):
    try:
      for number, record in enumerate(tf.data.TFRecordDataset(str(path))):
        where = f"{path.name} record {number + 1}"
        try:
          log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        except Exception as error:  # pylint: disable=broad-except  # protobuf's DecodeError
          raise ingest.InputDataError(f"{where}: not a PredictionLog ({error})") from None
        slates.extend(_slates_of(log, where))
    except tf.errors.DataLossError as error:
      raise ingest.InputDataError(f"{path.name}: not a readable TFRecord file "
                                  f"({error.message})") from None
  frame = pd.DataFrame(slates, columns=[contract.REQUEST_ID, contract.USER_ID,
                                        contract.TIMESTAMP, contract.MODEL_VERSION, "items",
                                        "propensities", "where"])
  frame = frame.drop_duplicates([column for column in frame.columns if column != "where"])
  repeated = frame[frame[contract.REQUEST_ID].duplicated(keep=False)]
  if not repeated.empty:
    first = repeated[repeated[contract.REQUEST_ID] == repeated[contract.REQUEST_ID].iloc[0]]
    raise ingest.InputDataError(
        f"{' and '.join(first['where'])}: request id '{first[contract.REQUEST_ID].iloc[0]}' "
        f"was logged with different answers; feedback on it could not be joined")
  return frame.drop(columns="where").reset_index(drop=True)


def read_feedback(path: os.PathLike) -> pd.DataFrame:
  """The feedback file's rows (module docstring): request_id, item_id, event, price, line.

  `line` says where each row is in the file, for the join's errors. Price is NaN where not given.
  """
  table = ingest._read_table(pathlib.Path(path))
  ingest._require(table, (contract.REQUEST_ID, contract.ITEM_ID, contract.EVENT))
  events = ingest._strings(table, contract.EVENT)
  ingest._reject(table, ~events.isin(FEEDBACK_EVENTS).to_numpy(), contract.EVENT,
                 " or ".join(FEEDBACK_EVENTS))
  price = ingest._numbers(table, contract.PRICE, expected="a number >= 0")
  ingest._reject(table, (price < 0).to_numpy(), contract.PRICE, "a number >= 0")
  return pd.DataFrame({
      contract.REQUEST_ID: ingest._ids(table, contract.REQUEST_ID),
      contract.ITEM_ID: ingest._ids(table, contract.ITEM_ID),
      contract.EVENT: events,
      contract.PRICE: price,
      "line": [table.where(row) for row in range(len(table.frame))],
  })


def _item_attributes(previous: Optional[pd.DataFrame]) -> pd.DataFrame:
  """Each item's category, price and title as the latest of the data's events has them."""
  columns = [contract.CATEGORY, contract.PRICE, contract.TITLE]
  if previous is None or previous.empty:
    return pd.DataFrame(columns=columns, index=pd.Index([], name=contract.ITEM_ID))
  latest = previous.sort_values(contract.TIMESTAMP, kind="stable").drop_duplicates(
      contract.ITEM_ID, keep="last").set_index(contract.ITEM_ID)
  return latest.reindex(columns=columns)


def served_events(slates: pd.DataFrame, feedback: pd.DataFrame,
                  previous: Optional[pd.DataFrame] = None,
                  slate_size: Optional[int] = None) -> Dict[str, object]:
  """Joins the slates with the feedback into event rows (module docstring).

  Args:
    slates: read_prediction_logs' frame.
    feedback: read_feedback's frame.
    previous: The latest span's events (ingest.read_examples), or None when there is none: they
      give items their attributes, and the requests they hold are not added again.
    slate_size: How many of each answer's items the app shows, its first ones; None: all. The
      server answers with the model's top_k (100 by default) and an app shows a page of them;
      only the items shown are impressions.

  Returns:
    `events` (contract.EVENT_COLUMNS but session_id; rows by time, request and position) and the
    counts IngestReport reports: `slates`, `already_ingested`, `engagements`,
    `unknown_requests`.
  """
  known = (set(previous[contract.REQUEST_ID].dropna())
           if previous is not None and contract.REQUEST_ID in previous else set())
  already = slates[contract.REQUEST_ID].isin(known)
  slates = slates[~already]
  if slate_size is not None:
    if slate_size < 1:
      raise ValueError(f"slate_size must be at least 1, got {slate_size}")
    slates = slates.assign(items=slates["items"].str[:slate_size],
                           propensities=slates["propensities"].str[:slate_size])
  shown = slates.explode(["items", "propensities"]).rename(
      columns={"items": contract.ITEM_ID, "propensities": contract.PROPENSITY})
  shown[contract.POSITION] = shown.groupby(level=0).cumcount()
  shown = shown.reset_index(drop=True)

  logged = feedback[contract.REQUEST_ID].isin(set(slates[contract.REQUEST_ID]) | known)
  unknown = feedback[~logged]
  if not unknown.empty:
    logging.warning("%d feedback rows name request ids the log does not hold (unsampled "
                    "requests), e.g. '%s' at %s; they are skipped", len(unknown),
                    unknown[contract.REQUEST_ID].iloc[0], unknown["line"].iloc[0])
  # Feedback on slates ingested before is left out with them.
  feedback = feedback[feedback[contract.REQUEST_ID].isin(set(slates[contract.REQUEST_ID]))]
  slots = shown.set_index([contract.REQUEST_ID, contract.ITEM_ID]).index
  joined = pd.MultiIndex.from_frame(feedback[[contract.REQUEST_ID, contract.ITEM_ID]])
  outside = ~joined.isin(slots)
  if outside.any():
    row = feedback[outside].iloc[0]
    answer = shown.loc[shown[contract.REQUEST_ID] == row[contract.REQUEST_ID], contract.ITEM_ID]
    others = f" ({outside.sum() - 1} more rows like this)" if outside.sum() > 1 else ""
    raise ingest.InputDataError(
        f"{row['line']}: field '{contract.ITEM_ID}' has value '{row[contract.ITEM_ID]}', "
        f"expected one of the items served to request '{row[contract.REQUEST_ID]}' "
        f"({', '.join(answer)}){others}")
  # The strongest outcome per slot: a purchase over a click; its price, if the app gave one.
  strongest = feedback.assign(
      rank=feedback[contract.EVENT].map({"click": 0, contract.PURCHASE_EVENT: 1})).sort_values(
          "rank", kind="stable").drop_duplicates([contract.REQUEST_ID, contract.ITEM_ID],
                                                 keep="last")
  outcome = strongest.set_index([contract.REQUEST_ID, contract.ITEM_ID])
  keys = pd.MultiIndex.from_frame(shown[[contract.REQUEST_ID, contract.ITEM_ID]])
  attributes = _item_attributes(previous)
  known_price = shown[contract.ITEM_ID].map(attributes[contract.PRICE]).astype(np.float64)
  events = pd.DataFrame({
      contract.USER_ID: shown[contract.USER_ID],
      contract.ITEM_ID: shown[contract.ITEM_ID],
      contract.TIMESTAMP: shown[contract.TIMESTAMP].astype(np.int64),
      contract.EVENT: outcome[contract.EVENT].reindex(keys).fillna(contract.IMPRESSION).to_numpy(),
      contract.RATING: 0.0,
      contract.PRICE: outcome[contract.PRICE].reindex(keys).to_numpy(np.float64),
      contract.CATEGORY: shown[contract.ITEM_ID].map(attributes[contract.CATEGORY]).fillna(
          contract.UNKNOWN_CATEGORY).astype(str),
      contract.POSITION: shown[contract.POSITION].astype("Int64"),
      contract.PROPENSITY: shown[contract.PROPENSITY].astype(np.float64),
      contract.TITLE: shown[contract.ITEM_ID].map(attributes[contract.TITLE]),
      contract.REQUEST_ID: shown[contract.REQUEST_ID].astype(str),
      contract.MODEL_VERSION: shown[contract.MODEL_VERSION].astype("Int64"),
  })
  events[contract.PRICE] = events[contract.PRICE].fillna(known_price).fillna(0.0)
  events = events.sort_values([contract.TIMESTAMP, contract.REQUEST_ID, contract.POSITION],
                              kind="stable", ignore_index=True)
  return {"events": events, "slates": len(slates), "already_ingested": int(already.sum()),
          "engagements": len(strongest), "unknown_requests": len(unknown)}


def latest_events(input_base: os.PathLike) -> Optional[pd.DataFrame]:
  """The events of the latest span, or None when there is no span yet."""
  existing = spans.spans(input_base)
  if not existing:
    return None
  return ingest.read_examples(existing[max(existing)] / ingest.EXAMPLES_FILE)


def ingest_logs(predictions_dir: os.PathLike, feedback_path: os.PathLike,
                input_base: os.PathLike, minimums: Optional[DataMinimums] = None,
                slate_size: Optional[int] = None) -> IngestReport:
  """Publishes the latest span's events plus the joined logs and feedback as a new span.

  `slate_size` is served_events'.

  With `minimums`, data too small to train and evaluate on is refused (ingest.require_trainable)
  and nothing is published. Logs that add nothing new publish nothing: the report names the
  latest span, which the next run reads as before.
  """
  slates = read_prediction_logs(predictions_dir)
  feedback = read_feedback(feedback_path)
  previous = latest_events(input_base)
  joined = served_events(slates, feedback, previous, slate_size)
  events = pd.concat([frame for frame in (previous, joined["events"]) if frame is not None],
                     ignore_index=True)
  events = events[[column for column in contract.EVENT_COLUMNS if column in events]]
  if minimums is not None:
    ingest.require_trainable(events, minimums, pathlib.Path(feedback_path).name)
  staged = pathlib.Path(input_base) / spans.STAGING_DIR / ingest.EXAMPLES_FILE
  ingest.write_examples(events, staged)
  span = spans.publish(staged, input_base)
  return IngestReport(span=span, slates=joined["slates"],
                      already_ingested=joined["already_ingested"],
                      engagements=joined["engagements"],
                      unknown_requests=joined["unknown_requests"], events=len(events))
