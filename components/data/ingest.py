"""Turns a user's interaction files into the pipeline's input: GZIP TFRecord of tf.train.Example.

Formats (`fmt`):
  * `generic`: a CSV (or `.parquet`) interaction log with columns user_id, item_id, timestamp
    (integer epoch seconds or ISO-8601; ISO dates without an offset are UTC) and optional event
    (contract.EVENT_TYPES), rating, price, category, and the impression-log columns session_id,
    position (slot in the slate, an integer >= 0) and propensity (the logging policy's
    probability, in (0, 1]). A missing event is 'rating' when the file has a rating column, else
    'view'. An optional items CSV (item_id and optional category, price, title) supplies category,
    price and title wherever the interaction log has none (an interaction log may carry title
    itself). The simulator (components/simulation/generator.py) writes this format: one row per
    impression, with all three impression-log columns.
  * `movielens`: ml-latest-small's `ratings.csv` (userId,movieId,rating,timestamp) and optional
    `movies.csv` (movieId,title,genres), whose first genre becomes the category.
  * `movielens-100k`: ml-100k's tab-separated `u.data` (user, item, rating, timestamp; no header)
    and optional pipe-separated, Latin-1 `u.item`, whose first flagged genre becomes the category.
Every event of these gets event 'rating' and price 0.

The output is TFRecord rather than CSV because TFX's CsvExampleGen infers column types and would
turn numeric ids such as MovieLens' "1" into integers.

Each output record is one raw event; sessions and histories are built later, in Beam
(components/data/sessions.py). Optional columns a source lacks are omitted from its records.

Ingestion rejects what it cannot read, and ids, positions and propensities of the wrong form,
with an `InputDataError` naming the file, line (1-based, the header is line 1), field and value.
Readable values outside the domain (a negative price, an unknown event type, a timestamp in the
year 2300) pass through unchanged: the schema validation (TensorFlow Data Validation against
schemas/events/schema.pbtxt) reports those over the whole dataset. Exact duplicate rows, which
at-least-once logging produces, are reported here and dropped by the session builder.
"""
import csv
import dataclasses
import datetime
import gzip
import hashlib
import io
import itertools
import os
import pathlib
import re
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from absl import logging
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import tensorflow as tf

from components.data.config import DataMinimums
from schemas import contract

EXAMPLES_FILE = "events.tfrecord.gz"

# An id is one token: whitespace or control characters mean a shifted or corrupted field.
_BAD_ID = r"[\s\x00-\x1f\x7f]"

_TIMESTAMP_EXPECTED = "an integer epoch time or ISO-8601 date"
_INTEGER = r"[+-]?\d{1,18}"  # 18 digits always fit in int64
# Groups: year, month, day, hour, minute, second, offset sign, offset hours, offset minutes.
_ISO_8601 = re.compile(r"(\d{4})-(\d{2})-(\d{2})"
                       r"(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:[.,]\d+)?)?)?"
                       r"(?:Z|([+-])(\d{2})(?::?(\d{2}))?)?")
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
_SECOND = datetime.timedelta(seconds=1)

# ml-100k's u.item: five descriptive fields, then one 0/1 flag per genre in this order (u.genre).
_ML100K_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
                  "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
                  "Romance", "Sci-Fi", "Thriller", "War", "Western")
_ML_NO_GENRE = "(no genres listed)"


class InputDataError(ValueError):
  """An input file cannot be read as its format says; the message says where and why."""


@dataclasses.dataclass(frozen=True)
class _Layout:
  """How a delimited text file is laid out."""
  delimiter: str = ","
  names: Optional[Sequence[str]] = None  # None: the first line is a header
  encoding: str = "utf-8"
  quoting: int = csv.QUOTE_MINIMAL


_CSV = _Layout()
# MovieLens 100k's own field names (its README), used in error messages.
_U_DATA = _Layout(delimiter="\t", names=("user id", "item id", "rating", "timestamp"),
                  quoting=csv.QUOTE_NONE)
