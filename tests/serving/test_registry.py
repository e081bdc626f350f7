"""The local server's model registry (serving/registry.py), without gRPC in the way.

The registry decides what the server answers with: which versions are loaded, which label points
where, and what happens when a new version cannot serve. The serving roots here are written by
serving/push.py and serving/model_config.py, as the Pusher writes them in production, so the
tests check the registry against the layout it really reads.
"""
import pathlib
import shutil
import threading
import time

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.saved_model import loader_impl

from components.models import queries
from components.models import warmup
from schemas import contract
from serving import handlers
from serving import model_config
from serving import push
from serving import registry as registry_lib
from tests.serving.test_server import expected_recommendations
from tests.serving.test_server import MODEL
from tests.serving.test_server import save_model

# Long enough for a slow CI machine, short enough that a hung test fails instead of stalling.
DEADLINE_SECONDS = 30.0
USER = "u1"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
  """Offset -> a SavedModel answering with that offset, with TF Serving warmup requests."""
  root = tmp_path_factory.mktemp("models")
  paths = {}
  for offset in (0, 1):
    paths[offset] = root / f"offset{offset}"
    save_model(paths[offset], offset=offset)
    warmup.write(paths[offset], warmup.representative_requests([USER], ["item03"], MODEL))
  return paths


@pytest.fixture
def corrupt_model(models, tmp_path) -> pathlib.Path:
  """A directory that looks like a complete version but is no SavedModel."""
  path = tmp_path / "corrupt"
  shutil.copytree(models[0], path)
  (path / contract.SAVED_MODEL_PB).write_bytes(b"not a SavedModel")
  return path


def _copy_version(model_dir: pathlib.Path, root: pathlib.Path, version: int) -> pathlib.Path:
  """A version put in place without a models.config, as TF Serving's `latest` policy reads."""
  destination = root / MODEL / str(version)
  shutil.copytree(model_dir, destination)
  return destination


def _top_item(servable: registry_lib.Servable) -> str:
  """The loaded model's best item for USER with an empty history."""
  outputs = servable.run(contract.SERVING_SIGNATURE, {
      contract.USER_ID: np.array([USER.encode()], dtype=object),
      contract.HISTORY: queries.padded_histories([[]]).numpy(),
      contract.TIMESTAMP: queries.query_times(None, 1).numpy()})
  return outputs[contract.ITEM_IDS][0, 0].decode()


def _top_item_of_offset(offset: int) -> str:
  return expected_recommendations(USER, [], offset)[0][0]


def _wait_until(condition, what: str) -> None:
  deadline = time.monotonic() + DEADLINE_SECONDS
  while not condition():
    if time.monotonic() > deadline:
      pytest.fail(f"timed out after {DEADLINE_SECONDS}s waiting for {what}")
    time.sleep(0.01)


def test_an_empty_serving_root_serves_nothing(tmp_path):
  registry = registry_lib.ModelRegistry(tmp_path, MODEL)

  snapshot = registry.refresh()

  assert registry.wanted() == ([], {})
  assert snapshot.servables == {} and snapshot.labels == {} and snapshot.failures == {}
  assert snapshot.latest() is None


def test_without_models_config_the_newest_complete_version_is_served(models, tmp_path):
  _copy_version(models[0], tmp_path, 1)
  _copy_version(models[1], tmp_path, 2)
  # Still being copied by a Pusher that does not rename: no saved_model.pb yet.
  incomplete = _copy_version(models[0], tmp_path, 3)
  (incomplete / contract.SAVED_MODEL_PB).unlink()
  # Not an integer: never a version, whatever it holds.
  shutil.copytree(models[0], tmp_path / MODEL / f"{push.STAGING_PREFIX}4")
  registry = registry_lib.ModelRegistry(tmp_path, MODEL)

  snapshot = registry.refresh()

  assert registry.wanted() == ([2], {"": 2})
  assert set(snapshot.servables) == {2}
  assert snapshot.labels == {"": 2}
  assert snapshot.failures == {}
  latest = snapshot.latest()
  assert (latest.name, latest.version, latest.path) == (MODEL, 2, tmp_path / MODEL / "2")
  assert _top_item(latest) == _top_item_of_offset(1)


