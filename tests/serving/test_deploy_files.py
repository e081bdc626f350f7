"""Deployment files that cannot run here (no Docker engine) are checked for what they promise.

The generated model config is parsed with tensorflow-serving-api's protos. That package does not
ship the batching and monitoring protos, so those files are parsed against copies of the
messages from TF Serving's .proto files: a misspelt field or a wrong type fails here rather than
when the server starts.
"""
import json
import os
import pathlib
import re
import stat

from google.protobuf import descriptor_pb2
from google.protobuf import descriptor_pool
from google.protobuf import message_factory
from google.protobuf import text_format
from google.protobuf import wrappers_pb2
import pytest
from tensorflow_serving.config import model_server_config_pb2
import yaml

from pipeline import configs
from serving import handlers
from serving import metrics
from serving import model_config
from tests.conftest import REPO_ROOT

DEPLOY_DIR = REPO_ROOT / "serving" / "deploy"
KUBERNETES_DIR = DEPLOY_DIR / "kubernetes"
MODEL_NAME = configs.PipelineConfig().model_name
READINESS_PATH = f"/v1/models/{MODEL_NAME}/labels/{model_config.STABLE}/metadata"
# The tensorflow_model_server flags the image may pass, each looked up in TF Serving's
# tensorflow_serving/model_servers/main.cc: a misspelt flag stops the server at start.
KNOWN_SERVER_FLAGS = {
    "port", "rest_api_port", "model_config_file", "model_config_file_poll_wait_seconds",
    "file_system_poll_wait_seconds", "allow_version_labels_for_unavailable_models",
    "enable_batching", "batching_parameters_file", "monitoring_config_file",
}

_FIELD = descriptor_pb2.FieldDescriptorProto
_INT64_VALUE = ".google.protobuf.Int64Value"


def _field(name, number, field_type, type_name=None, repeated=False):
  return _FIELD(name=name, number=number, type=field_type, type_name=type_name,
                label=_FIELD.LABEL_REPEATED if repeated else _FIELD.LABEL_OPTIONAL)


def _tf_serving_messages(file_name, messages, dependencies=()):
  """Message classes of package tensorflow.serving, from `messages`: name -> fields."""
  pool = descriptor_pool.DescriptorPool()
  for dependency in dependencies:
    dependency_proto = descriptor_pb2.FileDescriptorProto()
    dependency.CopyToProto(dependency_proto)
    pool.Add(dependency_proto)
  file_proto = descriptor_pb2.FileDescriptorProto(
      name=file_name, package="tensorflow.serving", syntax="proto3",
      dependency=[dependency.name for dependency in dependencies])
  for name, fields in messages.items():
    file_proto.message_type.add(name=name, field=fields)
  pool.Add(file_proto)
  factory = message_factory.MessageFactory(pool)
  return {name: factory.GetPrototype(pool.FindMessageTypeByName(f"tensorflow.serving.{name}"))
          for name in messages}


# tensorflow_serving/servables/tensorflow/session_bundle_config.proto, the fields this repo sets.
BatchingParameters = _tf_serving_messages(
    "tensorflow_serving/servables/tensorflow/session_bundle_config.proto",
    {"BatchingParameters": [
        _field("max_batch_size", 1, _FIELD.TYPE_MESSAGE, _INT64_VALUE),
        _field("batch_timeout_micros", 2, _FIELD.TYPE_MESSAGE, _INT64_VALUE),
        _field("max_enqueued_batches", 3, _FIELD.TYPE_MESSAGE, _INT64_VALUE),
        _field("num_batch_threads", 4, _FIELD.TYPE_MESSAGE, _INT64_VALUE),
        _field("allowed_batch_sizes", 6, _FIELD.TYPE_INT64, repeated=True),
        _field("pad_variable_length_inputs", 7, _FIELD.TYPE_BOOL),
    ]},
    dependencies=[wrappers_pb2.DESCRIPTOR])["BatchingParameters"]
# tensorflow_serving/config/monitoring_config.proto, whole.
MonitoringConfig = _tf_serving_messages(
    "tensorflow_serving/config/monitoring_config.proto",
    {"PrometheusConfig": [_field("enable", 1, _FIELD.TYPE_BOOL),
                          _field("path", 2, _FIELD.TYPE_STRING)],
     "MonitoringConfig": [_field("prometheus_config", 1, _FIELD.TYPE_MESSAGE,
                                 ".tensorflow.serving.PrometheusConfig")]})["MonitoringConfig"]


