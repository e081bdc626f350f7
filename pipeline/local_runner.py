"""Runs the pipeline on this machine: TFX's LocalDagRunner with ML Metadata in SQLite."""
import pathlib

from tfx import v1 as tfx

from pipeline import pipeline as pipeline_lib
from pipeline.configs import PipelineConfig


def run(config: PipelineConfig, input_base: pathlib.Path) -> None:
  config.metadata_path.parent.mkdir(parents=True, exist_ok=True)
  tfx.orchestration.LocalDagRunner().run(pipeline_lib.create_pipeline(
      config, pipeline_lib.PipelinePaths.local(config, input_base),
      tfx.orchestration.metadata.sqlite_metadata_connection_config(str(config.metadata_path))))
