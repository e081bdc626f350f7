"""Every setting of the pipeline, in one place, with defaults that run on one small machine.

The command line overrides fields of `PipelineConfig`; nothing else holds configuration.
"""
import dataclasses
import os
import pathlib
from typing import Tuple

from components.model import ModelConfig
from components.sessions import SessionConfig
from serving import signature

# Where runs keep their state unless told otherwise: $RECSYS_HOME, else ./.recsys.
DEFAULT_HOME = pathlib.Path(os.environ.get("RECSYS_HOME", ".recsys")).resolve()


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  pipeline_name: str = "recsys"
  home: pathlib.Path = DEFAULT_HOME
  model_name: str = signature.DEFAULT_MODEL_NAME
  model: ModelConfig = ModelConfig()
  # Session cuts, history length and the time-based train/eval split (components/sessions.py).
  sessions: SessionConfig = SessionConfig()
  # Let a run whose data drifted past the schema's thresholds go on; recorded in ML Metadata.
  allow_drift: bool = False
  # The model gate: the model is pushed only if its recall@eval_k on held-out events reaches
  # recall_floor. Random ranking of the default catalog of 500 items scores 0.02.
  eval_k: int = 10
  recall_floor: float = 0.05
  enable_cache: bool = True
  # Beam runs in-process by default; `recsys run --beam-arg` passes others, e.g. multi-process
  # or Flink/Spark/Dataflow (README).
  beam_pipeline_args: Tuple[str, ...] = ("--direct_running_mode=in_memory",
                                         "--direct_num_workers=1")

  @property
  def pipeline_root(self) -> pathlib.Path:
    return self.home / "pipelines" / self.pipeline_name

  @property
  def metadata_path(self) -> pathlib.Path:
    return self.home / "metadata" / f"{self.pipeline_name}.sqlite"

  @property
  def serving_root(self) -> pathlib.Path:
    """TF Serving's model base path: versions go to `<serving_root>/<model_name>/<version>/`."""
    return self.home / "serving"

  @property
  def model_base_path(self) -> pathlib.Path:
    return self.serving_root / self.model_name

  @property
  def data_dir(self) -> pathlib.Path:
    return self.home / "data"

  @property
  def input_base(self) -> pathlib.Path:
    """Where ingested spans live (components/data/spans.py): one stream of data per pipeline."""
    return self.data_dir / "spans"

  def with_overrides(self, **overrides) -> "PipelineConfig":
    """A copy with the given fields replaced; `None` values keep the current setting."""
    return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})
