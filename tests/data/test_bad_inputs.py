"""The bad-input corpus (tests/data/bad_inputs/README.md): each file fails, or passes, as stated."""
import logging
import pathlib

import pytest
import tensorflow as tf

from components.data import ingest
from components.data import sessions
from schemas import contract

CORPUS = pathlib.Path(__file__).parent / "bad_inputs"


def _written_events(examples_dir: pathlib.Path) -> list:
  """The ingested records, read back with the session builder's own parser."""
  records = tf.data.TFRecordDataset(str(examples_dir / ingest.EXAMPLES_FILE),
                                    compression_type="GZIP")
  return [sessions.event_from_example(bytes(record.numpy())) for record in records]


def test_every_corpus_file_is_listed_in_the_readme():
  readme = (CORPUS / "README.md").read_text()
  assert all(f"`{path.name}`" in readme for path in CORPUS.glob("*.csv"))


@pytest.mark.parametrize("name, message", [
    ("missing_column.csv", r"missing_column.csv: missing required column 'item_id'"),
    ("duplicate_column.csv",
     r"duplicate_column.csv line 1: column 'item_id' appears more than once in the header"),
    ("wrong_type_timestamp.csv",
     r"wrong_type_timestamp.csv line 3: field 'timestamp' has value 'yesterday'"),
    ("wrong_type_price.csv", r"wrong_type_price.csv line 2: field 'price' has value 'abc', "
                             r"expected a number"),
    ("wrong_type_position.csv", r"wrong_type_position.csv line 3: field 'position' has value "
                                r"'first', expected an integer >= 0"),
    ("zero_propensity.csv", r"zero_propensity.csv line 2: field 'propensity' has value '0', "
                            r"expected a probability in \(0, 1\]"),
    ("id_with_space.csv", r"id_with_space.csv line 2: field 'item_id' has value 'i 1'"),
    ("empty.csv", r"empty.csv: the file is empty"),
    ("header_only.csv", r"header_only.csv: the file has a header but no rows"),
    ("non_utf8.csv", r"non_utf8.csv line 3: bytes b'\\xe9' are not valid UTF-8 \(byte offset 96, "
                     r"field 'category', value 'caf\\xe9'\)"),
    ("truncated_last_line.csv", r"truncated_last_line.csv line 3: expected 4 fields .* found 3 "
                                r"in 'u1,i2,17000', without field 'event'"),
])
def test_unreadable_input_is_rejected_naming_file_line_field_and_value(name, message, tmp_path):
  with pytest.raises(ingest.InputDataError, match=message):
    ingest.prepare_dataset(CORPUS / name, out_dir=tmp_path)
  assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("name, field, value", [
    ("negative_price.csv", contract.PRICE, -9.5),
    ("future_timestamp.csv", contract.TIMESTAMP, 10_413_792_000),
    ("future_timestamp_iso.csv", contract.TIMESTAMP, 10_413_792_000),
    ("unknown_event.csv", contract.EVENT, "teleport"),
])
def test_out_of_domain_values_pass_ingestion_intact_for_the_schema_to_judge(name, field, value,
                                                                           tmp_path):
  assert ingest.load_interactions(CORPUS / name)[field].tolist() == [value]
  (event,) = _written_events(ingest.prepare_dataset(CORPUS / name, out_dir=tmp_path))
  assert getattr(event, field) == value  # -9.5 is exact in float32


def test_duplicate_rows_pass_with_a_warning_naming_count_and_lines(caplog):
  with caplog.at_level(logging.WARNING, logger="absl"):
    events = ingest.load_interactions(CORPUS / "duplicate_rows.csv")
  assert len(events) == 3  # the session builder drops the copy
  (warning,) = [record for record in caplog.records if record.levelno == logging.WARNING]
  assert ("duplicate_rows.csv: 1 rows repeat an earlier row exactly, the first at line 4, a copy "
          "of line 2" in warning.getMessage())


def test_duplicate_rows_are_all_written_for_the_session_builder_to_drop(tmp_path):
  events = _written_events(ingest.prepare_dataset(CORPUS / "duplicate_rows.csv",
                                                  out_dir=tmp_path))
  assert [event.item_id for event in events] == ["i1", "i2", "i1"]
  assert events[0] == events[2]
