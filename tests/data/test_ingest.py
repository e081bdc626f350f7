"""Ingestion: every format round-trips to Examples, unreadable input is named precisely."""
import datetime
import gzip
import os
import re

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from components.data import ingest
from components.data import sessions
from components.data.config import DataMinimums
from components.simulation import generator
from schemas import contract


def _write(path, text):
  path.write_text(text)
  return path


def _read_examples(path) -> pd.DataFrame:
  """The TFRecord file read back with the session builder's own parser, in file order."""
  records = tf.data.TFRecordDataset(str(path), compression_type="GZIP")
  events = [sessions.event_from_example(bytes(record.numpy())) for record in records]
  frame = pd.DataFrame(events, columns=sessions.Event._fields)
  return frame.dropna(axis="columns", how="all")  # optional fields no record has


def _assert_round_trip(examples_dir, expected: pd.DataFrame):
  assert sorted(os.listdir(examples_dir)) == [ingest.EXAMPLES_FILE]
  actual = _read_examples(examples_dir / ingest.EXAMPLES_FILE)
  # Floats travel as float32 in tf.train.Example.
  floats = [column for column in (contract.RATING, contract.PRICE, contract.PROPENSITY)
            if column in expected]
  pd.testing.assert_frame_equal(actual.astype({c: np.float32 for c in floats}),
                                expected.astype({c: np.float32 for c in floats}).reset_index(
                                    drop=True), check_dtype=False)


def _expected(rows):
  return pd.DataFrame(rows, columns=list(contract.REQUIRED_EVENT_COLUMNS))


# --- formats ------------------------------------------------------------------------------------


def test_generic_round_trip_with_items_join(tmp_path):
  interactions = _write(tmp_path / "events.csv", (
      "user_id,item_id,timestamp,event,price,category\n"
      "u2,i1,1700000300,purchase,9.5,\n"  # interaction price wins over the items file's
      "u1,i1,2023-11-14T22:13:20Z,view,,\n"  # ISO date (= 1700000000)
      "u1,i2,1700000100,,,shoes\n"  # no event, no rating column: a view
      "u1,i3,2023-11-14 23:15:00+01:00,click,,\n"))  # = 1700000100, tie keeps file order
  items = _write(tmp_path / "items.csv", (
      "item_id,category,price,title\n"
      "i1,books,12.0,\"Dune, the novel\"\n"
      "i2,toys,3.25,Ball\n"
      "i9,music,1.0,Unused\n"))
  examples_dir = ingest.prepare_dataset(interactions, items, out_dir=tmp_path / "out")
  assert examples_dir == tmp_path / "out"
  _assert_round_trip(examples_dir, _expected([
      ("u2", "i1", 1700000300, "purchase", 0.0, 9.5, "books"),
      ("u1", "i1", 1700000000, "view", 0.0, 12.0, "books"),
      ("u1", "i2", 1700000100, "view", 0.0, 3.25, "shoes"),
      ("u1", "i3", 1700000100, "click", 0.0, 0.0, contract.UNKNOWN_CATEGORY),
  ]).assign(title=["Dune, the novel", "Dune, the novel", "Ball", None]))


def test_titles_in_the_interaction_log_win_and_a_titleless_source_has_no_title_column(tmp_path):
  interactions = _write(tmp_path / "events.csv", (
      "user_id,item_id,timestamp,title\n"
      "u1,i1,1700000000,Logged title\n"
      "u1,i2,1700000001,\n"))
  items = _write(tmp_path / "items.csv", "item_id,title\ni1,Catalog title\ni2,Ball\n")
  assert list(ingest.load_interactions(interactions, items)[contract.TITLE]) == [
      "Logged title", "Ball"]
  plain = _write(tmp_path / "plain.csv", "user_id,item_id,timestamp\nu1,i1,1\n")
  untitled_items = _write(tmp_path / "untitled.csv", "item_id,category\ni1,books\n")
  assert contract.TITLE not in ingest.load_interactions(plain, untitled_items)