def test_an_incomplete_version_is_ignored_until_its_saved_model_pb_arrives(models, tmp_path):
  _copy_version(models[0], tmp_path, 1)
  incomplete = _copy_version(models[1], tmp_path, 2)
  saved_model_pb = (incomplete / contract.SAVED_MODEL_PB).read_bytes()
  (incomplete / contract.SAVED_MODEL_PB).unlink()
  registry = registry_lib.ModelRegistry(tmp_path, MODEL)

  before = registry.refresh()
  # Written last, as TF Serving's convention has it: the version is now complete.
  (incomplete / contract.SAVED_MODEL_PB).write_bytes(saved_model_pb)
  after = registry.refresh()

  # Not a failure while incomplete, so nothing stops it from loading once complete.
  assert (set(before.servables), before.labels, before.failures) == ({1}, {"": 1}, {})
  assert (set(after.servables), after.labels, after.failures) == ({2}, {"": 2}, {})
  assert _top_item(after.latest()) == _top_item_of_offset(1)


def test_versions_and_labels_come_from_models_config_when_it_lists_the_model(models, tmp_path):
  for version, offset in ((1, 0), (2, 1), (3, 0)):
    push.push(models[offset], tmp_path, MODEL, keep=3, version=version)
  # Each push keeps the previous stable version loaded; version 1 stays on disk only.
  assert model_config.read(tmp_path, MODEL) == ([2, 3], {model_config.STABLE: 3})
  registry = registry_lib.ModelRegistry(tmp_path, MODEL)

  pushed = registry.refresh()
  model_config.write(tmp_path, MODEL, [1, 2, 3],
                     {model_config.STABLE: 2, model_config.CANARY: 1})
  relabelled = registry.refresh()

  assert set(pushed.servables) == {2, 3}
  assert pushed.labels == {model_config.STABLE: 3}
  assert set(relabelled.servables) == {1, 2, 3}
  assert relabelled.labels == {model_config.STABLE: 2, model_config.CANARY: 1}
  stable = relabelled.servables[relabelled.labels[model_config.STABLE]]
  assert _top_item(stable) == _top_item_of_offset(1)
  assert relabelled.latest().version == 3  # no label: the newest loaded, as in TF Serving


def test_a_models_config_that_does_not_list_the_model_leaves_the_newest_version_served(
    models, tmp_path):
  _copy_version(models[0], tmp_path, 1)
  _copy_version(models[1], tmp_path, 2)
  model_config.write(tmp_path, "another_model", [1], {model_config.STABLE: 1})
  registry = registry_lib.ModelRegistry(tmp_path, MODEL)

  snapshot = registry.refresh()

  assert (set(snapshot.servables), snapshot.labels) == ({2}, {"": 2})


def test_a_new_version_is_loaded_and_swapped_in_without_reloading_the_served_one(models,
                                                                                 tmp_path):
  push.push(models[0], tmp_path, MODEL, version=1)
  registry = registry_lib.ModelRegistry(tmp_path, MODEL)
  first = registry.refresh()
  unchanged = registry.refresh()

  push.push(models[1], tmp_path, MODEL, version=2)
  swapped = registry.refresh()

  assert unchanged.servables[1] is first.servables[1]
  assert registry.snapshot() is swapped
  assert set(swapped.servables) == {1, 2}
  assert swapped.labels == {model_config.STABLE: 2}
  assert swapped.servables[1] is first.servables[1]  # the old version stays loaded, not reloaded
  assert _top_item(swapped.servables[2]) == _top_item_of_offset(1)
  # A request that took the first snapshot still sees what it saw: snapshots are replaced whole.
  assert set(first.servables) == {1} and first.labels == {model_config.STABLE: 1}


def test_a_version_that_fails_to_load_is_reported_and_the_old_one_keeps_serving(
    models, corrupt_model, tmp_path, monkeypatch):
  push.push(models[0], tmp_path, MODEL, version=1)
  registry = registry_lib.ModelRegistry(tmp_path, MODEL)
  serving = registry.refresh()
  push.push(corrupt_model, tmp_path, MODEL, version=2)

  failed = registry.refresh()
  loads = []
  real_load = registry_lib.Servable.load
  monkeypatch.setattr(registry_lib.Servable, "load", classmethod(
      lambda cls, *args: loads.append(args) or real_load(*args)))
  again = registry.refresh()

  assert model_config.read_labels(tmp_path, MODEL) == {model_config.STABLE: 2}
  assert set(failed.servables) == {1}
  assert failed.servables[1] is serving.servables[1]
  assert failed.labels == {model_config.STABLE: 1}  # the label stays where it served
  assert failed.latest().version == 1
  assert set(failed.failures) == {2}
  # Where, then the exception's type and message.
  assert failed.failures[2].startswith(
      f"version 2 at {tmp_path / MODEL / '2'} failed to load: OSError: Cannot parse file")
  # Not retried on every poll: a broken version stays failed until the config moves on.
  assert loads == []
  assert (set(again.servables), again.labels, again.failures) == (
      {1}, {model_config.STABLE: 1}, failed.failures)


