"""Atomic versioned push, retention, labels and rollback (serving/push.py), and the Pusher
executor that uses them (components/pusher.py)."""
import json
import os
import pathlib
import shutil

from click.testing import CliRunner
import pytest
from tfx import types
from tfx.proto import pusher_pb2
from tfx.types import standard_artifacts
from tfx.types import standard_component_specs
from tfx.utils import proto_utils

from components import artifact_properties
from components import pusher as pusher_lib
from pipeline import cli
from pipeline import configs
from pipeline import pipeline as pipeline_lib
from schemas import contract
from serving import model_config
from serving import push
from tests.serving.test_server import MODEL
from tests.serving.test_server import save_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> pathlib.Path:
  path = tmp_path_factory.mktemp("model") / "saved"
  save_model(path)
  return path


def _labels(root) -> dict:
  return model_config.read_labels(root, MODEL)


def test_a_push_is_a_complete_version_labelled_stable(model_dir, tmp_path):
  version = push.push(model_dir, tmp_path, MODEL, version=7)
  version_dir = tmp_path / MODEL / "7"
  assert version == 7
  assert sorted(path.name for path in (tmp_path / MODEL).iterdir()) == ["7"]
  assert {path.relative_to(version_dir) for path in version_dir.rglob("*")} == {
      path.relative_to(model_dir) for path in model_dir.rglob("*")}
  assert _labels(tmp_path) == {model_config.STABLE: 7}


def test_versions_increase_even_when_the_clock_does_not(model_dir, tmp_path):
  first = push.push(model_dir, tmp_path, MODEL, version=4_000_000_000)  # far in the future
  assert push.push(model_dir, tmp_path, MODEL) == first + 1


def test_a_crash_mid_push_leaves_no_version_and_the_next_push_cleans_up(model_dir, tmp_path,
                                                                        monkeypatch):
  push.push(model_dir, tmp_path, MODEL, version=1)

  def crash_after_copying_half(staging):
    (staging / contract.SAVED_MODEL_PB).unlink()
    raise OSError("disk full")

  monkeypatch.setattr(push, "_sync_tree", crash_after_copying_half)
  with pytest.raises(OSError, match="disk full"):
    push.push(model_dir, tmp_path, MODEL, version=2)
  assert push.versions(tmp_path / MODEL) == [1]
  assert not (tmp_path / MODEL / "2").exists()
  assert _labels(tmp_path) == {model_config.STABLE: 1}  # still serving version 1

  # A process killed mid-copy cannot clean up after itself: simulate its leftover.
  leftover = tmp_path / MODEL / f"{push.STAGING_PREFIX}3-dead"
  shutil.copytree(model_dir, leftover)
  monkeypatch.undo()
  push.push(model_dir, tmp_path, MODEL, version=3)
  assert sorted(path.name for path in (tmp_path / MODEL).iterdir()) == ["1", "3"]


def test_retention_keeps_the_newest_and_every_served_version(model_dir, tmp_path):
  for version in (1, 2, 3):
    push.push(model_dir, tmp_path, MODEL, keep=2, version=version)
  assert push.versions(tmp_path / MODEL) == [2, 3]
  model_config.write(tmp_path, MODEL, [2, 3], {model_config.STABLE: 2, model_config.CANARY: 3})
  push.push(model_dir, tmp_path, MODEL, keep=1, version=4)
  # 3 is the canary and 2 the stable version before 4, kept loaded for a rollback.
  assert model_config.read(tmp_path, MODEL) == (
      [2, 3, 4], {model_config.STABLE: 4, model_config.CANARY: 3})
  push.push(model_dir, tmp_path, MODEL, keep=1, version=5)
  assert push.versions(tmp_path / MODEL) == [3, 4, 5]