_U_ITEM = _Layout(delimiter="|", encoding="latin-1", quoting=csv.QUOTE_NONE, names=(
    "movie id", "movie title", "release date", "video release date", "IMDb URL") + _ML100K_GENRES)


@dataclasses.dataclass(frozen=True)
class _Table:
  """A file's rows as read, and where each row is in the file, for error messages."""
  name: str
  frame: pd.DataFrame
  lines: Optional[np.ndarray]  # file line of each row; None for Parquet, which has no lines

  def position(self, row: int) -> str:
    return f"row {row + 1}" if self.lines is None else f"line {self.lines[row]}"

  def where(self, row: int) -> str:
    return f"{self.name} {self.position(row)}"


def _read_table(path: pathlib.Path, layout: _Layout = _CSV) -> _Table:
  """Reads a delimited text file (or a `.parquet` file) whose rows all have the same fields."""
  if not path.is_file():
    raise InputDataError(f"{path}: file not found")
  if path.suffix == ".parquet":
    return _read_parquet(path)
  return _read_delimited(path, layout)


def _read_delimited(path: pathlib.Path, layout: _Layout) -> _Table:
  """Parses with the csv module, which, unlike pandas, tells short rows from empty fields."""
  records = _records(path.name, _decode(path, layout), layout)
  header_line, header = (0, layout.names) if layout.names else next(records, (0, []))
  names = [name.strip() for name in header]
  if not names:
    raise InputDataError(f"{path.name}: the file is empty")
  repeated = sorted({name for name in names if names.count(name) > 1})
  if repeated:  # which of the columns a field belongs to would be a guess
    raise InputDataError(f"{path.name} line {header_line}: column "
                         f"{', '.join(map(repr, repeated))} appears more than once in the header")
  lines, rows = [], []
  for line, fields in records:
    if len(fields) != len(names):
      # A short row names the fields it lacks, which is what a truncated line loses.
      lacking = (f", without field {', '.join(map(repr, names[len(fields):]))}"
                 if len(fields) < len(names) else "")
      raise InputDataError(
          f"{path.name} line {line}: expected {len(names)} fields "
          f"({layout.delimiter.join(names)}), found {len(fields)} in "
          f"'{layout.delimiter.join(fields)}'{lacking}; is the line truncated or a delimiter "
          f"unquoted?")
    lines.append(line)
    rows.append(fields)
  if not rows:
    raise InputDataError(f"{path.name}: the file has a header but no rows" if layout.names is None
                         else f"{path.name}: the file is empty")
  return _Table(path.name, pd.DataFrame(rows, columns=names, dtype=object), np.array(lines))


def _records(name: str, text: str, layout: _Layout) -> Iterator[Tuple[int, List[str]]]:
  """Each record's line and fields; the line is the one it ends on, blank lines carry none."""
  reader = csv.reader(io.StringIO(text, newline=""), delimiter=layout.delimiter,
                      quoting=layout.quoting)
  try:
    for fields in reader:
      if fields:
        yield reader.line_num, fields
  except csv.Error as error:
    raise InputDataError(f"{name} line {reader.line_num}: {error}") from None


def _decode(path: pathlib.Path, layout: _Layout) -> str:
  data = path.read_bytes()
  _refuse_binary(path.name, data)
  try:
    text = data.decode(layout.encoding)
  except UnicodeDecodeError as error:
    raise _undecodable(path.name, data, error, layout) from None
  return text.removeprefix("\ufeff")  # the byte-order mark some spreadsheet programs write


# Leading bytes of the archive formats a user may hand over instead of the file inside them.
_ARCHIVES = ((b"\x1f\x8b", "a gzip archive"), (b"PK\x03\x04", "a zip archive"),
             (b"PAR1", "a Parquet file without the .parquet suffix"))
