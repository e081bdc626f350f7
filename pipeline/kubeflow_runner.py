"""Compiles the pipeline for Kubeflow Pipelines (KFP v2) and schedules it there.

The same `create_pipeline` as the local runner; this file only chooses the orchestrator: TFX's
KubeflowV2DagRunner writes a KFP v2 pipeline spec (JSON) whose every step runs in the pipeline
image (./Dockerfile), on the paths of `KubeflowConfig`, with a GPU for the steps that run the
model. ML Metadata is the cluster's, so no connection config is compiled in.

  recsys compile --kubeflow pipeline.json
  recsys schedule --kubeflow pipeline.json --cron "0 3 * * *" --host https://KFP   # recurring run
"""
import dataclasses
import pathlib
from typing import Any, Dict

from kfp.pipeline_spec import pipeline_spec_pb2
from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner

from pipeline import pipeline as pipeline_lib
from pipeline.configs import PipelineConfig

_RESOURCES = pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec


def cluster_paths(config: PipelineConfig) -> pipeline_lib.PipelinePaths:
  kubeflow = config.kubeflow
  return pipeline_lib.PipelinePaths(
      input_base=kubeflow.input_base, pipeline_root=kubeflow.pipeline_root,
      serving_root=kubeflow.serving_root, schema_dir=f"{kubeflow.repo_dir}/schemas")


def compile_pipeline(config: PipelineConfig, output: pathlib.Path) -> pathlib.Path:
  """Writes the KFP v2 pipeline spec of the pipeline to `output`; returns its path."""
  kubeflow = config.kubeflow
  cluster_config = dataclasses.replace(config, beam_pipeline_args=kubeflow.beam_pipeline_args,
                                       serving_request_log=kubeflow.serving_request_log)
  pipeline = pipeline_lib.create_pipeline(cluster_config, cluster_paths(config),
                                          latest_only_resolvers=True)
  ids = {component.id for component in pipeline.components}
  unknown = sorted(set(kubeflow.gpu_components) - ids)
  if unknown:
    raise ValueError(f"gpu_components names {unknown}, which the pipeline does not have; its "
                     f"components are {sorted(ids)}")
  for component in pipeline.components:
    if component.id in kubeflow.gpu_components and kubeflow.gpu_count:
      component.with_platform_config(_RESOURCES(accelerator=_RESOURCES.AcceleratorConfig(
          type=kubeflow.gpu_type, count=kubeflow.gpu_count)))
  output = pathlib.Path(output).resolve()
  output.parent.mkdir(parents=True, exist_ok=True)
  runner = kubeflow_v2_dag_runner.KubeflowV2DagRunner(
      config=kubeflow_v2_dag_runner.KubeflowV2DagRunnerConfig(
          default_image=kubeflow.image),
      output_dir=str(output.parent), output_filename=output.name)
  runner.run(pipeline, write_out=True)
  return output


def kfp_cron(cron: str) -> str:
  """KFP's cron format for a standard five-field expression: KFP's has seconds first."""
  fields = cron.split()
  if len(fields) != 5:
    raise ValueError(f"expected a five-field cron expression (minute hour day month weekday), "
                     f"got {cron!r}")
  return " ".join(["0", *fields])


def create_recurring_run(client: Any, spec: pathlib.Path, cron: str, experiment: str,
                         job_name: str, max_concurrency: int = 1) -> Dict[str, Any]:
  """Schedules the compiled pipeline on a cluster with a `kfp.Client`; returns the KFP job.

  `max_concurrency=1` is KFP's own guarantee that two scheduled runs never overlap; `catchup`
  is off so that a paused schedule does not start every missed run when resumed.
  """
  experiment_id = client.create_experiment(experiment).experiment_id
  return client.create_recurring_run(
      experiment_id=experiment_id, job_name=job_name, cron_expression=kfp_cron(cron),
      pipeline_package_path=str(spec), max_concurrency=max_concurrency, no_catchup=True,
      enabled=True)