def test_a_label_moves_only_after_the_new_version_was_served_beside_the_old(model_dir, tmp_path,
                                                                           monkeypatch):
  push.push(model_dir, tmp_path, MODEL, version=1)
  configs_while_waiting = []
  monkeypatch.setattr(push.time, "sleep", lambda seconds: configs_while_waiting.append(
      (seconds, model_config.read(tmp_path, MODEL))))
  push.push(model_dir, tmp_path, MODEL, version=2, label_delay_seconds=45)
  # TF Serving refuses to move a label onto a version it has not loaded: it first sees both.
  assert configs_while_waiting == [(45, ([1, 2], {model_config.STABLE: 1}))]
  assert model_config.read(tmp_path, MODEL) == ([1, 2], {model_config.STABLE: 2})
  assert push.rollback(tmp_path, MODEL, label_delay_seconds=45) == 1
  assert len(configs_while_waiting) == 1  # 1 is still served: the move needs no first step
  # Requests without a label get the newest served version: 2 is unloaded.
  assert model_config.read(tmp_path, MODEL) == ([1], {model_config.STABLE: 1})


def test_rollback_moves_stable_to_the_previous_version_and_forward_again(model_dir, tmp_path):
  for version in (1, 2, 3):
    push.push(model_dir, tmp_path, MODEL, version=version)
  assert push.rollback(tmp_path, MODEL) == 2
  assert _labels(tmp_path) == {model_config.STABLE: 2}
  assert push.rollback(tmp_path, MODEL) == 1
  assert push.rollback(tmp_path, MODEL, to_version=3) == 3
  assert _labels(tmp_path) == {model_config.STABLE: 3}
  assert push.versions(tmp_path / MODEL) == [1, 2, 3]  # rollback deletes nothing


def test_rollback_errors_name_what_is_there(model_dir, tmp_path):
  push.push(model_dir, tmp_path, MODEL, version=5)
  with pytest.raises(push.PushError, match=r"no version .* older than the stable version 5"):
    push.rollback(tmp_path, MODEL)
  with pytest.raises(push.PushError, match=r"version 9 .* \(retained versions: \[5\]\)"):
    push.rollback(tmp_path, MODEL, to_version=9)
  assert _labels(tmp_path) == {model_config.STABLE: 5}


def test_push_refuses_what_is_not_a_saved_model(tmp_path):
  with pytest.raises(push.PushError, match="has no saved_model.pb"):
    push.push(tmp_path, tmp_path / "serving", MODEL)
  assert not (tmp_path / "serving").exists()


def _artifact(artifact_type, uri: pathlib.Path, **int_properties) -> types.Artifact:
  artifact = artifact_type()
  artifact.uri = str(uri)
  uri.mkdir(parents=True, exist_ok=True)
  for name, value in int_properties.items():
    artifact.set_int_custom_property(name, value)
  return artifact


@pytest.mark.parametrize("model_blessed, infra_blessed", [(1, 1), (1, 0), (0, 1)])
def test_the_pusher_pushes_only_with_both_blessings(model_dir, tmp_path, model_blessed,
                                                    infra_blessed):
  model = _artifact(standard_artifacts.Model, tmp_path / "model")
  shutil.copytree(model_dir, tmp_path / "model" / "Format-Serving")
  pushed = _artifact(standard_artifacts.PushedModel, tmp_path / "pushed")
  serving_root = tmp_path / "serving"
  destination = pusher_pb2.PushDestination(filesystem=pusher_pb2.PushDestination.Filesystem(
      base_directory=str(serving_root / MODEL)))
  pusher_lib.AtomicPushExecutor().Do(
      {standard_component_specs.MODEL_KEY: [model],
       standard_component_specs.MODEL_BLESSING_KEY: [_artifact(
           standard_artifacts.ModelBlessing, tmp_path / "blessing", blessed=model_blessed)],
       standard_component_specs.INFRA_BLESSING_KEY: [_artifact(
           standard_artifacts.InfraBlessing, tmp_path / "infra", **{
               artifact_properties.BLESSED: infra_blessed})]},
      {standard_component_specs.PUSHED_MODEL_KEY: [pushed]},
      {standard_component_specs.PUSH_DESTINATION_KEY: proto_utils.proto_to_json(destination),
       standard_component_specs.CUSTOM_CONFIG_KEY: json.dumps(
           {pusher_lib.VERSIONS_KEPT_KEY: 2, pusher_lib.REQUEST_LOG_SAMPLING_RATE_KEY: 0.25})})
  versions = push.versions(serving_root / MODEL)
  if model_blessed and infra_blessed:
    assert pushed.get_int_custom_property("pushed") == 1
    assert versions == [int(pushed.get_string_custom_property("pushed_version"))]
    assert _labels(serving_root) == {model_config.STABLE: versions[0]}
    assert model_config.read_logging(serving_root, MODEL).sampling_config.sampling_rate == 0.25
    assert os.path.isfile(os.path.join(pushed.uri, contract.SAVED_MODEL_PB))
  else:
    assert pushed.get_int_custom_property("pushed") == 0
    assert versions == []