# Text never holds NUL; the share of other control characters in the first block that makes a
# file binary (tabs, newlines, carriage returns and form feeds are text).
_BINARY_SNIFF_BYTES = 8192
_BINARY_CONTROL_SHARE = 0.1


def _refuse_binary(name: str, data: bytes) -> None:
  """Names a file that is not text at all, before any line of it is parsed as a row."""
  for magic, what in _ARCHIVES:
    if data.startswith(magic):
      raise InputDataError(f"{name}: not a text file but {what}; extract the CSV from it")
  head = data[:_BINARY_SNIFF_BYTES]
  control = sum(byte < 32 and byte not in b"\t\n\r\f" for byte in head)
  if b"\x00" in head or (head and control / len(head) > _BINARY_CONTROL_SHARE):
    where = f"a NUL byte at offset {head.index(0)}" if b"\x00" in head else (
        f"{control} control characters in its first {len(head)} bytes")
    raise InputDataError(f"{name}: not a text file (binary data: {where}); expected a "
                         "delimited text file such as CSV")


def _undecodable(name: str, data: bytes, error: UnicodeDecodeError,
                 layout: _Layout) -> InputDataError:
  """Names the line, byte offset and, below the header, the field and value of undecodable bytes.

  The bytes before the error decode; parsed with a stand-in for the bad bytes, their last record
  and field are the ones holding them, whatever the quoting.
  """
  encoding = layout.encoding.upper()
  where = f"byte offset {error.start}"
  before = [fields for _, fields in _records(
      name, data[:error.start].decode(layout.encoding).removeprefix("\ufeff") + "\ufffd", layout)]
  record, field = len(before) - 1, len(before[-1]) - 1
  names = layout.names or [column.strip() for column in before[0]]
  if record >= (layout.names is None) and field < len(names):
    # The whole record, with the bad bytes escaped, shows the value.
    records = _records(name, data.decode(layout.encoding, "backslashreplace"), layout)
    _, fields = next(itertools.islice(records, record, None))
    where += f", field '{names[field]}', value '{fields[field]}'"
  line = data.count(b"\n", 0, error.start) + 1
  return InputDataError(f"{name} line {line}: bytes {data[error.start:error.end]!r} are not valid "
                        f"{encoding} ({where}); save the file as {encoding}")


def _read_parquet(path: pathlib.Path) -> _Table:
  """Reads date-times as objects: pandas' own nanosecond ones cannot hold years after 2262."""
  try:
    frame = pq.read_table(path).to_pandas(timestamp_as_object=True)
  except pa.ArrowException as error:
    raise InputDataError(f"{path.name}: not a readable Parquet file ({error})") from None
  if frame.empty:
    raise InputDataError(f"{path.name}: the file has no rows")
  return _Table(path.name, frame, None)


def _require(table: _Table, columns: Sequence[str]) -> None:
  missing = [column for column in columns if column not in table.frame.columns]
  if missing:
    raise InputDataError(
        f"{table.name}: missing required column {', '.join(map(repr, missing))}; "
        f"columns found: {', '.join(map(str, table.frame.columns))}")


def _reject(table: _Table, bad: np.ndarray, column: str, expected: str) -> None:
  """Raises for the first row flagged bad, naming its line, field and value."""
  rows = np.flatnonzero(bad)
  if len(rows):
    others = f" ({len(rows) - 1} more rows like this)" if len(rows) > 1 else ""
    raise InputDataError(f"{table.where(rows[0])}: field '{column}' has value "
                         f"'{table.frame[column].iloc[rows[0]]}', expected {expected}{others}")


def _absent(values: pd.Series) -> np.ndarray:
  """Cells without a value: empty CSV fields and Parquet nulls.

  Parquet's nullable columns (Int64, string) compare to a nullable boolean; NA there is absent.
  """
  return (values.isna() | values.eq("")).to_numpy(dtype=bool, na_value=True)


