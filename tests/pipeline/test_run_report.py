"""The one line `recsys run` prints (pipeline/run_report.py), from ML Metadata and the serving root."""
from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2
import pytest
from tfx.orchestration import metadata
from tfx.types import standard_artifacts

from components import artifact_properties
from pipeline import configs
from pipeline import run_report
from serving import push
from tests.serving.test_server import save_model


@pytest.fixture
def config(tmp_path) -> configs.PipelineConfig:
  config = configs.PipelineConfig(home=tmp_path)
  config.metadata_path.parent.mkdir(parents=True)
  return config


def record(config, artifact_type, **properties) -> None:
  """Puts one artifact with custom properties into the run's ML Metadata."""
  store = metadata_store.MetadataStore(
      metadata.sqlite_metadata_connection_config(str(config.metadata_path)))
  type_id = store.put_artifact_type(metadata_store_pb2.ArtifactType(
      name=artifact_type.TYPE_NAME))
  artifact = metadata_store_pb2.Artifact(type_id=type_id, uri="/nowhere")
  for name, value in properties.items():
    field = "int_value" if isinstance(value, int) else "string_value"
    setattr(artifact.custom_properties[name], field, value)
  store.put_artifacts([artifact])


def test_a_blessed_but_unservable_model_is_reported_with_the_failed_check(config, tmp_path):
  save_model(tmp_path / "model")
  version = push.push(tmp_path / "model", config.serving_root, config.model_name, version=5)
  record(config, standard_artifacts.ModelBlessing, blessed=1,
         blessing_message="blessed: floors hold")
  record(config, standard_artifacts.InfraBlessing, blessed=0,
         **{artifact_properties.INFRA_REASON: "p99 latency 900.0 ms exceeds the budget of 250 ms"})
  line = run_report.describe(config, versions_before={str(version)})
  assert line == ("Model blessed (blessed: floors hold) but not servable: p99 latency 900.0 ms "
                  f"exceeds the budget of 250 ms; version 5 keeps serving from "
                  f"{config.model_base_path / '5'}")


def test_the_stable_version_is_the_one_reported_as_serving(config, tmp_path):
  save_model(tmp_path / "model")
  for version in (5, 6):
    push.push(tmp_path / "model", config.serving_root, config.model_name, version=version)
  push.rollback(config.serving_root, config.model_name)
  record(config, standard_artifacts.ModelBlessing, blessed=0,
         blessing_message="refused: recall@10 0.01 is below its floor 0.05")
  line = run_report.describe(config, versions_before={"5", "6"})
  assert line.startswith("Model not blessed (refused: recall@10 0.01 is below its floor 0.05)")
  assert line.endswith(f"version 5 keeps serving from {config.model_base_path / '5'}")


def test_the_newest_skew_check_is_the_line_printed(config):
  assert run_report.serving_skew(config) is None  # before any run checked
  record(config, standard_artifacts.ExampleAnomalies)  # ExampleValidator's: not a skew check
  record(config, standard_artifacts.ExampleAnomalies,
         **{artifact_properties.SKEW_REPORT: "Serving skew: skipped: no request log"})
  record(config, standard_artifacts.ExampleAnomalies,
         **{artifact_properties.SKEW_REPORT: "Serving skew (reported, not stopping): skew in "
            "user_status"})
  record(config, standard_artifacts.ExampleAnomalies)
  assert run_report.serving_skew(config) == (
      "Serving skew (reported, not stopping): skew in user_status")
