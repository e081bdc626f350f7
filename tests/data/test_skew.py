"""Training-serving skew: hand-made PredictionLogs against hand-made training transitions."""
import dataclasses
import functools
import os
import pathlib
import re

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_data_validation.utils import anomalies_util
from tensorflow_serving.apis import prediction_log_pb2
from tfx.types import artifact_utils
from tfx.types import standard_artifacts

from components import artifact_properties
from components import data_gates
from components.data import skew
from components.data import validation as data_validation
from components.data.config import SkewConfig
import schemas
from schemas import contract
from serving import model_config

# 2024-01-01 00:00 UTC, a Monday, and eight weeks after it.
START = 1_704_067_200
WEEKS = 8
N_USERS = 200
N_ITEMS = 300


def _draw(seed, n, users=None, history_length=None, timestamps=None):
  """Queries drawn like the training data: known users, Zipf-popular items, any hour."""
  rng = np.random.default_rng(seed)
  user_ids = users if users is not None else [f"u{u}" for u in rng.integers(N_USERS, size=n)]
  lengths = (np.full(n, history_length) if history_length is not None
             else rng.integers(0, 60, size=n))
  item_p = 1.0 / np.arange(1, N_ITEMS + 1)
  histories = [[f"i{i}" for i in rng.choice(N_ITEMS, size=length, p=item_p / item_p.sum())]
               for length in lengths]
  times = (timestamps if timestamps is not None
           else rng.integers(START, START + WEEKS * 7 * 86400, size=n))
  return list(user_ids), histories, np.asarray(times, np.int64)


def _write_transitions(path, queries):
  with tf.io.TFRecordWriter(str(path), options="GZIP") as writer:
    for user, history, timestamp in zip(*queries):
      feature = {contract.USER_ID: tf.train.Feature(bytes_list=tf.train.BytesList(
                     value=[user.encode()])),
                 contract.TIMESTAMP: tf.train.Feature(int64_list=tf.train.Int64List(
                     value=[timestamp]))}
      if history:  # as SessionBuilder writes a first step: no history feature
        feature[contract.HISTORY] = tf.train.Feature(bytes_list=tf.train.BytesList(
            value=[item.encode() for item in history]))
      writer.write(tf.train.Example(
          features=tf.train.Features(feature=feature)).SerializeToString())


def _prediction_log(users, histories, timestamps, logged_at):
  """One PredictLog as the server writes it: histories padded with '', a request_id added."""
  width = max([len(history) for history in histories] + [1])
  padded = np.array([history + [""] * (width - len(history)) for history in histories],
                    dtype=object)
  log = prediction_log_pb2.PredictionLog()
  log.log_metadata.model_spec.name = contract.DEFAULT_MODEL_NAME
  log.log_metadata.model_spec.signature_name = contract.SERVING_SIGNATURE
  log.log_metadata.timestamp_secs = int(logged_at)
  request = log.predict_log.request
  request.model_spec.name = contract.DEFAULT_MODEL_NAME
  for name, value in ((contract.USER_ID, np.array(users, dtype=object)),
                      (contract.HISTORY, padded), (contract.TIMESTAMP, np.asarray(timestamps)),
                      ("request_id", np.array([f"r{i}" for i in range(len(users))], object))):
    request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
  return log


def _write_log(prefix, queries, batch=4, logged_at=None, suffix=".tfrecord"):
  """The queries as PredictLogs of `batch` rows in `<prefix>-<ms>-<pid>.tfrecord`."""
  users, histories, timestamps = queries
  logged_at = logged_at if logged_at is not None else int(timestamps.max())
  path = f"{prefix}-{logged_at * 1000}-{os.getpid()}{suffix}"
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with tf.io.TFRecordWriter(path) as writer:
    for start in range(0, len(users), batch):
      rows = slice(start, start + batch)
      writer.write(_prediction_log(users[rows], histories[rows], timestamps[rows],
                                   logged_at).SerializeToString())
  return path


@pytest.fixture(scope="module")
def transitions(tmp_path_factory):
  """SessionBuilder's transitions: their training split drawn like the requests below."""
  artifact = standard_artifacts.Examples()
  artifact.uri = str(tmp_path_factory.mktemp("transitions"))
  artifact.split_names = artifact_utils.encode_split_names(["train", "eval"])
  split_dir = pathlib.Path(artifact.uri) / "Split-train"
  split_dir.mkdir()
  _write_transitions(split_dir / "data-00000-of-00001.gz", _draw(0, 3000))
  return artifact


@pytest.fixture(scope="module")
def training(transitions):
  return f"{transitions.uri}/Split-train/*"


@pytest.fixture(scope="module")
def schema():
  return data_validation.load_schema(schemas.SKEW_SCHEMA_PATH)


@pytest.fixture
def prefix(tmp_path):
  return model_config.request_log_prefix(str(tmp_path / "serving"), contract.DEFAULT_MODEL_NAME)


def test_the_log_prefix_is_beside_the_models_under_the_serving_root():
  assert model_config.request_log_prefix("gs://b/serving", "recommender") == (
      "gs://b/serving/logs/recommender/predictions")