def _ids(table: _Table, column: str) -> pd.Series:
  values = table.frame[column]
  _reject(table, _absent(values), column, "a non-empty id")
  ids = values.astype(str)
  _reject(table, ids.str.contains(_BAD_ID).to_numpy(), column,
          "an id without whitespace or control characters")
  return ids


def _positions(table: _Table, column: str) -> pd.Series:
  """Slate slots: integers >= 0, as nullable Int64 so a row without one stays distinct from 0.

  Whole floats such as 2.0 are accepted: pandas writes an integer column with gaps that way.
  """
  numbers = _numbers(table, column, expected="an integer >= 0")
  present = numbers.notna().to_numpy()
  integers = (numbers >= 0) & (numbers % 1 == 0) & (numbers < 2.0**63)  # fits in int64
  _reject(table, present & ~integers.to_numpy(), column, "an integer >= 0")
  return numbers.astype("Int64")


def _propensities(table: _Table, column: str) -> pd.Series:
  """Logging probabilities: in (0, 1], NaN where absent."""
  numbers = _numbers(table, column, expected="a probability in (0, 1]")
  present = numbers.notna().to_numpy()
  _reject(table, present & ~((numbers > 0) & (numbers <= 1)).to_numpy(), column,
          "a probability in (0, 1]")
  return numbers


def _warn_duplicates(table: _Table) -> None:
  """Reports exact duplicate rows; they are kept here and dropped when sessions are built."""
  duplicated = table.frame.duplicated().to_numpy()
  if duplicated.any():
    first = np.flatnonzero(duplicated)[0]
    # Rows before the first duplicate are distinct, so exactly one of them is its original.
    original = np.flatnonzero(table.frame.iloc[:first + 1].duplicated(keep="last").to_numpy())[0]
    logging.warning("%s: %d rows repeat an earlier row exactly, the first at %s, a copy of %s; "
                    "duplicates are dropped when sessions are built", table.name,
                    duplicated.sum(), table.position(first), table.position(original))


def _unique_ids(table: _Table, column: str) -> pd.Series:
  """Ids of an items file, where a repeated id would make its attributes ambiguous."""
  ids = _ids(table, column)
  _reject(table, ids.duplicated().to_numpy(), column, "an id not listed on an earlier line")
  return ids


def _strings(table: _Table, column: str) -> pd.Series:
  """The column as strings, NaN where a cell (or the whole optional column) is absent."""
  if column not in table.frame:
    return pd.Series(np.nan, index=table.frame.index, dtype=object)
  values = table.frame[column]
  return values.astype(str).where(~_absent(values))


def _numbers(table: _Table, column: str, *, required: bool = False,
             expected: str = "a number") -> pd.Series:
  """The column as float64, NaN where an optional cell (or the whole optional column) is absent."""
  if column not in table.frame:
    return pd.Series(np.nan, index=table.frame.index, dtype=np.float64)
  values = table.frame[column]
  absent = _absent(values)
  if required:
    _reject(table, absent, column, expected)
  numbers = pd.to_numeric(values.where(~absent), errors="coerce")
  _reject(table, numbers.isna().to_numpy() & ~absent, column, expected)
  return numbers.astype(np.float64)


def _timestamps(table: _Table, column: str) -> pd.Series:
  """Seconds since the epoch from integers, ISO-8601 strings or (Parquet) date-times."""
  values = table.frame[column]
  _reject(table, _absent(values), column, _TIMESTAMP_EXPECTED)
  if pd.api.types.is_integer_dtype(values):
    return values.astype(np.int64)
  # Parquet date-times arrive as objects (see _read_parquet) whose text is ISO-8601.
  text = values.astype(str).str.strip()
  integer = text.str.fullmatch(_INTEGER).to_numpy()
  dates = text[~integer].map(_iso_seconds)
  unreadable = np.zeros(len(text), dtype=bool)
  unreadable[~integer] = dates.isna().to_numpy()
  _reject(table, unreadable, column, _TIMESTAMP_EXPECTED)
  seconds = np.empty(len(text), dtype=np.int64)
  seconds[integer] = text[integer].astype(np.int64)
  seconds[~integer] = dates.astype(np.int64)
  return pd.Series(seconds, index=values.index)


