"""Runs the pipeline on this machine: TFX's LocalDagRunner with ML Metadata in SQLite."""
import pathlib

from tfx.orchestration import metadata
from tfx.orchestration.local import local_dag_runner

from pipeline import pipeline as pipeline_lib
from pipeline.configs import PipelineConfig


def run(config: PipelineConfig, input_base: pathlib.Path) -> None:
  config.metadata_path.parent.mkdir(parents=True, exist_ok=True)
  local_dag_runner.LocalDagRunner().run(pipeline_lib.create_pipeline(
      config, pipeline_lib.PipelinePaths.local(config, input_base),
      metadata.sqlite_metadata_connection_config(str(config.metadata_path))))
