"""Spans: every run's ingested events become the input's latest span, as TFX's ExampleGen reads it.

The input base holds `span-1/`, `span-2/`, ...; ExampleGen (pattern `span-{SPAN}/*`) processes the
latest, tags its Examples and statistics with the span number, and DriftGate compares a span with
the one before. Identical data does not make a new span: an unchanged re-run then hits the
pipeline cache instead of training again on the same events.
"""
import os
import pathlib
import re
from typing import Dict

from components.data import ingest

INPUT_PATTERN = "span-{SPAN}/*"
# Where a span is staged under the input base before `publish` moves it in; not a span directory.
STAGING_DIR = ".staging"
_SPAN_DIR = re.compile(r"span-(\d+)")


def spans(input_base: os.PathLike) -> Dict[int, pathlib.Path]:
  """Span number → directory, for every span under input_base."""
  base = pathlib.Path(input_base)
  if not base.is_dir():
    return {}
  found = {}
  for path in base.iterdir():
    match = _SPAN_DIR.fullmatch(path.name)
    if match and path.is_dir():
      found[int(match.group(1))] = path
  return found


def publish(staged_file: os.PathLike, input_base: os.PathLike) -> int:
  """Moves a staged events file in as a new span, unless it holds the latest span's records.

  Returns the span ExampleGen will read. The file is moved (renamed) into place after its
  directory is complete under a temporary name, so ExampleGen never sees a partial span.
  """
  staged_file = pathlib.Path(staged_file)
  existing = spans(input_base)
  if existing:
    latest = max(existing)
    latest_file = existing[latest] / staged_file.name
    if ingest.records_digest(latest_file) == ingest.records_digest(staged_file):
      staged_file.unlink()
      return latest
  span = max(existing, default=0) + 1
  temp_dir = pathlib.Path(input_base) / f".span-{span}.{os.getpid()}.tmp"
  temp_dir.mkdir(parents=True)
  os.replace(staged_file, temp_dir / staged_file.name)
  os.replace(temp_dir, pathlib.Path(input_base) / f"span-{span}")
  return span