def test_the_hour_of_week_is_transform_s_formula_on_numpy():
  # Tuesday 2 January 2024 22:00 UTC is hour 24 + 22; two hours later it is Wednesday 0h.
  tuesday_22h = START + 86400 + 22 * 3600
  assert list(contract.hour_of_week(np.array([tuesday_22h, tuesday_22h + 7200, START]))) == [
      46, 48, 0]


def test_a_log_drawn_like_the_training_data_shows_no_skew(training, schema, prefix):
  _write_log(prefix, _draw(1, 600))
  check = skew.check_serving_skew(training, prefix, schema, SkewConfig(window_days=100))
  assert not check.skewed, check.messages()
  assert check.requests == 600
  assert check.summary.startswith("no skew over 600 logged requests against 3000 training")
  # Every feature is measured, each below its threshold.
  measured = skew.measurements(check.anomalies)
  assert [line.split()[0] for line in measured] == [
      "history_item", "history_length", "hour_of_week", "user_status"]
  assert all(" <= " in line for line in measured)
  assert skew.judge(check, stop=True) == f"Serving skew: {check.summary}"


def test_new_users_long_histories_and_one_hour_are_skew_named_with_their_distances(
    training, schema, prefix):
  monday_9h = START + 9 * 3600
  n = 400
  _write_log(prefix, _draw(2, n, users=[f"new{i}" for i in range(n)], history_length=200,
                           timestamps=np.full(n, monday_9h) + np.arange(n)))
  check = skew.check_serving_skew(training, prefix, schema, SkewConfig(window_days=100))
  assert sorted(check.anomalies.anomaly_info) == ["history_length", "hour_of_week", "user_status"]
  measured = dict((line.split()[0], line) for line in skew.measurements(check.anomalies))
  # Every request is from an unknown user, and no training query is: the whole share moved.
  assert measured["user_status"] == "user_status L-infinity 1.000 > 0.5"
  for feature in ("history_length", "hour_of_week"):
    value = float(measured[feature].split()[2])
    assert measured[feature].startswith(f"{feature} Jensen-Shannon ") and value > 0.5
  assert "history_item L-infinity" in measured["history_item"]  # the same items, so within
  messages = check.messages()
  assert any(message.startswith("feature 'user_status': ") and "Linfty distance" in message
             and "threshold 0.5" in message and "unknown" in message for message in messages)


def test_a_placeholder_item_in_every_history_is_item_skew(training, schema, prefix):
  users, histories, timestamps = _draw(3, 300)
  histories = [history + ["placeholder"] * 10 for history in histories]
  _write_log(prefix, (users, histories, timestamps))
  check = skew.check_serving_skew(training, prefix, schema, SkewConfig(window_days=100))
  assert "history_item" in check.anomalies.anomaly_info
  assert "placeholder" in check.anomalies.anomaly_info["history_item"].description


def test_requests_without_a_time_show_as_hour_of_week_skew(training, schema, prefix):
  users, histories, _ = _draw(4, 300)
  _write_log(prefix, (users, histories, np.full(300, contract.UNKNOWN_TIME)), logged_at=START)
  check = skew.check_serving_skew(training, prefix, schema, SkewConfig())
  assert sorted(check.anomalies.anomaly_info) == ["hour_of_week"]


def test_no_closed_log_is_skipped_and_says_so(training, schema, prefix):
  # A file the server still writes is not read, even when it holds requests.
  _write_log(prefix, _draw(5, 300), suffix=".tfrecord.inprogress")
  check = skew.check_serving_skew(training, prefix, schema, SkewConfig())
  assert check.anomalies is None and not check.skewed and check.requests == 0
  assert check.summary == (f"skipped: no request log under {prefix}-*.tfrecord (nothing served "
                           "yet, or request logging off)")
  assert skew.judge(check, stop=True) == f"Serving skew: {check.summary}"


def test_too_few_requests_in_the_window_are_skipped(training, schema, prefix):
  # 300 requests a month before the newest 50: only the newest are in a week's window.
  _write_log(prefix, _draw(6, 300), logged_at=START)
  _write_log(prefix, _draw(7, 50), logged_at=START + 30 * 86400)
  check = skew.check_serving_skew(training, prefix, schema, SkewConfig(min_requests=100))
  assert check.anomalies is None and check.requests == 50
  assert "50 requests logged in 2 files" in check.summary and "fewer than the 100" in check.summary
  wider = skew.check_serving_skew(training, prefix, schema, SkewConfig(window_days=31))
  assert wider.requests == 350


def _missing_timestamp():
  log = _prediction_log(["u1"], [["i1"]], [START], START)
  del log.predict_log.request.inputs[contract.TIMESTAMP]
  return log.SerializeToString()


def _two_users_one_timestamp():
  log = _prediction_log(["u1", "u2"], [["i1"], ["i2"]], [START, START], START)
  log.predict_log.request.inputs[contract.TIMESTAMP].CopyFrom(
      tf.make_tensor_proto(np.array([START])))
  return log.SerializeToString()