def _iso_seconds(text: str) -> Optional[int]:
  """Whole seconds since the epoch of an ISO-8601 date (UTC without an offset); None if not one.

  Parsed here rather than by pandas, whose nanosecond date-times end in 2262: a date in 2300 is
  readable, and whether it is plausible is the schema's call. Only this one form is accepted, so
  nothing guesses at forms like 1/2/2024.
  """
  match = _ISO_8601.fullmatch(text)
  if match is None:
    return None
  *date_time, sign, offset_hours, offset_minutes = match.groups()
  offset = datetime.timedelta(hours=int(offset_hours or 0), minutes=int(offset_minutes or 0))
  try:
    date = datetime.datetime(*(int(part or 0) for part in date_time),
                             tzinfo=datetime.timezone(-offset if sign == "-" else offset))
  except ValueError:  # a day, time or offset out of range, such as 2023-02-30
    return None
  return (date - _EPOCH) // _SECOND  # the fraction of a second is not parsed: this is the floor


def _join_items(events: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
  """Fills each event's absent category, price and title from its item's (the interaction wins)."""
  items = items.set_index(contract.ITEM_ID)
  for column in (contract.CATEGORY, contract.PRICE, contract.TITLE):
    own = events[column] if column in events else pd.Series(np.nan, index=events.index)
    events[column] = own.fillna(events[contract.ITEM_ID].map(items[column]))
  return events


def _read_generic(interactions_path: pathlib.Path,
                  items_path: Optional[pathlib.Path]) -> pd.DataFrame:
  table = _read_table(interactions_path)
  _require(table, (contract.USER_ID, contract.ITEM_ID, contract.TIMESTAMP))
  _warn_duplicates(table)
  default_event = contract.RATING_EVENT if contract.RATING in table.frame else "view"
  events = pd.DataFrame({
      contract.USER_ID: _ids(table, contract.USER_ID),
      contract.ITEM_ID: _ids(table, contract.ITEM_ID),
      contract.TIMESTAMP: _timestamps(table, contract.TIMESTAMP),
      contract.EVENT: _strings(table, contract.EVENT).fillna(default_event),
      contract.RATING: _numbers(table, contract.RATING),
      contract.PRICE: _numbers(table, contract.PRICE),
      contract.CATEGORY: _strings(table, contract.CATEGORY),
  })
  optional_readers = {contract.SESSION_ID: _strings, contract.POSITION: _positions,
                      contract.PROPENSITY: _propensities, contract.TITLE: _strings}
  for column, read in optional_readers.items():
    if column in table.frame:
      events[column] = read(table, column)
  if items_path is None:
    return events
  items = _read_table(items_path)
  _require(items, (contract.ITEM_ID,))
  return _join_items(events, pd.DataFrame({
      contract.ITEM_ID: _unique_ids(items, contract.ITEM_ID),
      contract.CATEGORY: _strings(items, contract.CATEGORY),
      contract.PRICE: _numbers(items, contract.PRICE),
      contract.TITLE: _strings(items, contract.TITLE),
  }))


def _ratings(table: _Table, user: str, item: str, rating: str, timestamp: str) -> pd.DataFrame:
  """Events of a MovieLens ratings file, given its names for the four fields."""
  _require(table, (user, item, rating, timestamp))
  _warn_duplicates(table)
  return pd.DataFrame({
      contract.USER_ID: _ids(table, user),
      contract.ITEM_ID: _ids(table, item),
      contract.TIMESTAMP: _timestamps(table, timestamp),
      contract.EVENT: contract.RATING_EVENT,
      contract.RATING: _numbers(table, rating, required=True),
      contract.PRICE: np.nan,
      contract.CATEGORY: np.nan,
  })


def _movies(ids: pd.Series, first_genre: pd.Series, titles: pd.Series) -> pd.DataFrame:
  return pd.DataFrame({contract.ITEM_ID: ids, contract.CATEGORY: first_genre,
                       contract.PRICE: np.nan, contract.TITLE: titles})


def _read_movielens(interactions_path: pathlib.Path,
                    items_path: Optional[pathlib.Path]) -> pd.DataFrame:
  events = _ratings(_read_table(interactions_path), "userId", "movieId", "rating", "timestamp")
  if items_path is None:
    return events
  movies = _read_table(items_path)
  _require(movies, ("movieId", "genres"))
  first_genre = _strings(movies, "genres").str.split("|").str[0]
  return _join_items(events, _movies(
      _unique_ids(movies, "movieId"), first_genre.mask(first_genre == _ML_NO_GENRE),
      _strings(movies, "title")))


def _read_movielens_100k(interactions_path: pathlib.Path,
                         items_path: Optional[pathlib.Path]) -> pd.DataFrame:
  events = _ratings(_read_table(interactions_path, _U_DATA), *_U_DATA.names)
  if items_path is None:
    return events
  movies = _read_table(items_path, _U_ITEM)
  flags = np.column_stack([_numbers(movies, genre, required=True) for genre in _ML100K_GENRES])
  genre = pd.Series(np.array(_ML100K_GENRES)[np.argmax(flags == 1, axis=1)], dtype=object)
  # Movies flagged with no genre or only with 'unknown' have no category.
  first_genre = genre.where((flags == 1).any(axis=1) & (genre != "unknown"))
  return _join_items(events, _movies(_unique_ids(movies, "movie id"), first_genre,
                                     _strings(movies, "movie title")))


_READERS: Dict[str, Callable[[pathlib.Path, Optional[pathlib.Path]], pd.DataFrame]] = {
    "generic": _read_generic,
    "movielens": _read_movielens,
    "movielens-100k": _read_movielens_100k,
}
FORMATS = tuple(_READERS)


def load_interactions(interactions_path: os.PathLike, items_path: Optional[os.PathLike] = None,
                      fmt: str = "generic") -> pd.DataFrame:
  """Reads interactions (and item attributes) into the event columns, absent values defaulted.

  Returns contract.REQUIRED_EVENT_COLUMNS, then whichever OPTIONAL_EVENT_COLUMNS the source has.
  Ids, event, category, session_id and title are str, timestamp int64, rating, price and propensity
  float64, position nullable Int64; an optional field a row leaves empty is NaN (NA for
  position). Rows keep file order. Raises InputDataError for anything unreadable; domain checks
  are left to the schema.
  """
  if fmt not in _READERS:
    raise InputDataError(f"unknown format '{fmt}'; expected one of {', '.join(FORMATS)}")
  events = _READERS[fmt](pathlib.Path(interactions_path),
                         None if items_path is None else pathlib.Path(items_path))
  events = events.fillna({contract.RATING: 0.0, contract.PRICE: 0.0,
                          contract.CATEGORY: contract.UNKNOWN_CATEGORY})
  events = events.astype({
      contract.USER_ID: str, contract.ITEM_ID: str, contract.TIMESTAMP: np.int64,
      contract.EVENT: str, contract.RATING: np.float64, contract.PRICE: np.float64,
      contract.CATEGORY: str,
  })
  # An optional column without a single value is dropped: the source does not have that field.
  columns = [column for column in contract.EVENT_COLUMNS if column in events and (
      column in contract.REQUIRED_EVENT_COLUMNS or events[column].notna().any())]
  return events[columns].reset_index(drop=True)


def _bytes_feature(values: Sequence[str]) -> tf.train.Feature:
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v.encode() for v in values]))