def test_recsys_rollback(model_dir, tmp_path):
  serving_root = tmp_path / "serving"
  for version in (1, 2):
    push.push(model_dir, serving_root, MODEL, version=version)
  runner = CliRunner()
  result = runner.invoke(cli.main, ["rollback", "--home", str(tmp_path)])
  assert result.exit_code == 0, result.output
  assert "Version 1 of 'recommender' is now stable" in result.output
  assert _labels(serving_root) == {model_config.STABLE: 1}
  result = runner.invoke(cli.main, ["rollback", "--home", str(tmp_path), "--to", "7"])
  assert result.exit_code != 0
  assert "version 7 of 'recommender' is not under" in result.output
  result = runner.invoke(cli.main, ["rollback", "--home", str(tmp_path), "--to", "2"])
  assert result.exit_code == 0 and _labels(serving_root) == {model_config.STABLE: 2}


def test_the_push_writes_the_request_logging_and_a_rollback_keeps_it(model_dir, tmp_path):
  push.push(model_dir, tmp_path, MODEL, version=1, request_log_sampling_rate=0.5)
  push.push(model_dir, tmp_path, MODEL, version=2, request_log_sampling_rate=0.5)
  written = model_config.read_logging(tmp_path, MODEL)
  assert written.sampling_config.sampling_rate == 0.5
  # In the server's file system, as base_path is; the local server maps it under the root.
  assert written.log_collector_config.filename_prefix == (
      f"{model_config.CONTAINER_MODELS_DIR}/logs/{MODEL}/predictions")
  assert model_config.read_local_logging(tmp_path, MODEL).log_collector_config.filename_prefix \
      == str(tmp_path / "logs" / MODEL / "predictions")
  assert push.rollback(tmp_path, MODEL) == 1
  assert model_config.read_logging(tmp_path, MODEL) == written
  push.push(model_dir, tmp_path, MODEL, version=3)  # a push without logging turns it off
  assert model_config.read_logging(tmp_path, MODEL) is None
  assert model_config.read_local_logging(tmp_path, MODEL) is None


def test_a_logging_config_the_server_cannot_use_is_refused_naming_the_field(tmp_path):
  with pytest.raises(ValueError, match=r"within \[0, 1\], got 1.5"):
    model_config.request_logging(MODEL, 1.5)
  relative = model_config.request_logging(MODEL, 1.0)
  relative.log_collector_config.filename_prefix = "logs/predictions"
  model_config.write(tmp_path, MODEL, [1], {model_config.STABLE: 1}, logging=relative)
  with pytest.raises(ValueError, match="filename_prefix must be an absolute path, got "
                                       "'logs/predictions'"):
    model_config.read_local_logging(tmp_path, MODEL)
  elsewhere = model_config.request_logging(MODEL, 1.0)
  elsewhere.log_collector_config.filename_prefix = "/var/log/recsys/predictions"
  model_config.write(tmp_path, MODEL, [1], {model_config.STABLE: 1}, logging=elsewhere)
  assert model_config.read_local_logging(tmp_path, MODEL) == elsewhere  # kept as it is


@pytest.mark.parametrize("settings, rate", [
    ((), 1.0),  # on by default
    (("serving_request_log.sampling_rate=0.1",), 0.1),
    (("serving_request_log.enabled=false",), None),
])
def test_the_pipeline_s_pusher_writes_the_configured_request_logging(tmp_path, settings, rate):
  config = configs.PipelineConfig(home=tmp_path).with_settings(settings)
  pipeline = pipeline_lib.create_pipeline(
      config, pipeline_lib.PipelinePaths.local(config, tmp_path / "spans"))
  (pusher,) = [component for component in pipeline.components if component.id == "Pusher"]
  custom_config = json.loads(pusher.exec_properties[standard_component_specs.CUSTOM_CONFIG_KEY])
  assert custom_config[pusher_lib.REQUEST_LOG_SAMPLING_RATE_KEY] == rate
