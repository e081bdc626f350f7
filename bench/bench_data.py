"""Throughput of the data layer at 100k and 1M events: generation, ingestion + statistics +
validation, and session building, each in events per second, and how the cost grows with size.

Run: .venv/bin/python bench/bench_data.py [--sizes 100000 1000000] [--out bench/results/data.json]

Each stage runs as the pipeline runs it, on this machine's defaults: the simulator; ingestion
(components/data/ingest.py) then TFDV statistics on Beam and validation against the curated
schema, as StatisticsGen and ExampleValidator do; SessionBuilder's Beam transforms on the
DirectRunner. Stages of one size run back to back in one process, so the ratio between sizes is
measured under the same conditions. A per-event cost ratio (1M vs 100k) near 1 means linear cost.
"""
import argparse
import json
import os
import pathlib
import platform
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# Before TensorFlow loads: Keras 2 and TensorFlow's log level (components/__init__.py).
import components  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import

import apache_beam as beam  # pylint: disable=g-import-not-at-top
from apache_beam.options.pipeline_options import PipelineOptions
import tensorflow_data_validation as tfdv

from components.data import ingest
from components.data import sessions
from components.data import validation as data_validation
from components.data.config import SessionConfig
from components.simulation import generator
import schemas

_BEAM_ARGS = ["--runner=DirectRunner", "--direct_running_mode=in_memory",
              "--direct_num_workers=1"]


def _timed(function, *args, **kwargs):
  start = time.perf_counter()
  result = function(*args, **kwargs)
  return result, time.perf_counter() - start


def _validate(examples_file: pathlib.Path) -> int:
  statistics = tfdv.generate_statistics_from_tfrecord(
      str(examples_file), pipeline_options=PipelineOptions(_BEAM_ARGS))
  anomalies = tfdv.validate_statistics(
      statistics, data_validation.load_schema(schemas.EVENTS_SCHEMA_PATH))
  return len(anomalies.anomaly_info)


def _build_sessions(examples_file: pathlib.Path, out_dir: pathlib.Path) -> None:
  with beam.Pipeline(options=PipelineOptions(_BEAM_ARGS)) as pipeline:
    sessions.build_sessions(pipeline, str(examples_file), str(out_dir / "examples"),
                            str(out_dir / "transitions"), SessionConfig())


def measure(n_events: int, work_dir: pathlib.Path) -> dict:
  raw_dir, staged_dir = work_dir / "raw", work_dir / "staged"
  dataset, generate_seconds = _timed(generator.generate_dataset, raw_dir, n_events=n_events)
  _, ingest_seconds = _timed(ingest.prepare_dataset, dataset.interactions, dataset.items,
                             out_dir=staged_dir)
  examples_file = staged_dir / ingest.EXAMPLES_FILE
  anomalies, validate_seconds = _timed(_validate, examples_file)
  if anomalies:
    raise RuntimeError(f"the generated data broke the schema: {anomalies} anomalies")
  _, session_seconds = _timed(_build_sessions, examples_file, work_dir / "sessions")
  stages = {"generation": generate_seconds,
            "ingestion+statistics+validation": ingest_seconds + validate_seconds,
            "session building": session_seconds}
  return {stage: {"seconds": round(seconds, 2), "events_per_second": round(n_events / seconds)}
          for stage, seconds in stages.items()}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
  parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
  parser.add_argument("--out", type=pathlib.Path,
                      default=pathlib.Path(__file__).parent / "results" / "data.json")
  args = parser.parse_args()
  results = {}
  for size in args.sizes:
    with tempfile.TemporaryDirectory() as work_dir:
      results[size] = measure(size, pathlib.Path(work_dir))
    print(f"{size:>9} events: {json.dumps(results[size])}", flush=True)
  smallest, largest = min(args.sizes), max(args.sizes)
  cost_ratio = {
      stage: round((results[largest][stage]["seconds"] / largest)
                   / (results[smallest][stage]["seconds"] / smallest), 2)
      for stage in results[smallest]}
  report = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
                       f"{platform.python_version()}",
            "by_size": {str(size): stages for size, stages in results.items()},
            f"per_event_cost_ratio_{largest}_vs_{smallest}": cost_ratio}
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(json.dumps(report, indent=2) + "\n")
  print(json.dumps(report, indent=2))


if __name__ == "__main__":
  main()