def _feature(value) -> tf.train.Feature:
  if isinstance(value, str):
    return _bytes_feature([value])
  if isinstance(value, (int, np.integer)):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
  return tf.train.Feature(float_list=tf.train.FloatList(value=[value]))


def _serialized_examples(events: pd.DataFrame) -> Iterator[bytes]:
  """One tf.train.Example per row; an optional field the row lacks is left out."""
  # Absent cells (NaN, NA) become None, so one test covers every column's dtype.
  columns = {column: events[column].astype(object).where(events[column].notna(), None).tolist()
             for column in events.columns}
  names = list(columns)
  for values in zip(*columns.values()):
    yield tf.train.Example(features=tf.train.Features(feature={
        name: _feature(value) for name, value in zip(names, values) if value is not None
    })).SerializeToString(deterministic=True)  # map order would otherwise vary between runs


def records_digest(path: pathlib.Path) -> Optional[str]:
  """SHA-256 of the uncompressed records, or None for a missing or damaged file.

  The uncompressed stream is compared because compression settings may differ between versions.
  """
  digest = hashlib.sha256()
  try:
    with gzip.open(path, "rb") as stream:
      for chunk in iter(lambda: stream.read(1 << 20), b""):
        digest.update(chunk)
  except (OSError, EOFError):
    return None
  return digest.hexdigest()