def test_impression_log_columns_round_trip_and_absent_fields_are_omitted(tmp_path):
  interactions = _write(tmp_path / "log.csv", (
      "user_id,item_id,timestamp,event,price,session_id,position,propensity\n"
      "u1,i1,1700000000,impression,5.0,s1,0,0.25\n"
      "u1,i2,1700000000,click,6.0,s1,1,1\n"
      "u2,i3,1700000100,view,7.0,,,\n"))
  examples_dir = ingest.prepare_dataset(interactions, out_dir=tmp_path / "out")
  expected = _expected([
      ("u1", "i1", 1700000000, "impression", 0.0, 5.0, contract.UNKNOWN_CATEGORY),
      ("u1", "i2", 1700000000, "click", 0.0, 6.0, contract.UNKNOWN_CATEGORY),
      ("u2", "i3", 1700000100, "view", 0.0, 7.0, contract.UNKNOWN_CATEGORY),
  ]).assign(session_id=["s1", "s1", None], position=[0, 1, None],
            propensity=[0.25, 1.0, None])
  _assert_round_trip(examples_dir, expected)
  record = next(iter(tf.data.TFRecordDataset(
      str(examples_dir / ingest.EXAMPLES_FILE), compression_type="GZIP").skip(2)))
  assert set(tf.train.Example.FromString(record.numpy()).features.feature) == set(
      contract.REQUIRED_EVENT_COLUMNS)


def test_impression_log_columns_load_with_their_types(tmp_path):
  interactions = _write(tmp_path / "log.csv", (
      "user_id,item_id,timestamp,event,position,session_id\n"
      "u1,i1,1700000000,impression,0,s1\n"
      "u1,i2,1700000000,click,,\n"))
  events = ingest.load_interactions(interactions)
  # Optional columns follow the required ones in features' order, whatever the file's order.
  assert tuple(events.columns) == contract.REQUIRED_EVENT_COLUMNS + (
      contract.SESSION_ID, contract.POSITION)
  assert events[contract.POSITION].dtype == pd.Int64Dtype()
  assert events[contract.POSITION].tolist()[0] == 0
  assert events[contract.POSITION].isna().tolist() == [False, True]
  assert events[contract.SESSION_ID].tolist()[0] == "s1"
  assert events[contract.SESSION_ID].isna().tolist() == [False, True]


def test_generic_defaults_event_to_rating_when_ratings_are_given(tmp_path):
  interactions = _write(tmp_path / "ratings.csv",
                        "user_id,item_id,timestamp,rating\n7,42,1700000000,4.5\n7,43,1700000001,\n")
  events = ingest.load_interactions(interactions)
  assert list(events[contract.EVENT]) == ["rating", "rating"]
  assert list(events[contract.RATING]) == [4.5, 0.0]
  assert list(events[contract.USER_ID]) == ["7", "7"]  # numeric ids stay strings


def test_load_interactions_types(tmp_path):
  interactions = _write(tmp_path / "e.csv", "user_id,item_id,timestamp\n1,2,3\n")
  events = ingest.load_interactions(interactions)
  assert tuple(events.columns) == contract.REQUIRED_EVENT_COLUMNS
  assert events.dtypes.to_dict() == {
      contract.USER_ID: object, contract.ITEM_ID: object, contract.TIMESTAMP: np.int64,
      contract.EVENT: object, contract.RATING: np.float64, contract.PRICE: np.float64,
      contract.CATEGORY: object}
  assert events.iloc[0].tolist() == ["1", "2", 3, "view", 0.0, 0.0, contract.UNKNOWN_CATEGORY]


def test_parquet_interactions_match_csv(tmp_path):
  csv_path = _write(tmp_path / "events.csv", (
      "user_id,item_id,timestamp,event,rating\n"
      "u1,i1,1700000000,rating,4.0\n"
      "u1,i2,2023-11-14T22:15:00Z,click,\n"))
  pd.DataFrame({
      "user_id": ["u1", "u1"], "item_id": ["i1", "i2"],
      "timestamp": pd.to_datetime([1700000000, 1700000100], unit="s", utc=True),
      "event": ["rating", "click"], "rating": [4.0, None],
  }).to_parquet(tmp_path / "events.parquet")
  pd.testing.assert_frame_equal(ingest.load_interactions(tmp_path / "events.parquet"),
                                ingest.load_interactions(csv_path))