def test_a_first_version_that_fails_to_load_leaves_nothing_served(corrupt_model, tmp_path):
  push.push(corrupt_model, tmp_path, MODEL, version=1)
  registry = registry_lib.ModelRegistry(tmp_path, MODEL)

  snapshot = registry.refresh()

  assert snapshot.servables == {} and snapshot.labels == {}
  assert snapshot.latest() is None
  assert "version 1" in snapshot.failures[1]


def test_without_models_config_a_failed_newest_version_leaves_the_old_one_serving(
    models, corrupt_model, tmp_path):
  _copy_version(models[0], tmp_path, 1)
  registry = registry_lib.ModelRegistry(tmp_path, MODEL)
  registry.refresh()
  _copy_version(corrupt_model, tmp_path, 2)

  snapshot = registry.refresh()

  assert set(snapshot.servables) == {1}
  assert snapshot.labels == {"": 1}
  assert snapshot.latest().version == 1
  assert set(snapshot.failures) == {2}


def test_a_version_that_fails_its_warmup_is_reported_and_the_old_one_keeps_serving(
    models, tmp_path):
  bad_warmup = tmp_path / "bad_warmup"
  shutil.copytree(models[1], bad_warmup)
  request = warmup.read(models[1])[0]
  request.inputs["unknown_input"].CopyFrom(request.inputs[contract.USER_ID])
  warmup.write(bad_warmup, [request])
  root = tmp_path / "serving"
  push.push(models[0], root, MODEL, version=1)
  # The runner the server uses (serving/server.py).
  registry = registry_lib.ModelRegistry(root, MODEL, run_warmup_request=handlers.predict_with)
  registry.refresh()
  push.push(bad_warmup, root, MODEL, version=2)

  snapshot = registry.refresh()

  assert set(snapshot.servables) == {1}
  assert snapshot.labels == {model_config.STABLE: 1}
  assert _top_item(snapshot.latest()) == _top_item_of_offset(0)
  assert "version 2" in snapshot.failures[2]
  assert "ServingError" in snapshot.failures[2]
  assert "unexpected ['unknown_input']" in snapshot.failures[2]


def test_warmup_requests_are_all_replayed_before_the_version_is_published(models, tmp_path):
  replayed = []

  def run_warmup_request(servable, request):
    replayed.append((servable.version, request, set(registry.snapshot().servables)))

  registry = registry_lib.ModelRegistry(tmp_path, MODEL, run_warmup_request=run_warmup_request)
  push.push(models[0], tmp_path, MODEL, version=1)
  registry.refresh()
  push.push(models[1], tmp_path, MODEL, version=2)
  snapshot = registry.refresh()

  requests = warmup.read(models[0])
  assert len(requests) == 3
  assert [(version, request) for version, request, _ in replayed] == (
      [(1, request) for request in requests] + [(2, request) for request in requests])
  # While a version warms up, requests are answered by what served before it.
  assert [served for _, _, served in replayed] == [set()] * 3 + [{1}] * 3
  assert set(snapshot.servables) == {1, 2}


def test_a_version_the_config_no_longer_lists_is_unloaded(models, tmp_path):
  push.push(models[0], tmp_path, MODEL, version=1)
  push.push(models[1], tmp_path, MODEL, version=2)
  registry = registry_lib.ModelRegistry(tmp_path, MODEL)
  both = registry.refresh()

  assert push.rollback(tmp_path, MODEL) == 1  # lists only version 1 again
  rolled_back = registry.refresh()

  assert set(both.servables) == {1, 2}
  assert set(rolled_back.servables) == {1}
  assert rolled_back.servables[1] is both.servables[1]
  assert rolled_back.labels == {model_config.STABLE: 1}
  assert rolled_back.latest().version == 1  # requests without a label get stable again
  assert (tmp_path / MODEL / "2").is_dir()  # unloaded, not deleted: a roll forward can reload it


def test_a_malformed_models_config_keeps_the_served_versions(models, tmp_path):
  push.push(models[0], tmp_path, MODEL, version=1)
  registry = registry_lib.ModelRegistry(tmp_path, MODEL)
  serving = registry.refresh()
  (tmp_path / model_config.MODEL_CONFIG_FILE).write_text("model_config_list { half written")
  _copy_version(models[1], tmp_path, 2)

  with pytest.raises(ValueError, match="is not a ModelServerConfig"):
    registry.wanted()
  assert registry.refresh() is serving
  assert registry.snapshot() is serving