def _parse(path, message_class):
  return text_format.Parse(path.read_text(), message_class())


def _dockerfile():
  """The serving Dockerfile with continuation lines joined."""
  return (DEPLOY_DIR / "Dockerfile").read_text().replace("\\\n", " ")


def _server_flags():
  """The Dockerfile's ENTRYPOINT flags, name -> value."""
  (entrypoint,) = re.findall(r"^ENTRYPOINT (\[.*\])$", _dockerfile(), re.M)
  binary, *flags = json.loads(entrypoint)
  assert binary == "tensorflow_model_server"
  assert all(re.fullmatch(r"--\w+=\S+", flag) for flag in flags), flags
  return dict(flag[2:].split("=", 1) for flag in flags)


def _copied_files():
  """Source in the repository -> path in the image, for every COPY of the Dockerfile."""
  copied = {}
  for line in re.findall(r"^COPY (.+)$", _dockerfile(), re.M):
    *sources, destination = line.split()
    for source in sources:
      copied[source] = (destination + pathlib.PurePosixPath(source).name
                        if destination.endswith("/") else destination)
  return copied


def _compose_service():
  return yaml.safe_load((DEPLOY_DIR / "docker-compose.yaml").read_text())["services"][
      "tf-serving"]


def _kubernetes(name):
  return yaml.safe_load((KUBERNETES_DIR / f"{name}.yaml").read_text())


def _serving_container():
  (container,) = _kubernetes("deployment")["spec"]["template"]["spec"]["containers"]
  return container


def test_render_is_a_model_server_config_with_the_versions_and_labels():
  text = model_config.render(MODEL_NAME, [8, 7],
                             {model_config.STABLE: 7, model_config.CANARY: 8})

  assert text.startswith("# Generated by serving/model_config.py")
  config = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
  (model,) = config.model_config_list.config
  assert model.name == MODEL_NAME
  assert model.base_path == f"{model_config.CONTAINER_MODELS_DIR}/{MODEL_NAME}"
  assert model.model_platform == "tensorflow"
  assert list(model.model_version_policy.specific.versions) == [7, 8]
  assert dict(model.version_labels) == {"stable": 7, "canary": 8}


def test_render_puts_the_model_under_the_given_base_path():
  text = model_config.render(MODEL_NAME, [7], {model_config.STABLE: 7}, base_path="/srv/models")

  config = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
  assert config.model_config_list.config[0].base_path == f"/srv/models/{MODEL_NAME}"


def test_render_refuses_a_config_that_serves_nothing_or_labels_unserved_versions():
  with pytest.raises(ValueError, match="no versions"):
    model_config.render(MODEL_NAME, [], {})
  with pytest.raises(ValueError, match="not served"):
    model_config.render(MODEL_NAME, [7], {model_config.STABLE: 7, model_config.CANARY: 8})


def test_write_replaces_the_config_whole_through_a_temporary_file_beside_it(tmp_path,
                                                                            monkeypatch):
  first = model_config.write(tmp_path, MODEL_NAME, [7], {model_config.STABLE: 7})
  replacements = []
  real_replace = os.replace

  def recording_replace(source, destination):
    # What a server polling at this moment sees, and what it sees next.
    replacements.append((pathlib.Path(source).parent, pathlib.Path(destination).read_text(),
                         pathlib.Path(source).read_text()))
    real_replace(source, destination)

  monkeypatch.setattr(os, "replace", recording_replace)
  labels = {model_config.STABLE: 7, model_config.CANARY: 8}
  second = model_config.write(tmp_path, MODEL_NAME, [7, 8], labels)

  old_text = model_config.render(MODEL_NAME, [7], {model_config.STABLE: 7})
  new_text = model_config.render(MODEL_NAME, [7, 8], labels)
  assert first == second == tmp_path / model_config.MODEL_CONFIG_FILE
  assert replacements == [(tmp_path, old_text, new_text)]
  assert second.read_text() == new_text
  assert [path.name for path in tmp_path.iterdir()] == [model_config.MODEL_CONFIG_FILE]
  assert second.stat().st_mode & stat.S_IROTH  # the server in the container may be another user
  assert model_config.read_labels(tmp_path, MODEL_NAME) == labels


