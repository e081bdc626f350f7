"""The Kubeflow Pipelines compile path and recurring runs, as far as they go without a cluster."""
import dataclasses
import json
import types

from click.testing import CliRunner
from google.cloud import aiplatform_v1
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2
import pytest

from components import pusher as pusher_lib
from components.evaluation import release_gate
from pipeline import cli
from pipeline import configs
from pipeline import kubeflow_runner
from pipeline import pipeline as pipeline_lib
import schemas

KUBEFLOW = dataclasses.replace(
    configs.KubeflowConfig(), image="registry.example/recsys-pipeline:7",
    pipeline_root="gs://bucket/pipelines", input_base="gs://bucket/spans",
    serving_root="gs://bucket/serving",
    beam_pipeline_args=("--runner=DirectRunner", "--direct_num_workers=4"))
CONFIG = dataclasses.replace(configs.PipelineConfig(), kubeflow=KUBEFLOW)


@pytest.fixture(scope="module")
def job_text(tmp_path_factory) -> str:
  """The PipelineJob JSON KubeflowV2DagRunner writes: displayName, pipelineSpec, runtimeConfig."""
  path = kubeflow_runner.compile_pipeline(CONFIG, tmp_path_factory.mktemp("kfp") / "p.json")
  return path.read_text()


@pytest.fixture(scope="module")
def spec(job_text) -> dict:
  return json.loads(job_text)["pipelineSpec"]


def test_the_job_and_its_spec_parse_strictly_into_kfps_and_vertexs_protos(job_text):
  # A field the protos do not define would be dropped by a lenient parser and ignored by the
  # cluster; strict parsing refuses it by name.
  job = json_format.Parse(job_text, pipeline_spec_pb2.PipelineJob(), ignore_unknown_fields=False)
  assert job.display_name == CONFIG.pipeline_name
  assert job.runtime_config.gcs_output_directory == KUBEFLOW.pipeline_root
  # The job holds the spec as a Struct: parse it into PipelineSpec, strictly, too.
  pipeline_spec = json_format.ParseDict(json.loads(job_text)["pipelineSpec"],
                                        pipeline_spec_pb2.PipelineSpec(),
                                        ignore_unknown_fields=False)
  assert pipeline_spec.pipeline_info.name == CONFIG.pipeline_name
  assert set(pipeline_spec.root.dag.tasks) >= {"Trainer", "SessionBuilder"}
  assert pipeline_spec.deployment_spec  # executors: a Struct in the proto, checked below
  executors = json.loads(job_text)["pipelineSpec"]["deploymentSpec"]["executors"]
  for name, executor in executors.items():
    json_format.ParseDict(executor, pipeline_spec_pb2.PipelineDeploymentConfig.ExecutorSpec(),
                          ignore_unknown_fields=False)
  # Vertex AI Pipelines' PipelineJob (what `aiplatform.PipelineJob` submits) takes it as is.
  vertex = aiplatform_v1.PipelineJob.from_json(job_text, ignore_unknown_fields=False)
  assert vertex.display_name == CONFIG.pipeline_name


def test_strict_parsing_refuses_an_unknown_field(job_text):
  job = json.loads(job_text)
  job["pipelineSpec"]["root"]["dag"]["tasks"]["Trainer"]["gpu"] = 1
  with pytest.raises(json_format.ParseError, match="gpu"):
    json_format.ParseDict(job["pipelineSpec"], pipeline_spec_pb2.PipelineSpec(),
                          ignore_unknown_fields=False)


def _parameters(spec: dict, task: str) -> dict:
  """The task's constant parameters, e.g. {"input_base": "gs://..."}; integers as int."""
  inputs = spec["root"]["dag"]["tasks"][task]["inputs"]["parameters"]
  parameters = {}
  for name, value in inputs.items():
    if "runtimeValue" in value:
      (kind, constant), = value["runtimeValue"]["constantValue"].items()
      parameters[name] = int(constant) if kind == "intValue" else constant
  return parameters


def test_the_spec_has_every_component_of_the_local_pipeline(spec, tmp_path):
  local = pipeline_lib.create_pipeline(
      configs.PipelineConfig(home=tmp_path), pipeline_lib.PipelinePaths.local(
          configs.PipelineConfig(home=tmp_path), tmp_path / "spans"))
  tasks = set(spec["root"]["dag"]["tasks"])
  # The latest-blessed-model resolver compiles into two query tasks.
  expected = {component.id for component in local.components} - {"LatestBlessedModel"}
  assert expected <= tasks
  assert {"LatestBlessedModel-model-resolver", "LatestBlessedModel-model-blessing-resolver"} <= tasks


def test_every_step_runs_in_the_pipeline_image_with_the_beam_args(spec):
  containers = {name: executor["container"] for name, executor in
                spec["deploymentSpec"]["executors"].items() if "container" in executor}
  assert containers
  assert {container["image"] for container in containers.values()} == {KUBEFLOW.image}
  session_builder = containers["SessionBuilder_executor"]
  assert session_builder["args"][-2:] == list(KUBEFLOW.beam_pipeline_args)


def test_the_model_steps_request_a_gpu(spec):
  executors = spec["deploymentSpec"]["executors"]
  for name in KUBEFLOW.gpu_components:
    container = executors[f"{name}_executor"]["container"]
    assert container["resources"]["accelerator"] == {"type": KUBEFLOW.gpu_type,
                                                     "count": str(KUBEFLOW.gpu_count)}
    # The image built from ./Dockerfile, whose CUDA wheels tests/pipeline/test_image.py checks.
    assert container["image"] == KUBEFLOW.image
  assert "resources" not in executors["SessionBuilder_executor"]["container"]


