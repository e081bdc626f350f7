"""Scheduled runs (pipeline/scheduler.py): cron times, one run at a time, outcomes logged."""
import datetime
import json
import subprocess
import sys
import textwrap

from click.testing import CliRunner
import pytest

from pipeline import cli
from pipeline import scheduler

UTC = datetime.timezone.utc


def test_due_times_follow_the_cron_expression():
  start = datetime.datetime(2026, 11, 26, 2, 59, tzinfo=UTC)
  assert scheduler.due_times("0 3 * * *", start, 3) == [
      datetime.datetime(2026, 11, day, 3, 0, tzinfo=UTC) for day in (26, 27, 28)]
  assert scheduler.due_times("*/30 * * * 1", start, 2) == [  # Mondays, every 30 minutes
      datetime.datetime(2026, 11, 30, 0, 0, tzinfo=UTC),
      datetime.datetime(2026, 11, 30, 0, 30, tzinfo=UTC)]


@pytest.mark.parametrize("cron", ["0 3 * *", "61 3 * * *", "0 0 3 * * *", "daily"])
def test_bad_cron_expressions_are_refused_by_name(cron):
  with pytest.raises(ValueError, match="not a cron expression of five fields"):
    scheduler.validate_cron(cron)


class FakeClock:
  def __init__(self, start):
    self.now = start
    self.slept = []

  def sleep(self, seconds):
    self.slept.append(seconds)
    self.now += datetime.timedelta(seconds=seconds)


def test_runs_start_at_each_due_time_and_every_outcome_is_logged(tmp_path):
  clock = FakeClock(datetime.datetime(2026, 11, 26, 2, 0, tzinfo=UTC))
  outcomes = iter([(0, "Model blessed; pushed version 7"),
                   (scheduler.RUN_IN_PROGRESS_EXIT_CODE, "Error: another run ..."),
                   (1, "Error: the data drifted")])
  log = tmp_path / "schedule.log"
  records = scheduler.Scheduler("0 3 * * *", lambda: next(outcomes), log, now=lambda: clock.now,
                                sleep=clock.sleep).run(max_runs=3)
  assert clock.slept == [3600.0, 86400.0, 86400.0]
  assert [record.due for record in records] == [
      f"2026-11-{day}T03:00:00+00:00" for day in (26, 27, 28)]
  assert [record.skipped for record in records] == [False, True, False]
  logged = [json.loads(line) for line in log.read_text().splitlines()]
  assert [entry["exit_code"] for entry in logged] == [0, 75, 1]
  assert logged[0]["outcome"] == "Model blessed; pushed version 7"


def _hold_lock(home):
  """A separate process holding the run lock until its stdin closes."""
  process = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
      import sys
      from pipeline import scheduler
      with scheduler.run_lock({str(home)!r}):
        print("locked", flush=True)
        sys.stdin.read()
      """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  assert process.stdout.readline().strip() == "locked"
  return process


def test_a_run_never_starts_beside_another(tmp_path):
  holder = _hold_lock(tmp_path)
  try:
    with pytest.raises(scheduler.RunInProgress, match="another run .* is in progress"):
      with scheduler.run_lock(tmp_path):
        pass
    result = CliRunner().invoke(cli.main, ["run", "--home", str(tmp_path)])
    assert result.exit_code == scheduler.RUN_IN_PROGRESS_EXIT_CODE
    assert "another run of the pipeline" in result.output
  finally:
    holder.communicate("")
  with scheduler.run_lock(tmp_path):  # released with its process
    pass


def test_recsys_schedule_refuses_a_bad_cron_and_kubeflow_without_host(tmp_path):
  result = CliRunner().invoke(cli.main, ["schedule", "--cron", "every night"])
  assert result.exit_code != 0 and "five fields" in result.output
  spec = tmp_path / "p.json"
  spec.write_text("{}")
  result = CliRunner().invoke(cli.main, ["schedule", "--cron", "0 3 * * *", "--kubeflow",
                                         str(spec)])
  assert result.exit_code != 0 and "--host" in result.output


def test_recsys_schedule_runs_recsys_run_and_logs_it(tmp_path, monkeypatch):
  commands = []

  def fake_run_command(command):
    commands.append(command)
    return lambda: (0, "Model blessed; pushed version 1")

  monkeypatch.setattr(scheduler, "run_command", fake_run_command)
  monkeypatch.setattr(scheduler.time, "sleep", lambda seconds: None)
  result = CliRunner().invoke(cli.main, ["schedule", "--cron", "* * * * *", "--home",
                                         str(tmp_path), "--max-runs", "2", "--epochs", "1"])
  assert result.exit_code == 0, result.output
  (command,) = commands
  assert command[1:] == ["-m", "pipeline.cli", "run", "--home", str(tmp_path), "--epochs", "1"]
  assert len((tmp_path / scheduler.LOG_FILE).read_text().splitlines()) == 2


def test_a_run_command_reports_its_exit_code_and_last_line():
  run = scheduler.run_command([sys.executable, "-c",
                               "import sys; print('Ingested'); print('pushed version 3'); "
                               "print('WARNING: a TensorFlow log line', file=sys.stderr)"])
  assert run() == (0, "pushed version 3")
  failing = scheduler.run_command([sys.executable, "-c",
                                   "print('Ingested'); raise SystemExit('Error: drifted')"])
  assert failing() == (1, "Error: drifted")
