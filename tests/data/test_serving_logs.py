"""Request logs and feedback joined into a new span: hand-made PredictionLogs, real span files."""
import pathlib

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_log_pb2

from components.data import ingest
from components.data import serving_logs
from components.data import sessions
from components.data import spans
from components.data.config import SessionConfig
from components.evaluation import model_evaluation
from schemas import contract

SERVER_TIME = 1_800_000_000
VERSION = 1_796_230_896


def prediction_log(request_ids, users, items, propensities=None, times=None,
                   version=VERSION, server_time=SERVER_TIME) -> prediction_log_pb2.PredictionLog:
  """One logged request as the server writes it (/work/notes/logformat.md)."""
  request = predict_pb2.PredictRequest()
  request.model_spec.name = contract.DEFAULT_MODEL_NAME
  request.model_spec.signature_name = contract.SERVING_SIGNATURE
  inputs = {contract.REQUEST_ID: (request_ids, tf.string), contract.USER_ID: (users, tf.string),
            contract.HISTORY: ([[""]] * len(users), tf.string)}
  if times is not None:
    inputs[contract.TIMESTAMP] = (times, tf.int64)
  for name, (values, dtype) in inputs.items():
    request.inputs[name].CopyFrom(tf.make_tensor_proto(values, dtype=dtype))
  response = predict_pb2.PredictResponse()
  response.model_spec.CopyFrom(request.model_spec)
  response.model_spec.version.value = version
  response.outputs[contract.ITEM_IDS].CopyFrom(tf.make_tensor_proto(items, dtype=tf.string))
  response.outputs[contract.SCORES].CopyFrom(
      tf.make_tensor_proto(np.zeros(np.shape(items)), dtype=tf.float32))
  if propensities is not None:
    response.outputs[contract.PROPENSITIES].CopyFrom(
        tf.make_tensor_proto(propensities, dtype=tf.float32))
  log = prediction_log_pb2.PredictionLog()
  log.log_metadata.model_spec.CopyFrom(response.model_spec)
  log.log_metadata.timestamp_secs = server_time
  log.log_metadata.sampling_config.sampling_rate = 1.0
  log.predict_log.request.CopyFrom(request)
  log.predict_log.response.CopyFrom(response)
  return log


def write_logs(directory: pathlib.Path, logs, name="predictions-1800000000000-42.tfrecord"):
  directory.mkdir(parents=True, exist_ok=True)
  with tf.io.TFRecordWriter(str(directory / name)) as writer:
    for log in logs:
      writer.write(log.SerializeToString())
  return directory


def write_feedback(path: pathlib.Path, rows, header="request_id,item_id,event,price"):
  path.write_text("\n".join([header, *rows]) + "\n")
  return path


# Two requests in one batch (no client time: the server's is used), one alone at its own time.
LOGS = [
    prediction_log(["r1/0", "r1/1"], ["u1", "u2"], [["i1", "i2", "i3"], ["i4", "i5", "i6"]],
                   [[0.5, 0.25, 1.0], [0.9, 0.8, 0.7]], times=[0, 0]),
    prediction_log(["r2"], ["u1"], [["i3", "i7", "i1"]], [[0.6, 0.3, 0.2]],
                   times=[SERVER_TIME + 600], version=VERSION + 1, server_time=SERVER_TIME + 601),
]


def _previous_events() -> pd.DataFrame:
  """A latest span: the items' attributes and some earlier engagements."""
  rows = [(f"u{user}", f"i{item}", 1_700_000_000 + 60 * (user * 10 + item), "click", 0.0,
           10.0 * item, f"c{item % 2}") for user in range(1, 4) for item in range(1, 8)]
  events = pd.DataFrame(rows, columns=list(contract.REQUIRED_EVENT_COLUMNS))
  events[contract.TITLE] = [f"Item {item}" for item in events[contract.ITEM_ID]]
  return events


def _span_with(tmp_path, events: pd.DataFrame) -> pathlib.Path:
  input_base = tmp_path / "spans"
  ingest.write_examples(events, input_base / ".staging" / ingest.EXAMPLES_FILE)
  assert spans.publish(input_base / ".staging" / ingest.EXAMPLES_FILE, input_base) == 1
  return input_base


