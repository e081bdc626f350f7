"""What `recsys run` shows a person: where the run is, and at the end what it did.

A default run prints one line per component as it finishes (name, COMPLETE / CACHED / FAILED,
seconds), the Trainer's epochs (a progress bar on a terminal, a line per epoch otherwise) and the
verdict. Everything the libraries say (TFX, Beam, TensorFlow's Python and C++ logs, Python
warnings) goes to a log file under the run's home, whose path is printed once; `--verbose`
shows it on the terminal as well.

The component lines come from the log records TFX's LocalDagRunner writes for each node
("Component X is running.", "A cached execution N is used.", "Component X is finished."), and
the epoch lines from records the Trainer writes with `epoch`, `epochs` and `model` attributes
(components/models/training.py, `EpochLog`), so no stage knows about the terminal.
"""
import contextlib
import dataclasses
import datetime
import logging
import os
import pathlib
import re
import sys
import time
from typing import Callable, Iterator, Optional
import warnings

from absl import logging as absl_logging
import tqdm

_RUNNING = re.compile(r"Component (\S+) is running\.")
_CACHED = re.compile(r"A cached execution \d+ is used\.")
_FINISHED = re.compile(r"Component (\S+) is finished\.")
# Loggers that add a terminal handler of their own when the root logger has none at import time.
_SELF_HANDLING_LOGGERS = ("tensorflow",)
LOG_DIR = "logs"


def component_line(name: str, status: str, seconds: float) -> str:
  return f"  {name:<28} {status:<9}{seconds:7.1f} s"


class ComponentProgress(logging.Handler):
  """Writes a line per finished component and shows the Trainer's epochs."""

  def __init__(self, write: Callable[[str], None], interactive: bool,
               clock: Callable[[], float] = time.monotonic):
    super().__init__(logging.INFO)
    self._write = write
    self._interactive = interactive
    self._clock = clock
    self._running: Optional[str] = None
    self._started = 0.0
    self._cached = False
    self._bar: Optional[tqdm.tqdm] = None

  def emit(self, record: logging.LogRecord) -> None:
    if hasattr(record, "epoch"):
      self._epoch(record)
      return
    message = record.getMessage()
    running = _RUNNING.fullmatch(message)
    if running:
      self._running, self._started, self._cached = running.group(1), self._clock(), False
    elif _CACHED.fullmatch(message):
      self._cached = True
    elif _FINISHED.fullmatch(message) and self._running is not None:
      self._finish("CACHED" if self._cached else "COMPLETE")

  def failed(self) -> Optional[str]:
    """Marks the component that was running as FAILED; returns its name (None if none ran)."""
    name = self._running
    if name is not None:
      self._finish("FAILED")
    return name

  def _finish(self, status: str) -> None:
    self._close_bar()
    self._write(component_line(self._running, status, self._clock() - self._started))
    self._running = None

  def _epoch(self, record: logging.LogRecord) -> None:
    description = f"    {self._running or 'Trainer'}: {record.model}"
    if not self._interactive:
      self._write(f"{description} epoch {record.epoch}/{record.epochs}, loss {record.loss:.4f}")
      return
    if self._bar is None or self._bar.desc != description:
      self._close_bar()
      self._bar = tqdm.tqdm(total=record.epochs, desc=description, unit="epoch", leave=False,
                            file=sys.stdout)
    self._bar.set_postfix(loss=f"{record.loss:.4f}")
    self._bar.update(record.epoch - self._bar.n)

  def _close_bar(self) -> None:
    if self._bar is not None:
      self._bar.close()
      self._bar = None


@dataclasses.dataclass
class RunOutput:
  log_path: pathlib.Path
  progress: ComponentProgress


@contextlib.contextmanager
def captured(home: pathlib.Path, verbose: bool, write: Callable[[str], None],
             interactive: bool) -> Iterator[RunOutput]:
  """Routes the libraries' logs, warnings and stderr to a new log file; yields where it is.

  The terminal gets what `write` prints (the component lines) and, with `verbose`, the logs too.
  Python's stderr and the file descriptor beneath it (TensorFlow's C++ logs) point at the log
  file until the block ends, so an error printed after it reaches the terminal.
  """
  log_dir = home / LOG_DIR
  log_dir.mkdir(parents=True, exist_ok=True)
  log_path = log_dir / f"run-{datetime.datetime.now():%Y%m%dT%H%M%S}.log"
  # Line-buffered, so the log is readable while the run goes on; closed when the block ends.
  log_file = open(log_path, "a", encoding="utf-8", buffering=1)  # pylint: disable=R1732
  file_handler = logging.StreamHandler(log_file)
  file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
  progress = ComponentProgress(write, interactive)
  root = logging.getLogger()
  saved_root = (root.handlers[:], root.level)
  saved_loggers = {name: logging.getLogger(name).handlers[:] for name in _SELF_HANDLING_LOGGERS}
  root.handlers = [file_handler, progress] + (
      [logging.StreamHandler(sys.stderr)] if verbose else [])
  root.setLevel(logging.INFO)
  # TFX reports its nodes at INFO through absl, whose level falls to WARNING when a library
  # parses absl's flags mid-run (Transform does); set, it stays. TFX's own runners do the same.
  saved_verbosity = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.INFO)
  for name in _SELF_HANDLING_LOGGERS:
    logging.getLogger(name).handlers = []
  logging.captureWarnings(True)
  saved_stderr = sys.stderr
  saved_fd = None
  if not verbose:
    sys.stderr.flush()
    saved_fd = os.dup(2)
    os.dup2(log_file.fileno(), 2)
    sys.stderr = log_file
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("default")  # every library warning once, into the log
      yield RunOutput(log_path, progress)
  finally:
    progress.failed()  # a component still running when the block ends did not finish
    if saved_fd is not None:
      sys.stderr = saved_stderr
      os.dup2(saved_fd, 2)
      os.close(saved_fd)
    logging.captureWarnings(False)
    for name, handlers in saved_loggers.items():
      logging.getLogger(name).handlers = handlers
    absl_logging.set_verbosity(saved_verbosity)
    root.handlers, level = saved_root
    root.setLevel(level)
    log_file.close()