def test_paths_and_parameters_are_the_cluster_s(spec):
  assert _parameters(spec, "ImportExampleGen")["input_base"] == KUBEFLOW.input_base
  assert _parameters(spec, "EventsSchemaGen")["schema_file"] == (
      f"{KUBEFLOW.repo_dir}/schemas/events/schema.pbtxt")
  assert schemas.EVENTS_SCHEMA_PATH.relative_to(schemas.SCHEMA_DIR).as_posix() == (
      "events/schema.pbtxt")
  push_destination = json.loads(_parameters(spec, "Pusher")["push_destination"])
  assert push_destination["filesystem"]["base_directory"] == (
      f"{KUBEFLOW.serving_root}/{CONFIG.model_name}")
  evaluator = _parameters(spec, "ModelEvaluator")
  assert evaluator["gate_config"] == release_gate.GateConfig.load(CONFIG.gate_config).to_yaml()
  assert evaluator["simulator_users"] == CONFIG.simulator_users
  assert _parameters(spec, "ServingInfraValidator")["latency_budget_ms"] == (
      CONFIG.serving_latency_budget_ms)


def test_an_unknown_gpu_component_is_refused(tmp_path):
  config = dataclasses.replace(CONFIG, kubeflow=dataclasses.replace(
      KUBEFLOW, gpu_components=("Trainer", "Traner")))
  with pytest.raises(ValueError, match=r"names \['Traner'\]"):
    kubeflow_runner.compile_pipeline(config, tmp_path / "p.json")


def test_recsys_compile_writes_the_spec(tmp_path):
  output = tmp_path / "out" / "pipeline.json"
  result = CliRunner().invoke(cli.main, [
      "compile", "--kubeflow", str(output), "--image", "img:1", "--pipeline-root", "gs://b/p",
      "--beam-preset", "dataflow", "--beam-arg=--project=p1"])
  assert result.exit_code == 0, result.output
  spec = json.loads(output.read_text())
  assert spec["runtimeConfig"]["gcsOutputDirectory"] == "gs://b/p"
  args = spec["pipelineSpec"]["deploymentSpec"]["executors"]["Transform_executor"]["container"][
      "args"]
  assert "--runner=DataflowRunner" in args and args[-1] == "--project=p1"


def test_cron_becomes_kfp_s_six_fields():
  assert kubeflow_runner.kfp_cron("0 3 * * *") == "0 0 3 * * *"
  with pytest.raises(ValueError, match="five-field"):
    kubeflow_runner.kfp_cron("0 0 3 * * *")


def test_a_recurring_run_is_created_without_overlap_or_catch_up(tmp_path):
  calls = {}

  class FakeClient:
    """Records what kfp.Client would send to the cluster."""

    def create_experiment(self, name):
      calls["experiment"] = name
      return types.SimpleNamespace(experiment_id="e-1")

    def create_recurring_run(self, **kwargs):
      calls["recurring_run"] = kwargs
      return types.SimpleNamespace(recurring_run_id="r-1")

  spec = tmp_path / "p.json"
  job = kubeflow_runner.create_recurring_run(FakeClient(), spec, "30 2 * * 1", "recsys", "nightly")
  assert job.recurring_run_id == "r-1"
  assert calls == {"experiment": "recsys", "recurring_run": {
      "experiment_id": "e-1", "job_name": "nightly", "cron_expression": "0 30 2 * * 1",
      "pipeline_package_path": str(spec), "max_concurrency": 1, "no_catchup": True,
      "enabled": True}}


def test_the_skew_gate_reads_the_serving_root_s_request_log_before_transform(spec, tmp_path):
  skew_gate = _parameters(spec, "SkewGate")
  assert skew_gate["request_log_prefix"] == (
      f"{KUBEFLOW.serving_root}/logs/{CONFIG.model_name}/predictions")
  assert skew_gate["stop"] == 0  # reports by default
  # A stop fails the run before the model is trained, so the Pusher is never reached.
  assert "SkewGate" in spec["root"]["dag"]["tasks"]["Transform"]["dependentTasks"]
  config = configs.PipelineConfig(home=tmp_path).with_settings(["serving_skew.stop=true"])
  local = pipeline_lib.create_pipeline(
      config, pipeline_lib.PipelinePaths.local(config, tmp_path / "spans"))
  (local_gate,) = [component for component in local.components if component.id == "SkewGate"]
  assert local_gate.exec_properties["stop"] == 1
  assert local_gate.exec_properties["request_log_prefix"] == (
      f"{config.serving_root}/logs/{config.model_name}/predictions")


def test_the_cluster_s_pusher_writes_no_request_logging_unless_its_tf_serving_logs(spec, tmp_path):
  # Stock TF Serving refuses a models.config with a logging_config; the cluster's root is its.
  custom_config = json.loads(_parameters(spec, "Pusher")["custom_config"])
  assert custom_config[pusher_lib.REQUEST_LOG_SAMPLING_RATE_KEY] is None
  assert CONFIG.serving_request_log.enabled  # what a local run writes
  # For a TF Serving build that logs.
  output = tmp_path / "pipeline.json"
  result = CliRunner().invoke(cli.main, [
      "compile", "--kubeflow", str(output), "--set", "kubeflow.serving_request_log.enabled=true",
      "--set", "kubeflow.serving_request_log.sampling_rate=0.1"])
  assert result.exit_code == 0, result.output
  custom_config = json.loads(_parameters(json.loads(output.read_text())["pipelineSpec"],
                                         "Pusher")["custom_config"])
  assert custom_config[pusher_lib.REQUEST_LOG_SAMPLING_RATE_KEY] == 0.1
  result = CliRunner().invoke(cli.main, ["compile", "--kubeflow", str(output),
                                         "--set", "kubeflow.no_such_field=1"])
  assert result.exit_code == 1
  assert "KubeflowConfig has no field 'no_such_field'" in result.output
