"""What a pipeline run did, in one line for the person who started it."""
import pathlib
from typing import Set

from ml_metadata import metadata_store
from tfx import v1 as tfx
from tfx.components.evaluator import constants as evaluator_constants

from pipeline.configs import PipelineConfig


def pushed_versions(config: PipelineConfig) -> Set[str]:
  """Complete versions under the model's serving path (the Pusher writes saved_model.pb last)."""
  base = pathlib.Path(config.model_base_path)
  if not base.is_dir():
    return set()
  return {path.parent.name for path in base.glob("*/saved_model.pb")
          if path.parent.name.isdigit()}


def latest_blessing_message(config: PipelineConfig) -> str:
  store = metadata_store.MetadataStore(
      tfx.orchestration.metadata.sqlite_metadata_connection_config(str(config.metadata_path)))
  blessings = store.get_artifacts_by_type(tfx.types.standard_artifacts.ModelBlessing.TYPE_NAME)
  if not blessings:
    return "no model was evaluated"
  newest = max(blessings, key=lambda artifact: artifact.id)
  message = newest.custom_properties.get(
      evaluator_constants.ARTIFACT_PROPERTY_BLESSING_MESSAGE_KEY)
  return message.string_value if message else "no reason recorded"


def describe(config: PipelineConfig, versions_before: Set[str]) -> str:
  versions = pushed_versions(config)
  new_versions = sorted(versions - versions_before, key=int)
  if new_versions:
    return (f"Model blessed ({latest_blessing_message(config)}); pushed version {new_versions[-1]} "
            f"to {config.model_base_path / new_versions[-1]}")
  if versions:
    newest = max(versions, key=int)
    return (f"No new version pushed ({latest_blessing_message(config)}); "
            f"version {newest} keeps serving from {config.model_base_path / newest}")
  return f"No model pushed: {latest_blessing_message(config)}"