def test_parquet_nullable_impression_columns_match_csv(tmp_path):
  """pandas' nullable dtypes (Int64, string) survive Parquet; their NA is an absent field."""
  csv_path = _write(tmp_path / "log.csv", (
      "user_id,item_id,timestamp,event,session_id,position,propensity\n"
      "u1,i1,1700000000,impression,s1,0,0.5\n"
      "u1,i2,1700000000,click,,,\n"))
  pd.DataFrame({
      "user_id": ["u1", "u1"], "item_id": ["i1", "i2"], "timestamp": [1700000000] * 2,
      "event": ["impression", "click"],
      "session_id": pd.array(["s1", None], dtype="string"),
      "position": pd.array([0, None], dtype="Int64"), "propensity": [0.5, None],
  }).to_parquet(tmp_path / "log.parquet")
  pd.testing.assert_frame_equal(ingest.load_interactions(tmp_path / "log.parquet"),
                                ingest.load_interactions(csv_path))


def test_parquet_date_times_beyond_pandas_range_are_read(tmp_path):
  """pandas' nanosecond date-times end in 2262; a later one is readable, for the schema to judge."""
  pd.DataFrame({
      "user_id": ["u1", "u1"], "item_id": ["i1", "i2"],
      "timestamp": [datetime.datetime(2300, 1, 1),
                    datetime.datetime(1969, 12, 31, 23, 59, 59, 500)],  # floor: -1
  }).to_parquet(tmp_path / "events.parquet")
  assert ingest.load_interactions(tmp_path / "events.parquet")[contract.TIMESTAMP].tolist() == [
      10_413_792_000, -1]


def test_parquet_errors_name_the_row(tmp_path):
  pd.DataFrame({"user_id": ["u1", None], "item_id": ["i1", "i2"],
                "timestamp": [1, 2]}).to_parquet(tmp_path / "events.parquet")
  with pytest.raises(ingest.InputDataError, match=r"events.parquet row 2: field 'user_id'"):
    ingest.load_interactions(tmp_path / "events.parquet")


def test_generated_dataset_round_trips(tmp_path):
  dataset = generator.generate_dataset(tmp_path / "raw", seed=1, n_users=30, n_items=20,
                                       n_events=500)
  examples_dir = ingest.prepare_dataset(dataset.interactions, dataset.items,
                                        out_dir=tmp_path / "out")
  expected = ingest.load_interactions(dataset.interactions, dataset.items)
  _assert_round_trip(examples_dir, expected)
  # An impression log; request ids and model versions come from the server's request log.
  assert {contract.SESSION_ID, contract.POSITION, contract.PROPENSITY, contract.TITLE} <= set(
      expected.columns)
  assert set(expected[contract.EVENT]) <= set(contract.EVENT_TYPES)
  assert (expected[contract.PRICE] > 0).all()
  assert not (expected[contract.CATEGORY] == contract.UNKNOWN_CATEGORY).any()


def test_movielens_round_trip(tmp_path):
  ratings = _write(tmp_path / "ratings.csv", (
      "userId,movieId,rating,timestamp\n"
      "1,10,4.0,964982703\n"
      "1,11,3.5,964982224\n"
      "2,12,5.0,964982931\n"))
  movies = _write(tmp_path / "movies.csv", (
      "movieId,title,genres\n"
      "10,GoldenEye (1995),Action|Adventure|Thriller\n"
      "11,\"American President, The (1995)\",Comedy|Drama|Romance\n"
      "12,Some Film (2015),(no genres listed)\n"))
  examples_dir = ingest.prepare_dataset(ratings, movies, fmt="movielens", out_dir=tmp_path / "out")
  _assert_round_trip(examples_dir, _expected([
      ("1", "10", 964982703, "rating", 4.0, 0.0, "Action"),
      ("1", "11", 964982224, "rating", 3.5, 0.0, "Comedy"),
      ("2", "12", 964982931, "rating", 5.0, 0.0, contract.UNKNOWN_CATEGORY),
  ]).assign(title=["GoldenEye (1995)", "American President, The (1995)", "Some Film (2015)"]))


