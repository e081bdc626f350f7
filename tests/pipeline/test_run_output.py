"""What `recsys run` prints: a line per component, the Trainer's epochs, and no library noise."""
import logging
import os
import re
import warnings

from pipeline import configs
from pipeline import pipeline as pipeline_lib
from pipeline import run_output
from tests.conftest import REPO_ROOT

TFX = logging.getLogger("absl")


class FakeClock:
  def __init__(self):
    self.now = 100.0

  def __call__(self):
    return self.now


def _progress(interactive=False):
  lines, clock = [], FakeClock()
  progress = run_output.ComponentProgress(lines.append, interactive, clock)
  logger = logging.getLogger("test_run_output")
  logger.propagate = False
  logger.handlers = [progress]
  logger.setLevel(logging.INFO)
  return progress, logger, lines, clock


def test_each_component_gets_one_line_with_its_outcome_and_seconds():
  _, logger, lines, clock = _progress()
  logger.info("Component %s is running.", "StatisticsGen")
  logger.info("Going to run a new execution 4")
  clock.now += 12.5
  logger.info("Component %s is finished.", "StatisticsGen")
  logger.info("Component %s is running.", "Transform")
  logger.info("A cached execution %d is used.", 7)
  clock.now += 0.25
  logger.info("Component %s is finished.", "Transform")
  assert lines == [run_output.component_line("StatisticsGen", "COMPLETE", 12.5),
                   run_output.component_line("Transform", "CACHED", 0.25)]
  assert "StatisticsGen" in lines[0] and "COMPLETE" in lines[0] and "12.5 s" in lines[0]


def test_the_trainer_s_epochs_and_a_failure_are_shown():
  progress, logger, lines, clock = _progress()
  logger.info("Component %s is running.", "Trainer")
  for epoch in (1, 2):
    logger.info("retrieval epoch", extra={"model": "retrieval", "epoch": epoch, "epochs": 2,
                                          "loss": 10.0 / epoch})
  clock.now += 3.0
  assert progress.failed() == "Trainer"
  assert lines == ["    Trainer: retrieval epoch 1/2, loss 10.0000",
                   "    Trainer: retrieval epoch 2/2, loss 5.0000",
                   run_output.component_line("Trainer", "FAILED", 3.0)]
  assert progress.failed() is None  # nothing is running any more


def test_on_a_terminal_the_epochs_are_a_progress_bar_not_lines(capsys):
  _, logger, lines, _ = _progress(interactive=True)
  logger.info("Component %s is running.", "Trainer")
  for epoch in (1, 2, 3):
    logger.info("epoch", extra={"model": "DQN head", "epoch": epoch, "epochs": 3, "loss": 1.0})
  logger.info("Component %s is finished.", "Trainer")
  assert lines == [run_output.component_line("Trainer", "COMPLETE", 0.0)]
  assert "DQN head" in capsys.readouterr().out


def test_library_logs_warnings_and_native_stderr_go_to_the_log_file_only(tmp_path, capfd):
  printed = []
  with run_output.captured(tmp_path, False, printed.append, False) as output:
    TFX.warning("ArtifactQuery.property_predicate is not supported.")
    logging.getLogger("tensorflow").warning("Tables initialized inside a tf.function")
    warnings.warn("a library's deprecation", FutureWarning)
    os.write(2, b"oneDNN custom operations are on\n")  # what C++ code writes
    TFX.info("Component %s is running.", "Pusher")
    TFX.info("Component %s is finished.", "Pusher")
  terminal = capfd.readouterr()
  assert terminal.err == "" and terminal.out == ""
  assert [line.split()[:2] for line in printed] == [["Pusher", "COMPLETE"]]
  log = output.log_path.read_text()
  assert output.log_path.parent == tmp_path / run_output.LOG_DIR
  for noise in ("ArtifactQuery.property_predicate", "Tables initialized", "a library's deprecation",
                "oneDNN custom operations"):
    assert noise in log
  os.write(2, b"after the run\n")  # stderr is the terminal's again
  assert capfd.readouterr().err == "after the run\n"


def test_verbose_shows_the_logs_on_the_terminal_too(tmp_path, capfd):
  with run_output.captured(tmp_path, True, lambda line: None, False) as output:
    TFX.warning("ArtifactQuery.property_predicate is not supported.")
  assert "ArtifactQuery.property_predicate" in capfd.readouterr().err
  assert "ArtifactQuery.property_predicate" in output.log_path.read_text()


def test_the_readme_shows_every_component_and_prints_them_in_the_order_they_run(tmp_path):
  config = configs.PipelineConfig(home=tmp_path)
  components = [component.id for component in pipeline_lib.create_pipeline(
      config, pipeline_lib.PipelinePaths.local(config, tmp_path / "spans")).components]
  readme = (REPO_ROOT / "README.md").read_text()
  diagram = readme.split("```")[1]
  assert [component for component in components if component not in diagram] == []
  sample = readme.split("**What a run prints.**")[1].split("```")[1]
  printed = re.findall(r"^  (\w+) +COMPLETE", sample, flags=re.MULTILINE)
  assert printed == components
