"""The bad-input corpus (tests/data/bad_inputs/README.md): each file fails, or passes, as stated."""
import pathlib

from absl import logging
import pytest

from components import features
from components.data import ingest

CORPUS = pathlib.Path(__file__).parent / "data" / "bad_inputs"


@pytest.mark.parametrize("name, message", [
    ("missing_column.csv", r"missing_column.csv: missing required column 'item_id'"),
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
    ("non_utf8.csv", r"non_utf8.csv line 3: bytes b'\\xe9' are not valid UTF-8"),
    ("truncated_last_line.csv", r"truncated_last_line.csv line 3: expected 4 fields .* found 3"),
])
def test_unreadable_input_is_rejected_naming_file_line_field_and_value(name, message, tmp_path):
  with pytest.raises(ingest.InputDataError, match=message):
    ingest.prepare_dataset(CORPUS / name, out_dir=tmp_path)
  assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("name, field, value", [
    ("negative_price.csv", features.PRICE, -9.5),
    ("future_timestamp.csv", features.TIMESTAMP, 10_413_792_000),
    ("unknown_event.csv", features.EVENT, "teleport"),
])
def test_out_of_domain_values_pass_ingestion_intact_for_the_schema_to_judge(name, field, value):
  events = ingest.load_interactions(CORPUS / name)
  assert events[field].tolist() == [value]


def test_duplicate_rows_pass_with_a_warning_naming_count_and_line(monkeypatch):
  warnings = []
  monkeypatch.setattr(logging, "warning", lambda message, *args: warnings.append(message % args))
  events = ingest.load_interactions(CORPUS / "duplicate_rows.csv")
  assert len(events) == 3  # the session builder drops the copy
  (warning,) = warnings
  assert "duplicate_rows.csv: 1 rows repeat an earlier row exactly" in warning
  assert "line 4" in warning