def test_movielens_100k_round_trip(tmp_path):
  data = _write(tmp_path / "u.data", "196\t242\t3\t881250949\n186\t302\t3\t891717742\n"
                                     "196\t302\t1\t881250950\n")
  flags = lambda *on: "|".join("1" if k in on else "0" for k in range(19))
  (tmp_path / "u.item").write_bytes(
      ("242|Kolya (1996)|24-Jan-1997||http://x|" + flags(5) + "\n"
       "302|L.A. Confidential (1997)|01-Jan-1997||http://x|" + flags(6, 16) + "\n"
       "303|Ça ira|01-Jan-1997||http://x|" + flags() + "\n").encode("latin-1"))
  examples_dir = ingest.prepare_dataset(data, tmp_path / "u.item", fmt="movielens-100k",
                                        out_dir=tmp_path / "out")
  _assert_round_trip(examples_dir, _expected([
      ("196", "242", 881250949, "rating", 3.0, 0.0, "Comedy"),
      ("186", "302", 891717742, "rating", 3.0, 0.0, "Crime"),
      ("196", "302", 881250950, "rating", 1.0, 0.0, "Crime"),
  ]).assign(title=["Kolya (1996)", "L.A. Confidential (1997)", "L.A. Confidential (1997)"]))


def test_movielens_latest_small(movielens_dir, tmp_path):
  examples_dir = ingest.prepare_dataset(movielens_dir / "ratings.csv",
                                        movielens_dir / "movies.csv", fmt="movielens",
                                        out_dir=tmp_path / "out")
  examples = _read_examples(examples_dir / ingest.EXAMPLES_FILE)
  assert len(examples) == 100_836
  assert examples[contract.USER_ID].nunique() == 610
  assert set(examples[contract.EVENT]) == {"rating"}
  categories = examples.drop_duplicates(contract.ITEM_ID).set_index(contract.ITEM_ID)[
      contract.CATEGORY]
  assert categories["1"] == "Adventure"  # Toy Story: Adventure|Animation|...
  assert categories["2"] == "Adventure"  # Jumanji
  assert examples[contract.RATING].between(0.5, 5.0).all()


# --- unreadable input ---------------------------------------------------------------------------


_HEADER = "userId,movieId,rating,timestamp\n"


def _ratings_with_line(bad_line: str, at_line: int = 57) -> str:
  """A ratings.csv whose line `at_line` (header = line 1) is `bad_line`."""
  good = [f"1,{movie},4.0,964982703\n" for movie in range(at_line - 2)]
  return _HEADER + "".join(good) + bad_line + "\n" + "2,1,3.0,964982703\n"


@pytest.mark.parametrize("content, message", [
    ("", "ratings.csv: the file is empty"),
    ("\n\n", "ratings.csv: the file is empty"),
    (_HEADER, "ratings.csv: the file has a header but no rows"),
    ("userId,movieId,rating\n1,1,4.0\n",
     "ratings.csv: missing required column 'timestamp'; columns found: userId, movieId, rating"),
    (_ratings_with_line("3,9,4.0,abc"),
     "ratings.csv line 57: field 'timestamp' has value 'abc', "
     "expected an integer epoch time or ISO-8601 date"),
    (_ratings_with_line("3,9,four,964982703", at_line=4),
     "ratings.csv line 4: field 'rating' has value 'four', expected a number"),
    (_ratings_with_line("3,9,4.0,964982703.5", at_line=3),
     "ratings.csv line 3: field 'timestamp' has value '964982703.5'"),
    (_ratings_with_line(",9,4.0,964982703", at_line=2),
     "ratings.csv line 2: field 'userId' has value '', expected a non-empty id"),
    (_ratings_with_line("3,9,4.0,964982703,extra", at_line=5),
     "ratings.csv line 5: expected 4 fields (userId,movieId,rating,timestamp), found 5"),
    (_HEADER + "1,1,4.0,964982703\n1,2,4.",
     "ratings.csv line 3: expected 4 fields (userId,movieId,rating,timestamp), found 3 in "
     "'1,2,4.', without field 'timestamp'"),
])
def test_unreadable_ratings_are_named(tmp_path, content, message):
  ratings = _write(tmp_path / "ratings.csv", content)
  with pytest.raises(ingest.InputDataError) as error:
    ingest.load_interactions(ratings, fmt="movielens")
  assert message in str(error.value)


