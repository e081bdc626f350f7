"""The Beam steps on a Dask cluster of worker processes (pipeline/dask_runner.py)."""
import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms import window
import dask
from dask import distributed
import pytest

from components.data.config import GLOBAL_TIME_SPLIT
from components.data.config import SessionConfig
from pipeline import beam_args
from pipeline import configs
from pipeline import dask_runner
from tests.data import test_sessions
from tests.pipeline import dask_import_probe

_DIRECT = ["--runner=DirectRunner", "--direct_running_mode=in_memory"]


@pytest.fixture(scope="module")
def cluster():
  """Two worker processes, one thread each, all on loopback."""
  with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                host="127.0.0.1", dashboard_address="127.0.0.1:0") as local_cluster:
    yield local_cluster


@pytest.mark.parametrize("config", [SessionConfig(),
                                    SessionConfig(eval_split=GLOBAL_TIME_SPLIT)],
                         ids=["per-user-split", "global-time-split"])
def test_session_building_on_dask_gives_the_direct_runners_records_and_counts(
    tmp_path, cluster, config):
  # The global split's cutoff is a combiner (ApproximateQuantiles) read as a side input; both
  # splits read and write TFRecords and partition by a tagged-output ParDo.
  events = test_sessions._timelines(n_users=12, n_events=20)
  on_dask = test_sessions._run(tmp_path, events, [
      f"--runner={dask_runner.RUNNER}", f"--dask_client_address={cluster.scheduler_address}"],
      config)
  direct = test_sessions._run(tmp_path, events, _DIRECT, config)
  assert on_dask == direct
  assert direct["counts"]["duplicate_events_dropped"] > 0


def test_combiners_and_flattens_of_one_or_two_collections_run_on_the_cluster(tmp_path, cluster):
  # Beam's own DaskRunner fails on all three: a combiner's arguments stay ArgumentPlaceholders,
  # and its Flatten iterates over a lone PCollection.
  pipeline = beam.Pipeline(runner=dask_runner.DaskRunner(), options=PipelineOptions(
      [f"--dask_client_address={cluster.scheduler_address}"]))
  words = pipeline | "Words" >> beam.Create(["a", "b", "a", "c", "a", "b"])
  alone = (words,) | "FlattenOne" >> beam.Flatten()
  both = (words, pipeline | "More" >> beam.Create(["c", "d"])) | "FlattenTwo" >> beam.Flatten()
  for name, pcoll in (("alone", alone), ("both", both)):
    _ = (pcoll | f"Count{name}" >> beam.combiners.Count.PerElement()
         | f"Format{name}" >> beam.MapTuple(lambda word, count: f"{word} {count}")
         | f"Write{name}" >> beam.io.WriteToText(str(tmp_path / name)))
  pipeline.run().wait_until_finish()

  def written(name):
    return sorted(line for path in tmp_path.glob(f"{name}-*")
                  for line in path.read_text().splitlines())

  assert written("alone") == ["a 3", "b 2", "c 1"]
  assert written("both") == ["a 3", "b 2", "c 2", "d 1"]


def test_a_workers_task_thread_finds_the_dofns_module_already_imported(tmp_path, cluster):
  # Imported by the task thread, tensorflow_transform raced the communication thread's unpickling
  # of a shuffled element and was seen half-initialised.
  pipeline = beam.Pipeline(runner=dask_runner.DaskRunner(), options=PipelineOptions(
      [f"--dask_client_address={cluster.scheduler_address}"]))
  _ = (pipeline | beam.Create([0, 1]) | beam.Map(dask_import_probe.imported_in)
       | beam.io.WriteToText(str(tmp_path / "threads")))
  pipeline.run().wait_until_finish()
  threads = {line for path in tmp_path.glob("threads-*") for line in path.read_text().split()}
  assert threads
  assert not any(thread.startswith("Dask-Default-Threads") for thread in threads)


def test_a_group_by_key_shuffles_through_tasks_not_a_directory_the_workers_share():
  # dask's disk shuffle, its default when no Client exists yet, keeps the groups in one worker's
  # temporary directory, and lost them when that directory went with a dropped replica of its
  # handle; nothing in the graph may create its partd store.
  pipeline = beam.Pipeline(runner=dask_runner.DaskRunner())
  _ = (pipeline | beam.Create([("a", 1), ("b", 2), ("a", 3)]) | beam.GroupByKey()
       | beam.Map(str))
  names = {dask.utils.key_split(key) for bag in dask_runner.translate(pipeline).sinks()
           for key in bag.__dask_graph__()}
  assert "shuffle-join" in names
  assert "partd" not in names


def test_the_preset_names_this_runner_and_is_valid():
  preset = configs.BEAM_PRESETS["dask"]
  assert f"--runner={dask_runner.RUNNER}" in preset
  assert beam_args.validate(preset) == preset


@pytest.mark.parametrize("runner", ["DaskRunner",
                                    "apache_beam.runners.dask.dask_runner.DaskRunner"])
def test_beams_own_dask_runner_is_refused_with_the_name_of_this_one(runner):
  with pytest.raises(beam_args.BeamArgsError, match=f"use --runner={dask_runner.RUNNER}"):
    beam_args.validate([f"--runner={runner}"])


def test_only_dask_options_reach_the_client():
  options = PipelineOptions([f"--runner={dask_runner.RUNNER}", "--direct_num_workers=2",
                             "--dask_client_address=tcp://127.0.0.1:8786",
                             "--dask_connection_limit=8"])
  assert dask_runner.client_options(options) == {"address": "tcp://127.0.0.1:8786",
                                                 "connection_limit": 8}


def test_a_windowed_pipeline_is_refused_by_step_before_anything_runs():
  # No scheduler at this address: the refusal comes before the Client connects.
  pipeline = beam.Pipeline(runner=dask_runner.DaskRunner(), options=PipelineOptions(
      ["--dask_client_address=tcp://127.0.0.1:1", "--dask_connection_timeout=1"]))
  _ = (pipeline | beam.Create([1, 2]) | "Hourly" >> beam.WindowInto(window.FixedWindows(3600))
       | beam.Map(str))
  with pytest.raises(NotImplementedError, match="Hourly: the Dask runner runs the global window"):
    pipeline.run()


def test_a_failing_step_fails_the_run_with_its_error(cluster):
  pipeline = beam.Pipeline(runner=dask_runner.DaskRunner(), options=PipelineOptions(
      [f"--dask_client_address={cluster.scheduler_address}"]))
  _ = pipeline | beam.Create([1, 0]) | "Invert" >> beam.Map(lambda x: 1 / x)
  result = pipeline.run()
  with pytest.raises(ZeroDivisionError):
    result.wait_until_finish()
  assert result.state == beam.runners.runner.PipelineState.FAILED
