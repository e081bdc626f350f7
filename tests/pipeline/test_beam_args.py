"""Beam pipeline options are checked before a run (pipeline/beam_args.py)."""
import pytest

from pipeline import beam_args
from pipeline import configs


@pytest.mark.parametrize("preset", sorted(configs.BEAM_PRESETS))
def test_every_documented_argument_set_is_valid(preset):
  assert beam_args.validate(configs.BEAM_PRESETS[preset]) == configs.BEAM_PRESETS[preset]


@pytest.mark.parametrize("args, message", [
    (["--runner=DirectRunner", "--direct_num_worker=2"], r"does not know the options \['direct_num_worker'\]"),
    (["direct_num_workers=2"], "is not an option"),
    (["--runner=FlinkRuner"], "--runner=FlinkRuner is not one of"),
    (["--runner=DataflowRunner", "--project=p", "--temp_location=gs://b/t"], "needs --region"),
    (["--runner=DataflowRunner", "--project=p", "--region=r", "--temp_location=/tmp/t"],
     "must be a gs:// path"),
    (["--runner=DataflowRunner", "--project=p", "--region=r", "--temp_location=gs://b/t"],
     "set --sdk_container_image to the pipeline image"),
    (["--runner=FlinkRunner", "--flink_master=h:8081"], "set --environment_config"),
    (["--runner=SparkRunner", "--environment_type=DOCKER"], "set --environment_config"),
])
def test_arguments_that_would_not_run_as_meant_are_refused_by_name(args, message):
  with pytest.raises(beam_args.BeamArgsError, match=message):
    beam_args.validate(args)


def test_later_arguments_override_a_preset():
  args = configs.BEAM_PRESETS["dataflow"] + ("--project=mine",)
  assert beam_args.validate(args)[-1] == "--project=mine"