def test_requests_read_the_old_snapshot_while_a_new_version_loads(models, tmp_path,
                                                                  monkeypatch):
  push.push(models[0], tmp_path, MODEL, version=1)
  registry = registry_lib.ModelRegistry(tmp_path, MODEL)
  serving = registry.refresh()
  push.push(models[1], tmp_path, MODEL, version=2)
  loading, release = threading.Event(), threading.Event()
  loads = []
  real_load = registry_lib.Servable.load

  def blocking_load(cls, name, version, path):
    del cls
    loads.append(version)
    loading.set()
    assert release.wait(DEADLINE_SECONDS)
    return real_load(name, version, path)

  monkeypatch.setattr(registry_lib.Servable, "load", classmethod(blocking_load))
  first = threading.Thread(target=registry.refresh)
  second = threading.Thread(target=registry.refresh)
  first.start()
  assert loading.wait(DEADLINE_SECONDS)
  during_load = registry.snapshot()
  second.start()
  second.join(timeout=0.2)
  second_waited = second.is_alive()
  release.set()
  first.join(DEADLINE_SECONDS)
  second.join(DEADLINE_SECONDS)

  assert during_load is serving  # readers never wait for a load
  assert second_waited  # one refresh at a time ...
  assert loads == [2]  # ... so the second finds version 2 loaded and does not load it again
  assert set(registry.snapshot().servables) == {1, 2}


def test_the_poller_swaps_in_a_version_pushed_after_it_started(models, tmp_path):
  push.push(models[0], tmp_path, MODEL, version=1)
  registry = registry_lib.ModelRegistry(tmp_path, MODEL)
  registry.refresh()
  threads_before = set(threading.enumerate())
  poller = registry_lib.Poller(registry, interval=0.01)
  poller.start()
  try:
    [thread] = set(threading.enumerate()) - threads_before
    push.push(models[1], tmp_path, MODEL, version=2)
    _wait_until(lambda: registry.snapshot().labels.get(model_config.STABLE) == 2,
                "the poller to label version 2 stable")
  finally:
    poller.stop()

  assert thread.daemon  # never keeps the process alive
  assert not thread.is_alive()  # stop() returns once the thread has ended
  assert _top_item(registry.snapshot().servables[2]) == _top_item_of_offset(1)


class _FlakyRegistry:
  """Fails its first refresh, as a serving root on a flaky network file system may."""

  base_path = pathlib.Path("/nowhere")

  def __init__(self):
    self.calls = 0
    self.refreshed_after_failure = threading.Event()

  def refresh(self):
    self.calls += 1
    if self.calls == 1:
      raise OSError("stale file handle")
    self.refreshed_after_failure.set()


def test_the_poller_keeps_polling_after_a_refresh_fails(caplog):
  registry = _FlakyRegistry()
  poller = registry_lib.Poller(registry, interval=0.01)

  poller.start()
  try:
    recovered = registry.refreshed_after_failure.wait(DEADLINE_SECONDS)
  finally:
    poller.stop()

  assert recovered
  assert registry.calls >= 2
  assert any("Polling /nowhere failed" in record.getMessage() and record.exc_info
             for record in caplog.records)


def test_servable_load_keeps_the_stored_signature_defs(models):
  servable = registry_lib.Servable.load(MODEL, 4, models[0])

  assert (servable.name, servable.version, servable.path) == (MODEL, 4, models[0])
  signature_def = servable.signature_defs[contract.SERVING_SIGNATURE]
  assert {name: tensor.dtype for name, tensor in signature_def.inputs.items()} == {
      contract.USER_ID: tf.string.as_datatype_enum,
      contract.HISTORY: tf.string.as_datatype_enum,
      contract.TIMESTAMP: tf.int64.as_datatype_enum}
  assert [dim.size for dim in signature_def.inputs[contract.HISTORY].tensor_shape.dim] == [-1, -1]
  assert servable.signature_names == sorted(
      set(servable.signature_defs) - {"__saved_model_init_op"})
  assert contract.SERVING_SIGNATURE in servable.signature_names
  assert _top_item(servable) == _top_item_of_offset(0)


def test_servable_load_refuses_a_saved_model_without_a_serving_meta_graph(models, tmp_path):
  path = tmp_path / "training_only"
  shutil.copytree(models[0], path)
  saved_model = loader_impl.parse_saved_model(str(path))
  for meta_graph in saved_model.meta_graphs:
    meta_graph.meta_info_def.tags[:] = ["train"]
  (path / contract.SAVED_MODEL_PB).write_bytes(saved_model.SerializeToString())

  with pytest.raises(ValueError, match="has no MetaGraph tagged 'serve'"):
    registry_lib.Servable.load(MODEL, 1, path)
