"""Deployment files that cannot run here (no Docker engine) are checked for what they promise."""
import re

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from pipeline import configs
from conftest import REPO_ROOT


def test_models_config_parses_as_tf_serving_config():
  config = text_format.Parse((REPO_ROOT / "serving" / "models.config").read_text(),
                             model_server_config_pb2.ModelServerConfig())
  (model,) = config.model_config_list.config
  assert model.name == configs.PipelineConfig().model_name
  assert model.base_path == f"/models/{model.name}"
  assert model.model_platform == "tensorflow"


def test_serving_image_is_stock_gpu_tf_serving_with_the_config():
  dockerfile = (REPO_ROOT / "serving" / "Dockerfile").read_text()
  assert re.search(r"^FROM tensorflow/serving:2\.16\.1-gpu$", dockerfile, re.M)
  assert "COPY serving/models.config /models/models.config" in dockerfile
  assert "--model_config_file=/models/models.config" in dockerfile


def test_pipeline_image_installs_the_locked_requirements_on_python_3_10():
  dockerfile = (REPO_ROOT / "Dockerfile").read_text()
  assert re.search(r"^FROM python:3\.10", dockerfile, re.M)
  assert "-r requirements.txt" in dockerfile
  for package in ("components", "pipeline", "schemas", "serving"):
    assert f"COPY {package} {package}" in dockerfile
