"""Versions in the serving root: atomic push, retention, labels and rollback.

Layout, as TensorFlow Serving reads it:

  <serving_root>/models.config           the ModelServerConfig: served versions and their labels
  <serving_root>/<model>/<version>/      one complete SavedModel per version (integer names)
  <serving_root>/<model>/.staging-*/     a push in progress (not an integer: never a version)

A push copies the model into a staging directory beside the versions and renames it into place:
a rename within one file system is atomic, so a version directory either does not exist or is
complete, and a crash mid-push leaves only a staging directory, which the next push removes.
The `stable` label then moves to the new version and models.config is rewritten (itself
atomically), keeping the previous stable version loaded too. Servers serve the versions the
config lists; TF Serving re-reads models.config every `--model_config_file_poll_wait_seconds`,
the local server on every poll.

Retention keeps the newest `keep` versions, never deleting one the config lists, so that a
rollback has somewhere to go: `rollback` moves `stable` back to an earlier retained version.
"""
import os
import pathlib
import shutil
import time
from typing import List, Optional, Set
import uuid

from tensorflow_serving.config import logging_config_pb2

from schemas import contract
from serving import model_config
from serving.config import DEFAULT_VERSIONS_KEPT

STAGING_PREFIX = ".staging-"


class PushError(Exception):
  """A push or rollback that cannot be done; the serving root is left as it was."""


def versions(base_path: os.PathLike) -> List[int]:
  """The complete versions under a model's base path, oldest first."""
  base_path = pathlib.Path(base_path)
  if not base_path.is_dir():
    return []
  return sorted(int(path.name) for path in base_path.iterdir()
                if path.name.isdecimal() and (path / contract.SAVED_MODEL_PB).is_file())


def push(model_dir: os.PathLike, serving_root: os.PathLike,
         model_name: str = contract.DEFAULT_MODEL_NAME,
         keep: int = DEFAULT_VERSIONS_KEPT, version: Optional[int] = None,
         label_delay_seconds: float = 0.0,
         request_log_sampling_rate: Optional[float] = None) -> int:
  """Publishes a SavedModel as a new version labelled stable; returns the version.

  Args:
    model_dir: The SavedModel directory to publish.
    serving_root: The directory servers read (models.config and one directory per model).
    model_name: The name clients ask for.
    keep: How many versions to keep (at least 1); labelled versions are never removed.
    version: The version number; by default the Unix time, as TFX's Pusher numbers versions,
      or one more than the newest existing version if that is later.
    label_delay_seconds: Between adding the version to the served ones and labelling it
      stable, when a server that refuses label moves to unloaded versions (TF Serving) reads
      the root; see `_move_label`.
    request_log_sampling_rate: The fraction of requests servers log
      (`model_config.request_logging`, under `<serving_root>/logs/<model_name>/`); None writes no
      logging config, so nothing is logged.
  """
  model_dir, serving_root = pathlib.Path(model_dir), pathlib.Path(serving_root)
  logging = (None if request_log_sampling_rate is None
             else model_config.request_logging(model_name, request_log_sampling_rate))
  if keep < 1:
    raise PushError(f"keep must be at least 1, got {keep}")
  if not (model_dir / contract.SAVED_MODEL_PB).is_file():
    raise PushError(f"{model_dir} is not a SavedModel: it has no {contract.SAVED_MODEL_PB}")
  base_path = serving_root / model_name
  base_path.mkdir(parents=True, exist_ok=True)
  _remove_abandoned_staging(base_path)
  existing = versions(base_path)
  if version is None:
    version = max([int(time.time())] + [latest + 1 for latest in existing[-1:]])
  destination = base_path / str(version)
  if destination.exists():
    raise PushError(f"version {version} already exists at {destination}")

  staging = base_path / f"{STAGING_PREFIX}{version}-{uuid.uuid4().hex}"
  try:
    shutil.copytree(model_dir, staging)
    _sync_tree(staging)
    os.rename(staging, destination)
  finally:
    shutil.rmtree(staging, ignore_errors=True)

  served = _move_label(serving_root, model_name, model_config.STABLE, version,
                       label_delay_seconds, keep_previous_loaded=True, logging=logging)
  _retain(base_path, keep, protected=served)
  return version