@pytest.mark.parametrize("record, problem", [
    (_missing_timestamp, "the logged request has no input 'timestamp'"),
    (_two_users_one_timestamp, "the logged request's inputs disagree on the batch size: "
                               "user_id 2, history 2, timestamp 1"),
    (lambda: b"not a prediction log", "not a PredictionLog"),
])
def test_an_unreadable_logged_record_names_the_file_and_record(training, schema, prefix, record,
                                                               problem):
  path = f"{prefix}-1-1.tfrecord"
  os.makedirs(os.path.dirname(path))
  with tf.io.TFRecordWriter(path) as writer:
    writer.write(_prediction_log(["u0"], [[]], [START], START).SerializeToString())
    writer.write(record())
  with pytest.raises(skew.RequestLogError,
                     match=rf"^{re.escape(path)}, record 1: {re.escape(problem)}"):
    skew.check_serving_skew(training, prefix, schema, SkewConfig(min_requests=1))


def _skewed_check(training, schema, prefix):
  n = 200
  _write_log(prefix, _draw(8, n, users=[f"new{i}" for i in range(n)]))
  return skew.check_serving_skew(training, prefix, schema, SkewConfig(window_days=100))


def test_skew_stops_the_run_when_told_and_is_reported_otherwise(training, schema, prefix):
  check = _skewed_check(training, schema, prefix)
  assert check.skewed
  assert skew.judge(check, stop=False) == (
      f"Serving skew (reported, not stopping): {check.summary}")
  with pytest.raises(skew.ServingSkewError) as stopped:
    skew.judge(check, stop=True)
  assert isinstance(stopped.value, data_validation.DataValidationError)  # printed as a gate stop
  assert "feature 'user_status': The Linfty distance between training and serving is 1" in str(
      stopped.value)
  assert "schemas/serving/skew.pbtxt" in str(stopped.value)


def test_the_gate_records_anomalies_statistics_and_the_run_line(training, schema, prefix,
                                                               tmp_path):
  check = _skewed_check(training, schema, prefix)
  output = standard_artifacts.ExampleAnomalies()
  output.uri = str(tmp_path / "skew")
  report = skew.judge(check, stop=False)
  data_gates.record_skew(output, check, report)
  assert output.get_string_custom_property(artifact_properties.SKEW_REPORT) == report
  assert output.get_int_custom_property(artifact_properties.SKEW_DETECTED) == 1
  assert output.get_int_custom_property(artifact_properties.SKEW_REQUESTS) == 200
  assert output.split_names == '["serving"]'
  written = data_validation.anomaly_messages(anomalies_util.load_anomalies_binary(
      str(tmp_path / "skew" / "Split-serving" / data_validation.ANOMALIES_FILE)))
  assert written == check.messages()
  serving = tmp_path / "skew" / "Split-serving" / skew.SERVING_STATISTICS_FILE
  assert serving.read_bytes() == check.serving_statistics.SerializeToString()


@pytest.mark.parametrize("stop", [False, True])
def test_the_gate_component_reports_skew_or_stops_the_run(transitions, prefix, tmp_path, stop):
  _write_log(prefix, _draw(9, 200, users=[f"new{i}" for i in range(200)]))
  schema = standard_artifacts.Schema()
  schema.uri = str(tmp_path / "schema")
  os.makedirs(schema.uri)
  pathlib.Path(schema.uri, "schema.pbtxt").write_text(schemas.SKEW_SCHEMA_PATH.read_text())
  output = standard_artifacts.ExampleAnomalies()
  output.uri = str(tmp_path / "skew")
  execute = functools.partial(
      data_gates.SkewGate.EXECUTOR_SPEC.executor_class().Do,
      {"transitions": [transitions], "schema": [schema]}, {"skew": [output]},
      {"request_log_prefix": prefix, "stop": int(stop), "min_requests": 100,
       "window_days": 100.0})
  if stop:
    with pytest.raises(skew.ServingSkewError, match="feature 'user_status'"):
      execute()
    return
  execute()
  assert output.get_int_custom_property(artifact_properties.SKEW_DETECTED) == 1
  assert output.get_string_custom_property(artifact_properties.SKEW_REPORT).startswith(
      "Serving skew (reported, not stopping): skew in user_status over 200 logged requests "
      "against 3000 training queries")
  assert (tmp_path / "skew" / "Split-serving" / data_validation.ANOMALIES_FILE).exists()


def test_a_skipped_check_is_recorded_without_files(training, schema, prefix, tmp_path):
  check = skew.check_serving_skew(training, prefix, schema, SkewConfig())
  output = standard_artifacts.ExampleAnomalies()
  output.uri = str(tmp_path / "skew")
  data_gates.record_skew(output, check, skew.judge(check, stop=True))
  assert output.get_int_custom_property(artifact_properties.SKEW_DETECTED) == 0
  assert output.get_int_custom_property(artifact_properties.SKEW_REQUESTS) == 0
  assert not (tmp_path / "skew").exists()


def test_the_window_and_minimum_are_validated():
  with pytest.raises(ValueError, match="min_requests"):
    dataclasses.replace(SkewConfig(), min_requests=0)
  with pytest.raises(ValueError, match="window_days"):
    SkewConfig(window_days=0)
