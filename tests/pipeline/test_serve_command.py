"""`recsys serve` under a process manager: SIGTERM to the command stops the server itself.

systemd, Docker and Kubernetes signal the main process; a server running as its child would
outlive it, still bound to the ports (found running, parentless, an hour later). Its request log
is closed on the way out.
"""
import collections
import signal
import socket
import subprocess
import sys
import time

from click import testing
import grpc
import pytest

from pipeline import cli
from schemas import contract
from serving import client as client_lib
from serving import model_config
from serving import push
from serving import request_log
from serving import server as server_lib
from serving.config import RequestLogWriterConfig
from tests.conftest import REPO_ROOT
from tests.serving.test_server import save_model

# The grace period for requests in flight, plus the process exit (TensorFlow's teardown takes
# seconds on a loaded 2-core machine).
STOP_WITHIN_SECONDS = server_lib.SHUTDOWN_GRACE_SECONDS + 25


def _port_is_free(port: int) -> bool:
  with socket.socket() as probe:
    try:
      probe.bind(("127.0.0.1", port))
    except OSError:
      return False
  return True


@pytest.fixture
def home(tmp_path):
  save_model(tmp_path / "model")
  push.push(tmp_path / "model", tmp_path / "serving", request_log_sampling_rate=1.0)
  return tmp_path


def test_sigterm_to_recsys_serve_stops_the_server_and_frees_its_ports(home):
  port, rest_port = server_lib.free_loopback_port(), server_lib.free_loopback_port()
  serve = subprocess.Popen(
      [sys.executable, "-m", "pipeline.cli", "serve", "--home", str(home), "--port", str(port),
       "--rest-port", str(rest_port)], cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL)
  try:
    with client_lib.RecommenderClient(f"127.0.0.1:{port}") as client:
      client.wait_until_available(timeout=120)
      client.recommend("u1", k=1, request_id="before-sigterm")
    serve.send_signal(signal.SIGTERM)
    assert serve.wait(timeout=STOP_WITHIN_SECONDS) == 0
    logs = home / "serving" / model_config.REQUEST_LOG_DIR
    (closed,) = request_log.closed_files(
        logs / contract.DEFAULT_MODEL_NAME / model_config.REQUEST_LOG_NAME)
    assert b"before-sigterm" in closed.read_bytes()
    assert not list(logs.rglob(f"*{request_log.IN_PROGRESS_SUFFIX}"))
    deadline = time.monotonic() + STOP_WITHIN_SECONDS
    while not (_port_is_free(port) and _port_is_free(rest_port)):
      assert time.monotonic() < deadline, "a process still holds the serving ports"
      time.sleep(0.2)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
      with pytest.raises(grpc.FutureTimeoutError):
        grpc.channel_ready_future(channel).result(timeout=1)
  finally:
    serve.kill()
    serve.wait()


def _served_arguments(monkeypatch, tmp_path, *flags):
  """What the server `recsys serve <flags>` execs would parse, without starting it."""
  executed = []
  monkeypatch.setattr(cli.os, "execv", lambda path, command: executed.append(command))
  result = testing.CliRunner().invoke(cli.main, ["serve", "--home", str(tmp_path), *flags])
  assert result.exit_code == 0, result.output
  (command,) = executed
  assert command[1:3] == ["-m", "serving.server"]
  return server_lib.parse_arguments(command[3:])


def test_recsys_serve_passes_the_request_log_writer_settings_to_the_server(monkeypatch, tmp_path):
  served = _served_arguments(monkeypatch, tmp_path, "--request-log-max-file-bytes", "4096",
                             "--request-log-max-file-seconds", "2.5",
                             "--request-log-queue-records", "7")
  assert served.request_log == RequestLogWriterConfig(max_file_bytes=4096, max_file_seconds=2.5,
                                                      queue_records=7)
  assert served.serving_root == tmp_path.resolve() / "serving"
  assert _served_arguments(monkeypatch, tmp_path).request_log == RequestLogWriterConfig()


def test_recsys_serve_refuses_a_request_log_setting_the_server_would_refuse(monkeypatch, tmp_path):
  monkeypatch.setattr(cli.os, "execv", lambda path, command: pytest.fail("the server started"))
  result = testing.CliRunner().invoke(
      cli.main, ["serve", "--home", str(tmp_path), "--request-log-queue-records", "0"])
  assert result.exit_code == 1
  assert "queue_records must be positive" in result.output


def test_printed_recommendations_name_only_the_latest_history_items(capsys):
  recommendation = collections.namedtuple("Recommendation", "item_id score")
  cli._print_recommendations("u1", list("abcdefg"), [recommendation("i9", 0.5)])
  assert capsys.readouterr().out.splitlines() == [
      "Top 1 for user u1 (history: 7 items, latest c, d, e, f, g):",
      "  1. i9                       score 0.5000"]
  cli._print_recommendations("u1", ["a"], [])
  assert capsys.readouterr().out.strip() == "Top 0 for user u1 (history: a):"