def test_read_prediction_logs_gives_each_request_row_its_slate_time_and_version(tmp_path):
  directory = write_logs(tmp_path / "logs", LOGS)
  # A file the server is still writing is not read.
  write_logs(directory, [prediction_log(["r9"], ["u9"], [["i9"]], [[1.0]])],
             name="predictions-1800000099000-42.tfrecord.inprogress")

  slates = serving_logs.read_prediction_logs(directory)

  assert slates[contract.REQUEST_ID].tolist() == ["r1/0", "r1/1", "r2"]
  assert slates[contract.USER_ID].tolist() == ["u1", "u2", "u1"]
  assert slates[contract.TIMESTAMP].tolist() == [SERVER_TIME, SERVER_TIME, SERVER_TIME + 600]
  assert slates[contract.MODEL_VERSION].tolist() == [VERSION, VERSION, VERSION + 1]
  assert slates["items"].tolist() == [("i1", "i2", "i3"), ("i4", "i5", "i6"), ("i3", "i7", "i1")]
  np.testing.assert_allclose(slates["propensities"].iloc[0], [0.5, 0.25, 1.0])


def test_the_join_records_every_served_slot_with_its_strongest_outcome(tmp_path):
  slates = serving_logs.read_prediction_logs(write_logs(tmp_path / "logs", LOGS))
  feedback = serving_logs.read_feedback(write_feedback(tmp_path / "feedback.csv", [
      "r1/0,i2,click,", "r1/0,i2,purchase,12.5", "r1/1,i6,click,", "r2,i7,purchase,",
      "r1/0,i2,click,"]))  # a repeated click, and a click the purchase supersedes

  joined = serving_logs.served_events(slates, feedback, _previous_events())
  events = joined["events"]

  assert len(events) == 9  # every served slot, engaged or not
  by_slot = events.set_index([contract.REQUEST_ID, contract.POSITION])
  assert by_slot.loc[("r1/0", 1), contract.EVENT] == contract.PURCHASE_EVENT
  assert by_slot.loc[("r1/0", 1), contract.PRICE] == 12.5  # the app's price
  assert by_slot.loc[("r2", 1), contract.EVENT] == contract.PURCHASE_EVENT
  assert by_slot.loc[("r2", 1), contract.PRICE] == 70.0  # the item's latest known price
  assert by_slot.loc[("r1/1", 2), contract.EVENT] == "click"
  assert (events[contract.EVENT] == contract.IMPRESSION).sum() == 6
  assert by_slot.loc[("r2", 0), contract.ITEM_ID] == "i3"
  assert by_slot.loc[("r2", 0), contract.CATEGORY] == "c1"
  assert by_slot.loc[("r2", 0), contract.TITLE] == "Item i3"
  assert by_slot.loc[("r1/0", 1), contract.PROPENSITY] == 0.25
  assert by_slot.loc[("r2", 2), contract.PROPENSITY] == pytest.approx(0.2)
  assert by_slot.loc[("r2", 2), contract.MODEL_VERSION] == VERSION + 1
  assert by_slot.loc[("r1/1", 0), contract.USER_ID] == "u2"
  # A slate is one timestamp: the request's, whatever time the feedback came.
  assert events.groupby(contract.REQUEST_ID)[contract.TIMESTAMP].nunique().eq(1).all()
  assert by_slot.loc[("r2", 0), contract.TIMESTAMP] == SERVER_TIME + 600
  assert (joined["slates"], joined["engagements"], joined["unknown_requests"]) == (3, 3, 0)


def test_only_the_shown_part_of_each_answer_is_impressions(tmp_path):
  slates = serving_logs.read_prediction_logs(write_logs(tmp_path / "logs", LOGS))
  feedback = serving_logs.read_feedback(write_feedback(tmp_path / "f.csv", ["r2,i7,click,"]))
  events = serving_logs.served_events(slates, feedback, slate_size=2)["events"]
  assert events[contract.ITEM_ID].tolist() == ["i1", "i2", "i4", "i5", "i3", "i7"]
  assert events[contract.POSITION].tolist() == [0, 1] * 3
  # An item the app did not show cannot have been clicked.
  feedback = serving_logs.read_feedback(write_feedback(tmp_path / "f.csv", ["r2,i1,click,"]))
  with pytest.raises(ingest.InputDataError, match="f.csv line 2: field 'item_id' has value 'i1'"):
    serving_logs.served_events(slates, feedback, slate_size=2)