def test_a_failed_write_leaves_the_old_config_and_no_temporary_file(tmp_path, monkeypatch):
  path = model_config.write(tmp_path, MODEL_NAME, [7], {model_config.STABLE: 7})
  old_text = path.read_text()

  def failing_replace(source, destination):
    raise OSError("disk full")

  monkeypatch.setattr(os, "replace", failing_replace)
  with pytest.raises(OSError, match="disk full"):
    model_config.write(tmp_path, MODEL_NAME, [8], {model_config.STABLE: 8})

  assert path.read_text() == old_text
  assert [child.name for child in tmp_path.iterdir()] == [model_config.MODEL_CONFIG_FILE]


def test_read_labels_is_empty_without_a_config_or_without_the_model(tmp_path):
  assert model_config.read_labels(tmp_path, MODEL_NAME) == {}
  model_config.write(tmp_path, "another_model", [7], {model_config.STABLE: 7})
  assert model_config.read_labels(tmp_path, MODEL_NAME) == {}


@pytest.mark.parametrize("content", [b"model_config_list { config { name: ", b"\xff\xfe\x00"],
                         ids=["truncated", "not text"])
def test_a_malformed_config_is_a_value_error_naming_the_file(tmp_path, content):
  path = tmp_path / model_config.MODEL_CONFIG_FILE
  path.write_bytes(content)

  with pytest.raises(ValueError, match=re.escape(str(path))):
    model_config.read_labels(tmp_path, MODEL_NAME)


def test_batching_parameters_are_tf_serving_batching_parameters():
  parameters = _parse(DEPLOY_DIR / "batching_parameters.txt", BatchingParameters)

  # The local server refuses what TF Serving would: one client works against both.
  assert parameters.max_batch_size.value == handlers.RequestLimits().max_batch_size
  assert parameters.batch_timeout_micros.value > 0
  assert parameters.num_batch_threads.value >= 1
  assert parameters.max_enqueued_batches.value >= 1
  sizes = list(parameters.allowed_batch_sizes)
  assert sizes == sorted(set(sizes)) and sizes[-1] == parameters.max_batch_size.value
  # TF Serving pads a shorter history with its first element, a real item id, not with ''; so
  # clients send histories of one width, the one the model reads.
  assert not parameters.pad_variable_length_inputs


def test_monitoring_config_exports_prometheus_metrics_where_the_deployment_says():
  config = _parse(DEPLOY_DIR / "monitoring.config", MonitoringConfig)
  annotations = _kubernetes("deployment")["spec"]["template"]["metadata"]["annotations"]

  assert config.prometheus_config.enable
  assert config.prometheus_config.path == metrics.METRICS_PATH
  assert annotations["prometheus.io/path"] == config.prometheus_config.path
  assert annotations["prometheus.io/port"] == _server_flags()["rest_api_port"]


def test_serving_image_is_stock_gpu_tf_serving():
  assert re.search(r"^FROM tensorflow/serving:2\.16\.1-gpu$", _dockerfile(), re.M)


def test_image_reads_its_config_files_where_it_copies_them_and_the_model_config_from_the_mount():
  flags, copied = _server_flags(), _copied_files()

  assert all((REPO_ROOT / source).is_file() for source in copied)
  assert flags["batching_parameters_file"] == copied["serving/deploy/batching_parameters.txt"]
  assert flags["monitoring_config_file"] == copied["serving/deploy/monitoring.config"]
  # Generated by the push step into the mounted serving root, never baked into the image.
  assert flags["model_config_file"] == (
      f"{model_config.CONTAINER_MODELS_DIR}/{model_config.MODEL_CONFIG_FILE}")
  assert not any(source.endswith(model_config.MODEL_CONFIG_FILE) for source in copied)
  assert not (DEPLOY_DIR / model_config.MODEL_CONFIG_FILE).exists()


def test_image_passes_every_flag_the_config_files_need():
  flags = _server_flags()

  assert set(flags) <= KNOWN_SERVER_FLAGS
  assert flags["enable_batching"] == "true"  # otherwise the batching parameters are ignored
  assert flags["rest_api_port"] != flags["port"]  # Prometheus metrics are served over REST
  # Label moves (push, rollback) and new versions are picked up without a restart.
  assert int(flags["model_config_file_poll_wait_seconds"]) > 0
  assert int(flags["file_system_poll_wait_seconds"]) > 0
  # The first stable label and a canary may name a version that is still loading.
  assert flags["allow_version_labels_for_unavailable_models"] == "true"