def rollback(serving_root: os.PathLike, model_name: str = contract.DEFAULT_MODEL_NAME,
             to_version: Optional[int] = None, label_delay_seconds: float = 0.0) -> int:
  """Moves the stable label to `to_version`, by default the newest version older than stable.

  Returns the version now stable. The versions on disk stay, so a later rollback can move the
  label forward again. The default target is the version stable before the last push, which the
  config keeps loaded, so the move is immediate on TF Serving too.
  """
  serving_root = pathlib.Path(serving_root)
  available = versions(serving_root / model_name)
  labels = model_config.read_labels(serving_root, model_name)
  stable = labels.get(model_config.STABLE, available[-1] if available else None)
  if to_version is None:
    older = [version for version in available if stable is not None and version < stable]
    if not older:
      raise PushError(f"no version of {model_name!r} older than the stable version {stable} "
                      f"to roll back to under {serving_root}; versions there: {available}")
    to_version = older[-1]
  if to_version not in available:
    raise PushError(f"version {to_version} of {model_name!r} is not under {serving_root} "
                    f"(retained versions: {available})")
  # The request logging the last push configured stays as it is.
  _move_label(serving_root, model_name, model_config.STABLE, to_version, label_delay_seconds,
              keep_previous_loaded=False,
              logging=model_config.read_logging(serving_root, model_name))
  return to_version


def _move_label(serving_root: pathlib.Path, model_name: str, label: str, version: int,
                delay_seconds: float, keep_previous_loaded: bool,
                logging: Optional[logging_config_pb2.LoggingConfig]) -> Set[int]:
  """Points `label` at `version`, with `logging`; returns the versions the config now lists.

  The label's previous version stays loaded if asked.

  A push keeps it loaded, so that a rollback is a label move to a loaded version (immediate on
  TF Serving); a rollback unloads the version it leaves, so that requests without a label,
  which get the newest loaded version, get the stable one again.

  TF Serving refuses to move an existing label to a version it has not loaded (and then keeps
  its old config); so when the version is not served yet, a first config only adds it, and
  the label moves `delay_seconds` later. The delay must cover TF Serving's config poll
  (--model_config_file_poll_wait_seconds, serving/deploy/Dockerfile) for it to see the first config;
  if it still has not loaded the version then, it refuses the second config until it has, and
  accepts it at a later poll. The local server takes label moves at once, so 0 suffices there.
  """
  served, labels = model_config.read(serving_root, model_name)
  previous = labels.get(label)
  if previous is not None and version not in served:
    model_config.write(serving_root, model_name, sorted(set(served) | {version}), labels,
                       logging=logging)
    time.sleep(delay_seconds)
  labels[label] = version
  loaded = set(labels.values())
  if keep_previous_loaded and previous is not None:
    loaded.add(previous)
  model_config.write(serving_root, model_name, sorted(loaded), labels, logging=logging)
  return loaded


def _retain(base_path: pathlib.Path, keep: int, protected: set) -> None:
  for version in versions(base_path)[:-keep]:
    if version not in protected:
      # Renamed out of the version namespace first, so no server sees a half-deleted version.
      doomed = base_path / f"{STAGING_PREFIX}deleted-{version}-{uuid.uuid4().hex}"
      os.rename(base_path / str(version), doomed)
      shutil.rmtree(doomed)


def _remove_abandoned_staging(base_path: pathlib.Path) -> None:
  """Removes what pushes that crashed left behind; only one push runs at a time per root."""
  for path in base_path.glob(f"{STAGING_PREFIX}*"):
    shutil.rmtree(path, ignore_errors=True)


def _sync_tree(root: pathlib.Path) -> None:
  """Flushes the copied files to disk, so the rename cannot outlive their contents on a crash."""
  for directory, _, files in os.walk(root):
    for name in files:
      with open(os.path.join(directory, name), "rb") as copied:
        os.fsync(copied.fileno())
