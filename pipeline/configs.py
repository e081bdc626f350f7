"""Every setting of the pipeline, in one place, with defaults that run on one small machine.

The command line overrides fields of `PipelineConfig`; nothing else holds configuration. Plain
values and frozen dataclasses only, as in TFX's templates: the module code Transform and the
Trainer run is named by string, and reading this module loads no TensorFlow (`recsys --help`
answers at once).
"""
import dataclasses
import os
import pathlib
from typing import Dict, List, Sequence, Tuple

from components.data.config import DataMinimums
from components.data.config import SessionConfig
from components.evaluation.config import TradeoffConfig
from components.models.config import ModelConfig
import schemas
from schemas import contract
from serving.config import DEFAULT_VERSIONS_KEPT
from serving.config import InfraValidationConfig
from serving.config import RequestLogConfig

# The module code TFX runs in Transform and the Trainer, by name.
PREPROCESSING_FN = "components.models.preprocessing.preprocessing_fn"
TRAINER_RUN_FN = "components.models.trainer.run_fn"

# The pipeline image built from ./Dockerfile: Kubeflow's steps and Beam's cluster workers run it.
PIPELINE_IMAGE = "recsys-pipeline:latest"
# Documented Beam argument sets (`recsys run --beam-preset`); pipeline/beam_args.py validates
# them like any other, and later --beam-arg options override a preset's.
BEAM_PRESETS: Dict[str, Tuple[str, ...]] = {
    # Local, one process per worker: what a bigger single machine uses.
    "direct-multiprocess": ("--runner=DirectRunner", "--direct_running_mode=multi_processing",
                            "--direct_num_workers=2"),
    "flink": ("--runner=FlinkRunner", "--flink_master=localhost:8081", "--parallelism=4",
              "--environment_type=DOCKER", f"--environment_config={PIPELINE_IMAGE}"),
    "spark": ("--runner=SparkRunner", "--spark_master_url=spark://localhost:7077",
              "--environment_type=DOCKER", f"--environment_config={PIPELINE_IMAGE}"),
    "dataflow": ("--runner=DataflowRunner", "--project=my-gcp-project", "--region=us-central1",
                 "--temp_location=gs://recsys-pipelines/tmp",
                 f"--sdk_container_image={PIPELINE_IMAGE}", "--experiments=use_runner_v2"),
}

# Where runs keep their state unless told otherwise: $RECSYS_HOME, else ./.recsys.
DEFAULT_HOME = pathlib.Path(os.environ.get("RECSYS_HOME", ".recsys")).resolve()