def test_a_slate_logged_without_propensities_claims_none(tmp_path):
  # E.g. a request whose output_filter asked for item_ids and scores only.
  logs = [prediction_log(["r1"], ["u1"], [["i1", "i2"]], propensities=None)]
  slates = serving_logs.read_prediction_logs(write_logs(tmp_path / "logs", logs))
  feedback = serving_logs.read_feedback(write_feedback(tmp_path / "f.csv", ["r1,i1,click,"]))
  events = serving_logs.served_events(slates, feedback)["events"]
  assert events[contract.PROPENSITY].isna().all()
  assert events[contract.POSITION].tolist() == [0, 1]
  assert events[contract.CATEGORY].tolist() == [contract.UNKNOWN_CATEGORY] * 2  # no span yet


def test_feedback_on_requests_the_log_does_not_hold_is_counted_and_skipped(tmp_path):
  slates = serving_logs.read_prediction_logs(write_logs(tmp_path / "logs", LOGS))
  feedback = serving_logs.read_feedback(write_feedback(tmp_path / "feedback.csv", [
      "r1/0,i1,click,", "unsampled,i1,click,", "also-unsampled,i4,purchase,3"]))
  joined = serving_logs.served_events(slates, feedback)
  assert joined["unknown_requests"] == 2
  assert joined["engagements"] == 1
  assert (joined["events"][contract.EVENT] != contract.IMPRESSION).sum() == 1


@pytest.mark.parametrize("rows, header, message", [
    (["r1/0,i1,click,", "r1/0,i2,view,"], None,
     "feedback.csv line 3: field 'event' has value 'view', expected click or purchase"),
    (["r1/0,i1,purchase,-4"], None,
     "feedback.csv line 2: field 'price' has value '-4', expected a number >= 0"),
    (["r1/0,i1,purchase,cheap"], None,
     "feedback.csv line 2: field 'price' has value 'cheap', expected a number >= 0"),
    (["r1/0,i1,click,", ",i1,click,"], None,
     "feedback.csv line 3: field 'request_id' has value '', expected a non-empty id"),
    (["r1/0,i1 i2,click,"], None, "feedback.csv line 2: field 'item_id' has value 'i1 i2'"),
    (["r1/0,i1"], "request_id,item_id", "feedback.csv: missing required column 'event'"),
    (["r1/0,i1,click,", "r1/1,i1,click,"], None,
     "feedback.csv line 3: field 'item_id' has value 'i1', expected one of the items served to "
     "request 'r1/1' (i4, i5, i6)"),
])
def test_bad_feedback_rows_are_refused_naming_file_line_field_and_value(tmp_path, rows, header,
                                                                         message):
  slates = serving_logs.read_prediction_logs(write_logs(tmp_path / "logs", LOGS))
  path = write_feedback(tmp_path / "feedback.csv", rows,
                        **({"header": header} if header else {}))
  with pytest.raises(ingest.InputDataError) as error:
    serving_logs.served_events(slates, serving_logs.read_feedback(path))
  assert message in str(error.value)


def test_unreadable_logs_are_refused_naming_the_file(tmp_path):
  with pytest.raises(ingest.InputDataError, match="no closed request log"):
    serving_logs.read_prediction_logs(tmp_path)
  directory = tmp_path / "logs"
  directory.mkdir()
  (directory / "predictions-1-1.tfrecord").write_bytes(b"not a tfrecord at all")
  with pytest.raises(ingest.InputDataError, match="predictions-1-1.tfrecord: not a readable"):
    serving_logs.read_prediction_logs(directory)
  # The same request id answered twice differently (a stochastic policy's retry).
  write_logs(directory, [LOGS[1], prediction_log(["r2"], ["u1"], [["i1"]], [[1.0]])],
             name="predictions-1-1.tfrecord")
  with pytest.raises(ingest.InputDataError, match="request id 'r2' was logged with different"):
    serving_logs.read_prediction_logs(directory)