@pytest.mark.parametrize("field, value, message", [
    ("item_id", "", "line 3: field 'item_id' has value '', expected a non-empty id"),
    ("item_id", "i\t2", "line 3: field 'item_id' has value 'i\t2', expected an id without "
                        "whitespace or control characters"),
    ("user_id", "u\x01", "line 3: field 'user_id' has value 'u\x01', expected an id without"),
    ("position", "-1", "line 3: field 'position' has value '-1', expected an integer >= 0"),
    ("position", "1.5", "line 3: field 'position' has value '1.5', expected an integer >= 0"),
    ("position", "1e30", "line 3: field 'position' has value '1e30', expected an integer >= 0"),
    ("propensity", "1.5",
     "line 3: field 'propensity' has value '1.5', expected a probability in (0, 1]"),
    ("propensity", "-0.1",
     "line 3: field 'propensity' has value '-0.1', expected a probability in (0, 1]"),
    ("propensity", "high",
     "line 3: field 'propensity' has value 'high', expected a probability in (0, 1]"),
])
def test_malformed_generic_fields_are_named(tmp_path, field, value, message):
  """Ids, positions and propensities of the wrong form are rejected, not left to the schema."""
  good = {"user_id": "u1", "item_id": "i1", "timestamp": "1700000000", "position": "0",
          "propensity": "0.5"}
  columns = ["user_id", "item_id", "timestamp"]
  columns += [field] if field not in columns else []
  lines = [",".join(columns)]
  for row in (good, {**good, field: value}):  # line 2 is good, line 3 is not
    lines.append(",".join(row[column] for column in columns))
  interactions = _write(tmp_path / "log.csv", "\n".join(lines) + "\n")
  with pytest.raises(ingest.InputDataError) as error:
    ingest.load_interactions(interactions)
  assert f"log.csv {message}" in str(error.value)


@pytest.mark.parametrize("timestamp, seconds", [
    ("1700000000", 1700000000),
    ("-20", -20),
    ("2023-11-14", 1699920000),
    ("2023-11-14T22:13:20Z", 1700000000),
    ("2023-11-14 22:13:20", 1700000000),  # no offset: UTC
    ("2023-11-14T23:13+01:00", 1700000000 - 20),
    ("2023-11-14T17:13:20-0500", 1700000000),
    ("2023-11-14T22:13:20.999Z", 1700000000),  # the fraction is dropped
    ("1969-12-31T23:59:59.5", -1),  # floor, before the epoch too
    ("2300-01-01T00:00:00Z", 10_413_792_000),
])
def test_timestamp_forms(tmp_path, timestamp, seconds):
  interactions = _write(tmp_path / "e.csv", f"user_id,item_id,timestamp\nu,i,{timestamp}\n")
  assert ingest.load_interactions(interactions)[contract.TIMESTAMP].tolist() == [seconds]


@pytest.mark.parametrize("timestamp", [
    "yesterday", "1700000000.5", "2023-02-30", "2023-11-14T25:00", "2023-11-14T22:13+24:00",
    "14/11/2023", "2023-11-14T22:13:20 UTC"])
def test_unreadable_timestamps_are_named(tmp_path, timestamp):
  interactions = _write(tmp_path / "e.csv", f"user_id,item_id,timestamp\nu,i,{timestamp}\n")
  with pytest.raises(ingest.InputDataError, match=re.escape(
      f"e.csv line 2: field 'timestamp' has value '{timestamp}', expected")):
    ingest.load_interactions(interactions)


def test_error_counts_further_bad_rows(tmp_path):
  ratings = _write(tmp_path / "ratings.csv", _HEADER + "1,1,x,1\n1,2,y,1\n1,3,z,1\n")
  with pytest.raises(ingest.InputDataError, match=r"line 2: .*'x'.* \(2 more rows like this\)"):
    ingest.load_interactions(ratings, fmt="movielens")


def test_missing_file_is_named(tmp_path):
  with pytest.raises(ingest.InputDataError, match=r"nowhere\.csv: file not found"):
    ingest.load_interactions(tmp_path / "nowhere.csv")


def test_missing_items_file_is_named(tmp_path):
  interactions = _write(tmp_path / "events.csv", "user_id,item_id,timestamp\nu,i,1\n")
  with pytest.raises(ingest.InputDataError, match=r"items\.csv: file not found"):
    ingest.load_interactions(interactions, tmp_path / "items.csv")


