"""Scheduled runs on one machine: a cron expression, one run at a time, each outcome logged.

`recsys schedule --cron "0 3 * * *"` waits for each time the expression names (croniter parses
it) and starts `recsys run` as a child process with the same options, so every run gets a fresh
process (TensorFlow and Beam state do not accumulate). `recsys run` itself holds `run_lock`
for its whole run: a scheduled run that comes while another run (scheduled or by hand) is still
going is skipped, never started beside it, and the skip is logged. Each run appends one JSON
line to `<home>/schedule.log`: when it was due, started and finished, its exit code and the
run's own one-line outcome.

On Kubeflow Pipelines the cluster schedules instead (pipeline/kubeflow_runner.py).
"""
import contextlib
import dataclasses
import datetime
import json
import logging
import pathlib
import subprocess
import time
from typing import Callable, Iterator, List, Optional, Sequence

import croniter
import filelock

LOCK_FILE = "run.lock"
LOG_FILE = "schedule.log"
# The exit code of a run that found another one holding the lock.
RUN_IN_PROGRESS_EXIT_CODE = 75  # EX_TEMPFAIL: try again later

_LOGGER = logging.getLogger(__name__)


class RunInProgress(Exception):
  """Another run of the pipeline holds the lock."""


@contextlib.contextmanager
def run_lock(home: pathlib.Path) -> Iterator[None]:
  """Holds `<home>/run.lock` for a run; raises RunInProgress if another process holds it.

  An OS file lock, so a run that is killed releases it with its process: no stale lock to clean.
  """
  path = pathlib.Path(home) / LOCK_FILE
  path.parent.mkdir(parents=True, exist_ok=True)
  lock = filelock.FileLock(str(path))
  try:
    lock.acquire(timeout=0)
  except filelock.Timeout as error:
    raise RunInProgress(f"another run of the pipeline in {home} is in progress (it holds "
                        f"{path}); this one is not started") from error
  try:
    yield
  finally:
    lock.release()


def validate_cron(cron: str) -> str:
  """The expression if croniter accepts it as five fields, else ValueError naming it."""
  if len(cron.split()) != 5 or not croniter.croniter.is_valid(cron):
    raise ValueError(f"{cron!r} is not a cron expression of five fields (minute hour "
                     "day-of-month month day-of-week), e.g. '0 3 * * *' for 03:00 every day")
  return cron


def due_times(cron: str, after: datetime.datetime, count: int) -> List[datetime.datetime]:
  """The next `count` times the expression names after `after` (in after's time zone)."""
  times = croniter.croniter(validate_cron(cron), after)
  return [times.get_next(datetime.datetime) for _ in range(count)]


@dataclasses.dataclass(frozen=True)
class RunRecord:
  due: str
  started: str
  finished: str
  exit_code: int
  outcome: str  # the run's last line of output: what it pushed, or why not

  @property
  def skipped(self) -> bool:
    return self.exit_code == RUN_IN_PROGRESS_EXIT_CODE


def run_command(command: Sequence[str]) -> Callable[[], tuple]:
  """A run as a child process: returns (exit code, its one-line outcome).

  The outcome is the last line the run printed to stdout when it succeeded (`recsys run` ends
  with what it pushed), else the last on stderr, where click reports the error; TensorFlow's and
  Beam's logs also go to stderr, so they never pass for the outcome of a successful run.
  """

  def last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""

  def run() -> tuple:
    completed = subprocess.run(list(command), capture_output=True, text=True, check=False)
    streams = ((completed.stdout, completed.stderr) if completed.returncode == 0
               else (completed.stderr, completed.stdout))
    return completed.returncode, last_line(streams[0]) or last_line(streams[1])

  return run


class Scheduler:
  """Starts `run` at each time of `cron` and logs each outcome; the clock is injectable."""

  def __init__(self, cron: str, run: Callable[[], tuple], log_path: pathlib.Path,
               now: Callable[[], datetime.datetime] = lambda: datetime.datetime.now().astimezone(),
               sleep: Optional[Callable[[float], None]] = None):
    self._cron = validate_cron(cron)
    self._run = run
    self._log_path = pathlib.Path(log_path)
    self._now = now
    # Looked up now, not when the module loaded, so that a patched time.sleep takes effect.
    self._sleep = sleep or time.sleep

  def run(self, max_runs: Optional[int] = None) -> List[RunRecord]:
    """Runs until `max_runs` runs were due (forever without it); returns their records."""
    records = []
    while max_runs is None or len(records) < max_runs:
      (due,) = due_times(self._cron, self._now(), 1)
      self._sleep(max((due - self._now()).total_seconds(), 0.0))
      started = self._now()
      exit_code, outcome = self._run()
      record = RunRecord(due.isoformat(), started.isoformat(), self._now().isoformat(),
                         exit_code, outcome)
      self._log(record)
      records.append(record)
    return records

  def _log(self, record: RunRecord) -> None:
    (_LOGGER.warning if record.exit_code else _LOGGER.info)(
        "Run due %s: %s (exit code %d)", record.due,
        "skipped, another run is in progress" if record.skipped else record.outcome,
        record.exit_code)
    self._log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(self._log_path, "a", encoding="utf-8") as log:
      log.write(json.dumps(dataclasses.asdict(record)) + "\n")
