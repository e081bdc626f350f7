"""What a pipeline run did, in one line for the person who started it."""
import pathlib
from typing import Set, Tuple

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


def latest_blessing(config: PipelineConfig) -> Tuple[bool, str]:
  """Whether the newest ModelBlessing in ML Metadata blessed its model, and why."""
  store = metadata_store.MetadataStore(
      tfx.orchestration.metadata.sqlite_metadata_connection_config(str(config.metadata_path)))
  blessings = store.get_artifacts_by_type(tfx.types.standard_artifacts.ModelBlessing.TYPE_NAME)
  if not blessings:
    return False, "no model was evaluated"
  newest = max(blessings, key=lambda artifact: artifact.id)
  blessed = newest.custom_properties.get(evaluator_constants.ARTIFACT_PROPERTY_BLESSED_KEY)
  message = newest.custom_properties.get(
      evaluator_constants.ARTIFACT_PROPERTY_BLESSING_MESSAGE_KEY)
  return (bool(blessed and blessed.int_value == evaluator_constants.BLESSED_VALUE),
          message.string_value if message else "no reason recorded")


def describe(config: PipelineConfig, versions_before: Set[str]) -> str:
  versions = pushed_versions(config)
  new_versions = sorted(versions - versions_before, key=int)
  blessed, reason = latest_blessing(config)
  if new_versions:
    return (f"Model blessed ({reason}); pushed version {new_versions[-1]} "
            f"to {config.model_base_path / new_versions[-1]}")
  # A blessed model with no new version means the Pusher's inputs were unchanged and TFX
  # reused its earlier execution from the cache.
  outcome = (f"Inputs unchanged since the last run, nothing new to push ({reason})" if blessed
             else f"Model not blessed ({reason})")
  if versions:
    newest = max(versions, key=int)
    return f"{outcome}; version {newest} keeps serving from {config.model_base_path / newest}"
  return f"{outcome}; no model is pushed yet"