def write_examples(events: pd.DataFrame, out_path: os.PathLike) -> bool:
  """Writes `events` (load_interactions' columns) as GZIP TFRecord; returns whether it wrote.

  An existing file with the same records is left untouched: ExampleGen's input fingerprint includes
  the file's mtime, so rewriting unchanged data would defeat the pipeline cache. The file is
  replaced atomically, so a reader sees the old or the new dataset, never a partial one.
  """
  out_path = pathlib.Path(out_path)
  out_path.parent.mkdir(parents=True, exist_ok=True)
  # A dot-file next to the target: os.replace is atomic only within one file system.
  temp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
  try:
    with tf.io.TFRecordWriter(str(temp), options="GZIP") as writer:
      for record in _serialized_examples(events):
        writer.write(record)
    if out_path.exists() and records_digest(temp) == records_digest(out_path):
      return False
    os.replace(temp, out_path)
    return True
  finally:
    temp.unlink(missing_ok=True)


# The tf.train.Example feature type of every event column, as write_examples writes it.
_EVENT_DTYPES = {
    contract.USER_ID: tf.string, contract.ITEM_ID: tf.string, contract.TIMESTAMP: tf.int64,
    contract.EVENT: tf.string, contract.RATING: tf.float32, contract.PRICE: tf.float32,
    contract.CATEGORY: tf.string, contract.SESSION_ID: tf.string, contract.POSITION: tf.int64,
    contract.PROPENSITY: tf.float32, contract.TITLE: tf.string, contract.REQUEST_ID: tf.string,
    contract.MODEL_VERSION: tf.int64,
}
_RECORDS_PER_BATCH = 8192