def test_non_utf8_bytes_name_the_line(tmp_path):
  ratings = tmp_path / "ratings.csv"
  ratings.write_bytes(_HEADER.encode() + b"1,1,4.0,964982703\n1,caf\xe9,4.0,964982703\n")
  with pytest.raises(ingest.InputDataError,
                     match=r"ratings\.csv line 3: bytes b'\\xe9' are not valid UTF-8"):
    ingest.load_interactions(ratings, fmt="movielens")


@pytest.mark.parametrize("data, fmt, message", [
    # The field of a multi-line quoted value, after a byte-order mark and a blank line.
    (b"\xef\xbb\xbfuser_id,item_id,timestamp,title\n\nu,i,1,\"a,\nb\xff\"\n", "generic",
     r"line 4: bytes b'\\xff' are not valid UTF-8 \(byte offset 47, field 'title', "
     r"value 'a,\nb\\xff'\)"),
    (b"1\t2\t3\t4\n1\t\xff2\t3\t4\n", "movielens-100k",
     r"line 2: bytes b'\\xff' are not valid UTF-8 \(byte offset 10, field 'item id', "
     r"value '\\xff2'\)"),
    # In the header there is no field to name.
    (b"user_id,item_id,timestamp,caf\xe9\nu,i,1,v\n", "generic",
     r"line 1: bytes b'\\xe9' are not valid UTF-8 \(byte offset 29\)"),
])
def test_non_utf8_bytes_name_the_field_and_value(tmp_path, data, fmt, message):
  interactions = tmp_path / "events"
  interactions.write_bytes(data)
  with pytest.raises(ingest.InputDataError, match=f"events {message}; save the file as UTF-8"):
    ingest.load_interactions(interactions, fmt=fmt)


def test_utf8_byte_order_mark_is_accepted(tmp_path):
  interactions = tmp_path / "events.csv"
  interactions.write_bytes("user_id,item_id,timestamp\nü,i,1\n".encode("utf-8-sig"))
  assert ingest.load_interactions(interactions)[contract.USER_ID].tolist() == ["ü"]


def test_duplicate_item_in_items_file_is_named(tmp_path):
  interactions = _write(tmp_path / "events.csv", "user_id,item_id,timestamp\nu,i1,1\n")
  items = _write(tmp_path / "items.csv", "item_id,price\ni1,2.0\ni2,3.0\ni1,4.0\n")
  with pytest.raises(ingest.InputDataError,
                     match=r"items\.csv line 4: field 'item_id' has value 'i1'"):
    ingest.load_interactions(interactions, items)


def test_unknown_format_is_named(tmp_path):
  interactions = _write(tmp_path / "events.csv", "user_id,item_id,timestamp\nu,i,1\n")
  with pytest.raises(ingest.InputDataError,
                     match="unknown format 'movielens-1m'; expected one of generic, movielens"):
    ingest.load_interactions(interactions, fmt="movielens-1m")


def test_input_data_error_is_a_value_error():
  assert issubclass(ingest.InputDataError, ValueError)


def test_domain_problems_pass_through_for_schema_validation(tmp_path):
  interactions = _write(tmp_path / "events.csv", (
      "user_id,item_id,timestamp,event,rating,price\n"
      "u1,i1,9999999999,teleport,9.5,-3.5\n"
      "u1,i2,-20,view,-1,0\n"))
  examples_dir = ingest.prepare_dataset(interactions, out_dir=tmp_path / "out")
  _assert_round_trip(examples_dir, _expected([
      ("u1", "i1", 9999999999, "teleport", 9.5, -3.5, contract.UNKNOWN_CATEGORY),
      ("u1", "i2", -20, "view", -1.0, 0.0, contract.UNKNOWN_CATEGORY),
  ]))


# --- writing ------------------------------------------------------------------------------------


def _events(n_users=3):
  events = pd.DataFrame({
      contract.USER_ID: [f"u{k % n_users}" for k in range(12)],
      contract.ITEM_ID: [f"i{k}" for k in range(12)],
      contract.TIMESTAMP: np.arange(12, dtype=np.int64),
      contract.EVENT: "view", contract.RATING: 0.0, contract.PRICE: 1.5, contract.CATEGORY: "c",
  })
  return events


