"""Wall time of a first run and of a second run with unchanged inputs (TFX's cache).

Run: .venv/bin/python bench/bench_pipeline.py [--out bench/results/pipeline.json]

Both runs are `recsys run` on the built-in dataset, in one fresh temporary home, one after the
other in this process's machine; the second finds the same data (the same span) and the same
code, so every component's execution should come from the cache. Reported: the two wall times,
their ratio, and each component's execution states from ML Metadata.
"""
import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from ml_metadata import metadata_store  # pylint: disable=g-import-not-at-top
from ml_metadata.proto import metadata_store_pb2
from tfx.orchestration import metadata


def timed_run(home: pathlib.Path) -> float:
  start = time.perf_counter()
  subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "--home", str(home)], check=True,
                 cwd=pathlib.Path(__file__).resolve().parents[1], stdout=subprocess.DEVNULL,
                 stderr=subprocess.DEVNULL)
  return time.perf_counter() - start


def execution_states(home: pathlib.Path) -> dict:
  store = metadata_store.MetadataStore(metadata.sqlite_metadata_connection_config(
      str(home / "metadata" / "recsys.sqlite")))
  states = {}
  for context in store.get_contexts_by_type("node"):
    executions = sorted(store.get_executions_by_context(context.id), key=lambda e: e.id)
    states[context.name.split(".", 1)[-1]] = [
        metadata_store_pb2.Execution.State.Name(execution.last_known_state)
        for execution in executions]
  return states


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", type=pathlib.Path,
                      default=pathlib.Path(__file__).parent / "results" / "pipeline.json")
  args = parser.parse_args()
  with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as home:
    first = timed_run(pathlib.Path(home))
    second = timed_run(pathlib.Path(home))
    states = execution_states(pathlib.Path(home))
  report = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
            "first_run_seconds": round(first, 1), "second_run_seconds": round(second, 1),
            "second_over_first": round(second / first, 3), "execution_states": states}
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(json.dumps(report, indent=2) + "\n")
  print(json.dumps(report, indent=2))


if __name__ == "__main__":
  main()
