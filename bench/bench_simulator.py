"""Throughput of the seeded simulator writing the default dataset, at 100k and 1M impressions.

Run: .venv/bin/python bench/bench_simulator.py [--sizes 100000 1000000]
                                               [--out bench/results/simulator.json]

Each size runs `generator.generate_dataset` (world, logging-policy sessions, timestamps and both
CSV files) with the default seed, users and items, one after the other in one process, after a
small warm-up so that first-call costs are not charged to the smallest size. It reports events
(impression rows) per second and the per-event cost ratio of the largest size against the
smallest: near 1 means the cost grows linearly with the number of events.
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

import pandas as pd  # pylint: disable=g-import-not-at-top

from components.simulation import generator

WARM_UP_EVENTS = 1_000


def measure(n_events: int, out_dir: pathlib.Path) -> dict:
  """Seconds, events per second and the outcome counts of one generated dataset."""
  start = time.perf_counter()
  dataset = generator.generate_dataset(out_dir, n_users=generator.users_for(n_events),
                                       n_events=n_events)
  seconds = time.perf_counter() - start
  events = pd.read_csv(dataset.interactions, usecols=["event"])["event"].value_counts()
  return {"seconds": round(seconds, 2), "events_per_second": round(n_events / seconds),
          "clicks": int(events.get("click", 0) + events.get("purchase", 0)),
          "purchases": int(events.get("purchase", 0))}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
  parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
  parser.add_argument("--out", type=pathlib.Path,
                      default=pathlib.Path(__file__).parent / "results" / "simulator.json")
  args = parser.parse_args()
  sizes = sorted(args.sizes)
  with tempfile.TemporaryDirectory() as work_dir:
    measure(WARM_UP_EVENTS, pathlib.Path(work_dir) / "warm_up")
    by_size = {n: measure(n, pathlib.Path(work_dir) / str(n)) for n in sizes}
  smallest, largest = sizes[0], sizes[-1]
  cost = lambda n: by_size[n]["seconds"] / n
  results = {
      "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores, "
                 f"Python {platform.python_version()}",
      "defaults": {"seed": generator.DEFAULT_SEED, "users": generator.DEFAULT_USERS,
                   "items": generator.DEFAULT_ITEMS},
      "by_size": {str(n): result for n, result in by_size.items()},
      f"per_event_cost_ratio_{largest}_vs_{smallest}": round(cost(largest) / cost(smallest), 2),
  }
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(json.dumps(results, indent=2) + "\n")
  print(json.dumps(results, indent=2))


if __name__ == "__main__":
  main()