def test_unchanged_content_leaves_the_file_untouched(tmp_path):
  path = tmp_path / "examples" / ingest.EXAMPLES_FILE
  assert ingest.write_examples(_events(), path)
  os.utime(path, ns=(1_000_000_000, 1_000_000_000))  # an mtime a rewrite could not keep
  before = path.stat()
  assert not ingest.write_examples(_events(), path)
  after = path.stat()
  assert (after.st_mtime_ns, after.st_ino) == (before.st_mtime_ns, before.st_ino)
  assert os.listdir(path.parent) == [ingest.EXAMPLES_FILE]  # no temporary file left behind


def test_changed_content_is_rewritten(tmp_path):
  path = tmp_path / ingest.EXAMPLES_FILE
  ingest.write_examples(_events(n_users=3), path)
  os.utime(path, ns=(1_000_000_000, 1_000_000_000))
  assert ingest.write_examples(_events(n_users=4), path)
  assert path.stat().st_mtime_ns != 1_000_000_000
  assert _read_examples(path)[contract.USER_ID].nunique() == 4
  assert os.listdir(tmp_path) == [ingest.EXAMPLES_FILE]


def test_damaged_file_is_replaced(tmp_path):
  path = tmp_path / ingest.EXAMPLES_FILE
  path.write_bytes(b"not gzip")
  assert ingest.write_examples(_events(), path)
  assert len(_read_examples(path)) == 12


def test_prepare_dataset_is_idempotent(tmp_path):
  interactions = _write(tmp_path / "events.csv", "user_id,item_id,timestamp\nu,i,1\nu,j,2\n")
  out = ingest.prepare_dataset(interactions, out_dir=tmp_path / "out")
  mtime = (out / ingest.EXAMPLES_FILE).stat().st_mtime_ns
  ingest.prepare_dataset(interactions, out_dir=tmp_path / "out")
  assert (out / ingest.EXAMPLES_FILE).stat().st_mtime_ns == mtime


def test_random_bytes_are_named_as_binary_not_as_an_empty_table(tmp_path):
  noise = tmp_path / "events.csv"
  noise.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
  with pytest.raises(ingest.InputDataError,
                     match=r"^events\.csv: not a text file \(binary data: a NUL byte at offset"):
    ingest.load_interactions(noise)


def test_an_archive_is_named_with_what_to_do(tmp_path):
  archive = tmp_path / "events.csv"
  archive.write_bytes(gzip.compress(b"user_id,item_id,timestamp\nu1,i1,1700000000\n"))
  with pytest.raises(ingest.InputDataError,
                     match="events.csv: not a text file but a gzip archive; extract the CSV"):
    ingest.load_interactions(archive)


def _engagements(n_users: int, n_items: int, n_events: int, event: str = "click"):
  rows = [f"u{n % n_users},i{n % n_items},{1_700_000_000 + n},{event}" for n in range(n_events)]
  return "user_id,item_id,timestamp,event\n" + "\n".join(rows) + "\n"


@pytest.mark.parametrize("text, message", [
    (_engagements(1, 50, 3000),
     "events.csv: the engagements have 1 distinct user_id value ('u0'); training and "
     "evaluating a recommender needs at least 10 users (--min-users lowers the minimum)"),
    (_engagements(40, 1, 3000),
     "events.csv: the engagements have 1 distinct item_id value ('i0'); training and "
     "evaluating a recommender needs at least 10 items (--min-items lowers the minimum)"),
    (_engagements(40, 50, 3000, event="impression"),
     "events.csv: none of its 3000 events is an engagement (event types: impression)"),
    (_engagements(20, 20, 60),
     "events.csv: 60 engagements, fewer than the 100 needed to train a model"),
], ids=["one user", "one item", "impressions only", "too few engagements"])
def test_data_too_small_or_uniform_to_train_on_is_refused_and_nothing_written(tmp_path, text,
                                                                              message):
  events = _write(tmp_path / "events.csv", text)
  with pytest.raises(ingest.InputDataError) as refused:
    ingest.prepare_dataset(events, out_dir=tmp_path / "out",
                           minimums=DataMinimums())
  assert str(refused.value).startswith(message)
  assert not (tmp_path / "out").exists()


def test_the_minimums_are_configurable(tmp_path):
  events = _write(tmp_path / "events.csv", _engagements(3, 50, 300))
  out = ingest.prepare_dataset(events, out_dir=tmp_path / "out",
                               minimums=DataMinimums(users=3))
  assert (out / ingest.EXAMPLES_FILE).exists()
