"""Start-up time of the `recsys` command line: `--help` of the group and of every command.

Run: .venv/bin/python bench/bench_cli.py [--repeats 5] [--out bench/results/cli.json]

Each `recsys ... --help` runs as a user runs it, a fresh process of the installed entry point,
`--repeats` times; the median and the slowest wall time are reported, with the goal (2 s) and,
for scale in the same run, the time of a bare `python -c "import tensorflow"`, which is what
every command paid at start-up before the command line imported its stages lazily.
"""
import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
RECSYS = pathlib.Path(sys.executable).parent / "recsys"
COMMANDS = ("", "run", "report", "lineage", "compile", "schedule", "serve", "rollback",
            "recommend", "demo")
GOAL_SECONDS = 2.0


def wall_times(args, repeats: int) -> list:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    subprocess.run(args, cwd=REPO_ROOT, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    times.append(time.perf_counter() - start)
  return times


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--out", type=pathlib.Path,
                      default=pathlib.Path(__file__).parent / "results" / "cli.json")
  args = parser.parse_args()
  by_command = {}
  for command in COMMANDS:
    times = wall_times([str(RECSYS), *([command] if command else []), "--help"], args.repeats)
    by_command[f"recsys {command} --help".replace("  ", " ")] = {
        "median_seconds": round(statistics.median(times), 3),
        "max_seconds": round(max(times), 3)}
  tensorflow = wall_times([sys.executable, "-c", "import tensorflow"], args.repeats)
  slowest = max(result["max_seconds"] for result in by_command.values())
  results = {
      "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores, "
                 f"Python {platform.python_version()}",
      "repeats": args.repeats,
      "goal_seconds": GOAL_SECONDS,
      "slowest_help_seconds": slowest,
      "goal_met": slowest < GOAL_SECONDS,
      "import_tensorflow_median_seconds": round(statistics.median(tensorflow), 3),
      "by_command": by_command,
  }
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(json.dumps(results, indent=2) + "\n")
  print(json.dumps(results, indent=2))


if __name__ == "__main__":
  main()
