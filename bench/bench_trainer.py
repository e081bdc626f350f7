"""The Trainer's wall time and peak memory at the built-in dataset's size and at 1M events.

Run: .venv/bin/python bench/bench_trainer.py [--sizes 100000 1000000]
         [--out bench/results/trainer.json]

For each size the simulator writes a dataset of that many events (the default world otherwise),
and `recsys run` runs the whole pipeline on it, in a fresh home, as a subprocess under the
report-only gate. The Trainer's seconds are the run's own component table; its peak memory is
the largest resident set of the run's process (LocalDagRunner runs every component in it) sampled
every 0.2 s while the run's log says the Trainer is running. Sizes run one after the other on an
otherwise idle machine, so their ratio is measured under the same conditions.
"""
import argparse
import datetime
import json
import pathlib
import platform
import re
import subprocess
import sys
import tempfile
import time

import psutil

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from components.simulation import generator  # pylint: disable=g-import-not-at-top
import schemas  # pylint: disable=g-import-not-at-top

_SAMPLE_SECONDS = 0.2
_LOG_TIME = "%Y-%m-%d %H:%M:%S,%f"


def _trainer_window(log_path: pathlib.Path):
  """(start, end) of the Trainer in the run's log, as datetimes."""
  text = log_path.read_text(errors="replace")
  times = {}
  for state in ("running", "finished"):
    match = re.search(rf"^(\S+ \S+) INFO absl: Component Trainer is {state}\.", text, re.M)
    times[state] = datetime.datetime.strptime(match.group(1), _LOG_TIME)
  return times["running"], times["finished"]


def _run(events: int, work: pathlib.Path) -> dict:
  dataset = generator.generate_dataset(work / "raw", n_users=generator.users_for(events),
                                       n_events=events)
  command = [sys.executable, "-m", "pipeline.cli", "run", "--interactions",
             str(dataset.interactions), "--items", str(dataset.items), "--home",
             str(work / "home"), "--gate-config", str(schemas.REPORT_ONLY_GATE_CONFIG)]
  process = psutil.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
  samples = []  # (wall-clock time, resident bytes)
  while process.poll() is None:
    try:
      samples.append((datetime.datetime.now(), process.memory_info().rss))
    except psutil.NoSuchProcess:
      break
    time.sleep(_SAMPLE_SECONDS)
  output = process.stdout.read()
  if process.returncode:
    raise SystemExit(output)
  start, end = _trainer_window(pathlib.Path(re.search(r"Logs: (\S+)", output).group(1)))
  trainer_rss = [rss for when, rss in samples if start <= when <= end]
  return {"events": events,
          "trainer_seconds": float(re.search(r"Trainer +COMPLETE +([\d.]+) s", output).group(1)),
          "trainer_peak_rss_mib": round(max(trainer_rss) / 2**20),
          "run_peak_rss_mib": round(max(rss for _, rss in samples) / 2**20)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
  parser.add_argument("--sizes", type=int, nargs="+",
                      default=[generator.DEFAULT_EVENTS, 1_000_000])
  parser.add_argument("--out", type=pathlib.Path,
                      default=REPO_ROOT / "bench" / "results" / "trainer.json")
  args = parser.parse_args()
  results = []
  for events in args.sizes:
    with tempfile.TemporaryDirectory() as work:
      results.append(_run(events, pathlib.Path(work)))
    print(json.dumps(results[-1]), flush=True)
  report = {"machine": {"cpus": psutil.cpu_count(), "platform": platform.platform(),
                        "memory_gib": round(psutil.virtual_memory().total / 2**30)},
            "runs": results}
  if len(results) > 1:
    first, last = results[0], results[-1]
    report["per_event_seconds_ratio"] = round(
        (last["trainer_seconds"] / last["events"]) / (first["trainer_seconds"] / first["events"]),
        2)
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(json.dumps(report, indent=2) + "\n")
  print(json.dumps(report, indent=2))


if __name__ == "__main__":
  main()
