"""The pipeline: events → validated Examples → Transform → two-tower model → gate → push.

One definition serves every orchestrator; the runner files only choose where it runs.
"""
import pathlib

from tfx import v1 as tfx
from tfx.orchestration import pipeline as tfx_pipeline

from components import gates
from components import schema as schema_lib
from components import trainer
from pipeline.configs import PipelineConfig


def create_pipeline(config: PipelineConfig, examples_dir: pathlib.Path,
                    metadata_connection_config=None) -> tfx_pipeline.Pipeline:
  """Builds the TFX pipeline over the TFRecord events in `examples_dir` (see components/data)."""
  example_gen = tfx.components.ImportExampleGen(
      input_base=str(examples_dir),
      output_config=tfx.proto.Output(split_config=tfx.proto.SplitConfig(splits=[
          tfx.proto.SplitConfig.Split(name="train", hash_buckets=config.train_buckets),
          tfx.proto.SplitConfig.Split(name=gates.EVAL_SPLIT, hash_buckets=1),
      ])))
  statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])
  schema_gen = tfx.components.ImportSchemaGen(schema_file=str(schema_lib.SCHEMA_PATH))
  example_validator = tfx.components.ExampleValidator(
      statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"])
  data_gate = gates.DataValidationGate(anomalies=example_validator.outputs["anomalies"])

  code_config = trainer.custom_config(config.model)
  transform = tfx.components.Transform(
      examples=example_gen.outputs["examples"],
      schema=schema_gen.outputs["schema"],
      preprocessing_fn="components.preprocessing.preprocessing_fn",
      custom_config=code_config)
  # Transform reads the examples, not the gate's output, so the order is stated explicitly.
  transform.add_upstream_node(data_gate)

  model_trainer = tfx.components.Trainer(
      run_fn="components.trainer.run_fn",
      examples=transform.outputs["transformed_examples"],
      transform_graph=transform.outputs["transform_graph"],
      schema=schema_gen.outputs["schema"],
      custom_config=code_config)
  evaluator = gates.RetrievalEvaluator(
      model=model_trainer.outputs["model"],
      examples=example_gen.outputs["examples"],
      k=config.eval_k,
      recall_floor=config.recall_floor)
  pusher = tfx.components.Pusher(
      model=model_trainer.outputs["model"],
      model_blessing=evaluator.outputs["blessing"],
      push_destination=tfx.proto.PushDestination(
          filesystem=tfx.proto.PushDestination.Filesystem(
              base_directory=str(config.model_base_path))))

  return tfx_pipeline.Pipeline(
      pipeline_name=config.pipeline_name,
      pipeline_root=str(config.pipeline_root),
      components=[example_gen, statistics_gen, schema_gen, example_validator, data_gate,
                  transform, model_trainer, evaluator, pusher],
      enable_cache=config.enable_cache,
      metadata_connection_config=metadata_connection_config,
      beam_pipeline_args=list(config.beam_pipeline_args))