def test_ingest_logs_publishes_the_latest_span_plus_the_feedback_as_a_new_span(tmp_path):
  previous = _previous_events()
  input_base = _span_with(tmp_path, previous)
  logs = write_logs(tmp_path / "logs", LOGS)
  feedback = write_feedback(tmp_path / "feedback.csv", ["r1/0,i2,click,", "nope,i2,click,"])

  report = serving_logs.ingest_logs(logs, feedback, input_base)

  assert report == serving_logs.IngestReport(span=2, slates=3, already_ingested=0,
                                             engagements=1, unknown_requests=1,
                                             events=len(previous) + 9)
  events = ingest.read_examples(spans.spans(input_base)[2] / ingest.EXAMPLES_FILE)
  assert len(events) == len(previous) + 9
  pd.testing.assert_frame_equal(events.iloc[:len(previous)][previous.columns], previous,
                                check_dtype=False)
  served = events.iloc[len(previous):]
  assert served[contract.REQUEST_ID].notna().all()
  assert served[contract.MODEL_VERSION].tolist() == [VERSION] * 6 + [VERSION + 1] * 3
  assert list((input_base / "span-2").iterdir()) == [input_base / "span-2" / ingest.EXAMPLES_FILE]

  # The same logs again add nothing: no new span, the latest one is read as before.
  again = serving_logs.ingest_logs(logs, feedback, input_base)
  assert (again.span, again.slates, again.already_ingested) == (2, 0, 3)
  assert sorted(spans.spans(input_base)) == [1, 2]


def test_a_failed_ingestion_leaves_no_span_behind(tmp_path, monkeypatch):
  input_base = _span_with(tmp_path, _previous_events())
  logs = write_logs(tmp_path / "logs", LOGS)
  feedback = write_feedback(tmp_path / "feedback.csv", ["r1/0,i2,click,"])
  written = ingest._serialized_examples  # pylint: disable=protected-access

  def fails_midway(events):
    for number, record in enumerate(written(events)):
      if number == 5:
        raise OSError("disk full")
      yield record

  monkeypatch.setattr(ingest, "_serialized_examples", fails_midway)
  with pytest.raises(OSError, match="disk full"):
    serving_logs.ingest_logs(logs, feedback, input_base)
  assert sorted(path.name for path in input_base.iterdir()) == [".staging", "span-1"]
  assert not list((input_base / ".staging").iterdir())


def test_the_served_policys_propensities_reach_the_off_policy_evaluation(tmp_path):
  """Span → SessionBuilder's Beam transforms → the evaluator's logged slates."""
  previous = _previous_events()
  input_base = _span_with(tmp_path, previous)
  # Each user's latest engagements, the served slates', are the eval split.
  logs = write_logs(tmp_path / "logs", LOGS)
  feedback = write_feedback(tmp_path / "feedback.csv", ["r1/0,i2,click,", "r1/1,i6,click,"])
  span = serving_logs.ingest_logs(logs, feedback, input_base).span

  out = {kind: str(tmp_path / kind) for kind in (sessions.EXAMPLES, sessions.TRANSITIONS)}
  with beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"])) as pipeline:
    sessions.build_sessions(pipeline, str(input_base / f"span-{span}" / "*"),
                            out[sessions.EXAMPLES], out[sessions.TRANSITIONS],
                            SessionConfig(eval_fraction=0.1))
  data = model_evaluation.load_eval_data(out[sessions.EXAMPLES], out[sessions.TRANSITIONS])

  logged = data.impressions.sort_values(["user", "timestamp", "position"])
  # The logged slates of the users who engaged: u1's two (r1/0, r2) and u2's one (r1/1).
  np.testing.assert_allclose(logged["propensity"], [0.5, 0.25, 1.0, 0.6, 0.3, 0.2, 0.9, 0.8, 0.7],
                             rtol=1e-6)
  assert logged["click"].tolist() == [0, 1, 0, 0, 0, 0, 0, 0, 1]