@dataclasses.dataclass(frozen=True)
class KubeflowConfig:
  """Where and how the pipeline runs on Kubeflow Pipelines (pipeline/kubeflow_runner.py).

  The defaults compile; running needs the project's own registry and bucket (README).
  """
  # The pipeline image built from ./Dockerfile, in a registry the cluster pulls from.
  image: str = PIPELINE_IMAGE
  # Object-store locations every pod can read and write.
  pipeline_root: str = "gs://recsys-pipelines/pipelines"
  input_base: str = "gs://recsys-pipelines/data/spans"
  serving_root: str = "gs://recsys-pipelines/serving"
  # The repository inside the image (the Dockerfile's WORKDIR): the curated schemas live there.
  repo_dir: str = "/opt/recsys"
  # The steps that run the model get a GPU: training, and infra validation, which measures the
  # latency budget on the hardware that serves.
  gpu_components: Tuple[str, ...] = ("Trainer", "ServingInfraValidator")
  gpu_type: str = "NVIDIA_TESLA_T4"
  gpu_count: int = 1
  # Beam inside the pods: a process per core of the pod; a Flink/Spark/Dataflow set replaces it
  # (pipeline/beam_args.py).
  beam_pipeline_args: Tuple[str, ...] = ("--direct_running_mode=multi_processing",
                                         "--direct_num_workers=0")


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  pipeline_name: str = "recsys"
  home: pathlib.Path = DEFAULT_HOME
  model_name: str = contract.DEFAULT_MODEL_NAME
  model: ModelConfig = ModelConfig()
  # Session cuts, history length and the time-based train/eval split (components/data/sessions.py).
  sessions: SessionConfig = SessionConfig()
  # The least data a run trains on; less is refused at ingestion (components/data/config.py).
  minimums: DataMinimums = DataMinimums()
  # Let a run whose data drifted past the schema's thresholds go on; recorded in ML Metadata.
  allow_drift: bool = False
  # The release gate's rules (components/evaluation/release_gate.py): floors, allowed regressions
  # against the latest blessed model, the Pareto set.
  gate_config: pathlib.Path = schemas.DEFAULT_GATE_CONFIG
  # Users of the on-policy rollouts of candidate and baseline in the simulator's world, each over
  # a few sessions, for the built-in dataset only (`recsys run` sets 0 for other data, whose
  # users the simulator does not know).
  simulator_users: int = 1000
  # The trade-off search of `recsys tune` over a pushed model's combiner weights
  # (components/evaluation/tradeoffs.py).
  tradeoffs: TradeoffConfig = TradeoffConfig()
  # Whether the evaluator also searches candidate's and baseline's trade-offs for the gate's
  # hypervolume rule: two searches (about a minute each on the built-in data) per run, so off.
  search_tradeoffs: bool = False
  # Earlier blessed models the evaluation report plots next to the candidate.
  report_past_models: int = 10
  # Infra validation (serving/infra_validation.py): the p99 latency a single-user request may
  # take in the isolated serving process before the model is refused as unservable.
  serving_latency_budget_ms: float = InfraValidationConfig.latency_budget_ms
  # Versions kept in the serving root after a push (serving/push.py): the new one and those
  # `recsys rollback` can return to.
  serving_versions_kept: int = DEFAULT_VERSIONS_KEPT
  # Seconds between serving a new version beside the stable one and labelling it stable. The
  # local server needs none; stock TF Serving only moves a label to a version it has loaded, so
  # when it reads the serving root set this above its config poll (30 s in
  # serving/deploy/Dockerfile) (serving/push.py, `_move_label`).
  serving_label_delay_seconds: float = 0.0
  # Request logging the push writes into models.config (serving/config.py, README "Request
  # logging"), e.g. `--set serving_request_log.sampling_rate=0.1`; `.enabled=false` when stock
  # TF Serving reads the serving root, which refuses a config that logs.
  serving_request_log: RequestLogConfig = RequestLogConfig()
  enable_cache: bool = True
  kubeflow: KubeflowConfig = KubeflowConfig()
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

  def with_settings(self, settings: Sequence[str]) -> "PipelineConfig":
    """A copy with each "dotted.field=value" setting applied (`recsys run --set`), e.g.
    "model.sequence_encoder=gru" or "sessions.eval_fraction=0.2"; the value is read as the
    field's current value's type. A ValueError names the setting that does not fit."""
    config = self
    for setting in settings:
      path, separator, text = setting.partition("=")
      if not separator:
        raise ValueError(f"--set {setting!r}: expected FIELD=VALUE, e.g. model.epochs=10")
      config = _replace_field(config, path.split("."), text, setting)
    return config


def reward_settings(weights: str) -> List[str]:
  """`recsys run --reward`'s "click=1,revenue=0.01" as the settings of `with_settings`."""
  settings = []
  for term in filter(None, (part.strip() for part in weights.split(","))):
    name, separator, value = term.partition("=")
    if not separator:
      raise ValueError(f"--reward {term!r}: expected TERM=WEIGHT, e.g. retention=1")
    settings.append(f"model.ranker.reward.{name.strip()}={value.strip()}")
  return settings


def _replace_field(node, names: Sequence[str], text: str, setting: str):
  """`node` with the field at the path `names` set to `text` read as that field's type."""
  fields = {field.name for field in dataclasses.fields(node)}
  if names[0] not in fields:
    raise ValueError(f"--set {setting!r}: {type(node).__name__} has no field {names[0]!r}; it "
                     f"has {sorted(fields)}")
  current = getattr(node, names[0])
  if len(names) > 1:
    if not dataclasses.is_dataclass(current):
      raise ValueError(f"--set {setting!r}: {names[0]!r} is a value, not a group of fields")
    value = _replace_field(current, names[1:], text, setting)
  else:
    value = _parse_value(current, text, setting)
  try:
    return dataclasses.replace(node, **{names[0]: value})
  except ValueError as error:
    raise ValueError(f"--set {setting!r}: {error}") from error


def _parse_value(current, text: str, setting: str):
  try:
    if dataclasses.is_dataclass(current):
      raise ValueError("a group of fields; set one of them")
    if isinstance(current, bool):
      if text.lower() not in ("true", "false"):
        raise ValueError("expected true or false")
      return text.lower() == "true"
    if isinstance(current, tuple):
      kinds = {type(item) for item in current} or {str}
      kind = kinds.pop() if len(kinds) == 1 else str
      return tuple(kind(item) for item in text.split(",") if item)
    if isinstance(current, pathlib.Path):
      return pathlib.Path(text)
    return type(current)(text)
  except ValueError as error:
    raise ValueError(f"--set {setting!r}: {text!r} does not fit the field "
                     f"({type(current).__name__}): {error}") from error