def read_examples(path: os.PathLike) -> pd.DataFrame:
  """The events of a file write_examples wrote, in its columns and types, rows in file order.

  Written again by write_examples, they give the same records: floats went through float32 once.
  """
  spec = {column: tf.io.RaggedFeature(dtype) for column, dtype in _EVENT_DTYPES.items()}
  parts = {column: [] for column in spec}
  dataset = tf.data.TFRecordDataset(str(path), compression_type="GZIP")
  for batch in dataset.batch(_RECORDS_PER_BATCH).map(lambda records: tf.io.parse_example(
      records, spec)):
    for column, values in batch.items():
      parts[column].append(values)
  events = {}
  for column, batches in parts.items():
    if not batches:
      continue
    ragged = tf.concat(batches, axis=0)
    lengths = ragged.row_lengths().numpy()
    if not lengths.any():  # a column no record has
      continue
    values = pd.Series(ragged.flat_values.numpy())
    if _EVENT_DTYPES[column] == tf.string:
      values = values.str.decode("utf-8")
    present = np.flatnonzero(lengths)
    column_values = pd.Series(np.nan, index=np.arange(len(lengths)), dtype=object)
    column_values.iloc[present] = values.to_numpy()
    events[column] = column_values
  frame = pd.DataFrame(events)
  if frame.empty:
    return frame
  frame = frame.astype({column: str for column in (
      contract.USER_ID, contract.ITEM_ID, contract.EVENT, contract.CATEGORY)})
  frame = frame.astype({contract.TIMESTAMP: np.int64, contract.RATING: np.float64,
                        contract.PRICE: np.float64})
  for column, dtype in ((contract.POSITION, "Int64"), (contract.MODEL_VERSION, "Int64"),
                        (contract.PROPENSITY, np.float64)):
    if column in frame:
      frame[column] = pd.to_numeric(frame[column]).astype(dtype)
  return frame[[column for column in contract.EVENT_COLUMNS if column in frame]]


def require_trainable(events: pd.DataFrame, minimums: DataMinimums, source: str) -> None:
  """Refuses events too few or too uniform to train and evaluate a recommender on, saying why.

  What is counted is engagements (contract.ENGAGEMENT_EVENTS): the users who engaged, the items
  engaged with, and the engagements themselves; DataMinimums says why each minimum.
  """
  engaged = events[events[contract.EVENT].isin(contract.ENGAGEMENT_EVENTS)]
  if engaged.empty:
    kinds = ", ".join(sorted(events[contract.EVENT].unique()))
    raise InputDataError(
        f"{source}: none of its {len(events)} events is an engagement (event types: {kinds}); "
        "the recommender learns from what users chose, so give views, clicks, purchases or "
        "ratings too")
  for name, field in (("users", contract.USER_ID), ("items", contract.ITEM_ID)):
    distinct = engaged[field].unique()
    needed = getattr(minimums, name)
    if len(distinct) < needed:
      shown = ", ".join(repr(value) for value in sorted(distinct)[:3])
      raise InputDataError(
          f"{source}: the engagements have {len(distinct)} distinct {field} value"
          f"{'s' if len(distinct) != 1 else ''} ({shown}{', ...' if len(distinct) > 3 else ''}); "
          f"training and evaluating a recommender needs at least {needed} {name} "
          f"(--min-{name} lowers the minimum)")
  if len(engaged) < minimums.engagements:
    raise InputDataError(
        f"{source}: {len(engaged)} engagements, fewer than the {minimums.engagements} needed to "
        "train a model and hold some back to evaluate it (--min-engagements lowers the minimum)")


def prepare_dataset(interactions_path: os.PathLike, items_path: Optional[os.PathLike] = None,
                    fmt: str = "generic", *, out_dir: os.PathLike,
                    minimums: Optional[DataMinimums] = None) -> pathlib.Path:
  """Ingests the files into out_dir/EXAMPLES_FILE; returns out_dir, for ImportExampleGen.

  out_dir becomes the ExampleGen's input_base, so it should hold nothing but the examples file.
  With `minimums`, data too small to train and evaluate on is refused (`require_trainable`).
  """
  events = load_interactions(interactions_path, items_path, fmt)
  if minimums is not None:
    require_trainable(events, minimums, pathlib.Path(interactions_path).name)
  out_dir = pathlib.Path(out_dir)
  wrote = write_examples(events, out_dir / EXAMPLES_FILE)
  logging.info("Ingested %d events of %d users on %d items from %s: %s %s", len(events),
               events[contract.USER_ID].nunique(), events[contract.ITEM_ID].nunique(),
               interactions_path, "wrote" if wrote else "unchanged", out_dir / EXAMPLES_FILE)
  return out_dir