def test_ports_agree_across_image_compose_deployment_and_service():
  flags = _server_flags()
  ports = {"grpc": int(flags["port"]), "http": int(flags["rest_api_port"])}
  (exposed,) = re.findall(r"^EXPOSE (.+)$", _dockerfile(), re.M)
  published = [mapping.split(":") for mapping in _compose_service()["ports"]]
  container = _serving_container()
  service = _kubernetes("service")["spec"]

  assert {int(port) for port in exposed.split()} == set(ports.values())
  assert {host for host, _, _ in published} == {"127.0.0.1"}  # the server has no authentication
  assert {int(inside) for _, _, inside in published} == set(ports.values())
  assert {port["name"]: port["containerPort"] for port in container["ports"]} == ports
  assert {port["name"]: (port["port"], port["targetPort"]) for port in service["ports"]} == {
      name: (number, name) for name, number in ports.items()}


def test_compose_builds_the_image_reserves_a_gpu_and_mounts_the_serving_root_read_only():
  service = _compose_service()
  (volume,) = service["volumes"]
  host, inside, mode = volume.rsplit(":", 2)
  (device,) = service["deploy"]["resources"]["reservations"]["devices"]

  # Compose resolves relative paths from this file's directory.
  assert (DEPLOY_DIR / service["build"]["context"]).resolve() == REPO_ROOT
  assert service["build"]["dockerfile"] == "serving/deploy/Dockerfile"
  assert host == "${RECSYS_HOME:-../../.recsys}/serving"
  assert os.path.normpath(DEPLOY_DIR / "../../.recsys/serving") == str(
      REPO_ROOT / ".recsys/serving")
  assert (inside, mode) == (model_config.CONTAINER_MODELS_DIR, "ro")
  assert device == {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
  assert READINESS_PATH in service["healthcheck"]["test"][-1]


def test_deployment_requests_a_gpu_and_mounts_the_model_store_read_only():
  pod = _kubernetes("deployment")["spec"]["template"]["spec"]
  container = _serving_container()
  (mount,) = container["volumeMounts"]
  (volume,) = pod["volumes"]

  assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
  assert container["image"] == _compose_service()["image"]
  assert (mount["mountPath"], mount["readOnly"]) == (model_config.CONTAINER_MODELS_DIR, True)
  assert volume["name"] == mount["name"]
  assert volume["persistentVolumeClaim"] == {"claimName": "recsys-models", "readOnly": True}


def test_readiness_asks_for_the_stable_version_of_the_pipelines_model():
  container = _serving_container()

  assert container["readinessProbe"]["httpGet"] == {"path": READINESS_PATH, "port": "http"}
  assert container["livenessProbe"]["tcpSocket"] == {"port": "grpc"}
  assert container["startupProbe"]["tcpSocket"] == {"port": "grpc"}


def test_service_and_autoscaler_target_the_deployment():
  deployment = _kubernetes("deployment")
  service = _kubernetes("service")
  autoscaler = _kubernetes("hpa")
  (metric,) = autoscaler["spec"]["metrics"]

  assert service["spec"]["type"] == "ClusterIP"
  assert service["spec"]["selector"] == deployment["spec"]["template"]["metadata"]["labels"]
  assert deployment["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
  assert "replicas" not in deployment["spec"]  # the autoscaler owns the replica count
  assert autoscaler["apiVersion"] == "autoscaling/v2"
  assert autoscaler["spec"]["scaleTargetRef"] == {
      "apiVersion": deployment["apiVersion"], "kind": "Deployment",
      "name": deployment["metadata"]["name"]}
  assert 1 <= autoscaler["spec"]["minReplicas"] <= autoscaler["spec"]["maxReplicas"]
  # A utilisation target is a fraction of the request, so the container must request CPU.
  assert metric["resource"]["name"] in _serving_container()["resources"]["requests"]


def test_pipeline_image_installs_the_locked_requirements_on_python_3_10():
  dockerfile = (REPO_ROOT / "Dockerfile").read_text()
  assert re.search(r"^FROM python:3\.10", dockerfile, re.M)
  # requirements-gpu.txt by default: requirements.txt plus CUDA wheels (test_image.py)
  assert re.search(r"^ARG REQUIREMENTS=requirements(-gpu)?\.txt$", dockerfile, re.M)
  assert '-r "$REQUIREMENTS"' in dockerfile
  for package in ("components", "pipeline", "schemas", "serving"):
    assert f"COPY {package} {package}" in dockerfile
