"""Beam pipeline options for the pipeline's Beam steps, checked before a run starts.

Every Beam step (StatisticsGen, SessionBuilder, Transform, ...) runs with the same
`beam_pipeline_args`. A typo there makes Beam silently discard the option and run somewhere
else, so `validate` parses them with Beam's own PipelineOptions and refuses unknown options and
runner sets that lack what the runner needs. `configs.BEAM_PRESETS` are the documented starting
points (README, "Beam on a cluster"); later arguments override a preset's (`--beam-arg`).

Why each set needs what it needs: the portable runners (Flink, Spark) run the Python steps in
SDK harness containers, which must be the pipeline image (./Dockerfile) because the steps
import this project's code; Dataflow needs a project, a region and a GCS temp location, and the
same image as its SDK container. The Dask runner (pipeline/dask_runner.py) runs the steps on a
Dask cluster whose workers have this project installed (the pipeline image); Beam's own
DaskRunner is refused because it cannot run them (see that module).
"""
from typing import Sequence, Set, Tuple

from apache_beam.options import pipeline_options

from pipeline import configs
# Registers DaskOptions (--dask_client_address, ...) with PipelineOptions, so they are known.
from pipeline import dask_runner

_PORTABLE_RUNNERS = ("FlinkRunner", "SparkRunner", "PortableRunner")
_RUNNERS = ("DirectRunner", "DataflowRunner", *_PORTABLE_RUNNERS, dask_runner.RUNNER)


class BeamArgsError(ValueError):
  """Beam arguments that would not run as meant; the message names the option."""


def validate(args: Sequence[str]) -> Tuple[str, ...]:
  """Returns the arguments if Beam understands them and the runner has what it needs."""
  args = tuple(args)
  for arg in args:
    if not arg.startswith("--"):
      raise BeamArgsError(f"Beam argument {arg!r} is not an option (--name=value)")
  options = pipeline_options.PipelineOptions(list(args))
  unknown = sorted({arg[2:].split("=", 1)[0] for arg in args} - _known_flags())
  if unknown:
    raise BeamArgsError(f"Beam does not know the options {unknown}; see "
                        "`python -m apache_beam.runners.runner --help` or the README's sets")
  runner = options.view_as(pipeline_options.StandardOptions).runner or "DirectRunner"
  if runner.rsplit(".", 1)[-1] == "DaskRunner" and runner != dask_runner.RUNNER:
    raise BeamArgsError(f"--runner={runner}: Beam's own DaskRunner cannot run these steps (no "
                        f"Read, side inputs or metrics); use --runner={dask_runner.RUNNER}")
  if runner not in _RUNNERS:
    raise BeamArgsError(f"--runner={runner} is not one of {list(_RUNNERS)}")
  if runner == "DataflowRunner":
    cloud = options.view_as(pipeline_options.GoogleCloudOptions)
    for name in ("project", "region", "temp_location"):
      if not getattr(cloud, name):
        raise BeamArgsError(f"--runner=DataflowRunner needs --{name}")
    if not cloud.temp_location.startswith("gs://"):
      raise BeamArgsError(f"--temp_location={cloud.temp_location} must be a gs:// path for "
                          "Dataflow")
    _needs_pipeline_image(runner, options.view_as(
        pipeline_options.WorkerOptions).sdk_container_image, "--sdk_container_image")
  if runner in _PORTABLE_RUNNERS:
    portable = options.view_as(pipeline_options.PortableOptions)
    if (portable.environment_type or "DOCKER").upper() == "DOCKER":
      _needs_pipeline_image(runner, portable.environment_config, "--environment_config")
  return args


def _known_flags() -> Set[str]:
  """Every option name the registered PipelineOptions define, as PipelineOptions collects them
  (by flag, not destination: --dask_client_address is stored as `address`; and not abbreviated,
  which argparse would otherwise accept)."""
  parser = pipeline_options._BeamArgumentParser()
  for options_class in pipeline_options.PipelineOptions.__subclasses__():
    options_class._add_argparse_args(parser)
  return {flag[2:] for action in parser._actions
          for flag in action.option_strings if flag.startswith("--")}


def _needs_pipeline_image(runner: str, image: str, option: str) -> None:
  if not image:
    raise BeamArgsError(f"--runner={runner} runs the Python steps in containers: set {option} "
                        f"to the pipeline image (e.g. {configs.PIPELINE_IMAGE}), whose code they "
                        "import")
