"""`recsys` start-up: help answers without loading the stages, and nothing TensorFlow prints leaks.

Start-up time itself is measured by bench/bench_cli.py; these tests pin what makes it fast.
"""
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

COMMANDS = ("run", "ingest-logs", "report", "lineage", "compile", "schedule", "serve", "rollback",
            "recommend", "demo")
HEAVY_MODULES = ("tensorflow", "tfx", "apache_beam", "tensorflow_data_validation", "grpc",
                 "pandas")


def _python(code: str) -> subprocess.CompletedProcess:
  # As a user starts it: without the log level the test process may have set.
  env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
  return subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                        text=True, timeout=120, check=True, env=env)


def test_the_command_line_and_the_configuration_load_no_heavy_library():
  loaded = _python("import sys; import pipeline.cli; "
                   f"print(','.join(m for m in {HEAVY_MODULES!r} if m in sys.modules))")
  assert loaded.stdout.strip() == ""


@pytest.mark.parametrize("command", ("", *COMMANDS))
def test_every_help_prints_only_help(command):
  args = ["--help"] if not command else [command, "--help"]
  result = subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0
  assert result.stderr == ""
  assert result.stdout.startswith("Usage: ")


def test_importing_tensorflow_through_the_project_prints_no_cuda_registration_errors():
  # components/__init__.py sets the log level before anything imports TensorFlow.
  result = _python("import components.models.export")
  assert "Unable to register" not in result.stderr
  assert "cuda" not in result.stderr.lower()
