"""The whole product on tiny data: CLI → TFX pipeline → push → gRPC server → client.

One module-scoped home is shared so the pipeline runs once for the success path; the tests after
it run in file order, each ingesting a new span into the same home: the failure paths check that
bad or drifted input never reaches the Trainer and the served version keeps serving.
"""
import importlib.util
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

from click.testing import CliRunner
from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2
import numpy as np
import pandas as pd
import pytest
from tfx.orchestration import metadata
from tfx.types import standard_artifacts

from components import artifact_properties
from components.data import ingest
from components.data import sessions
from components.data import spans
from components.models import queries
from components.models import training
from components.models import warmup
from components.models.config import OBJECTIVES
from components.models.config import RewardConfig
from components.simulation import generator
from pipeline import cli
import schemas
from schemas import contract
from serving import client as client_lib
from serving import model_config
from serving import server as server_lib

pytestmark = pytest.mark.e2e
# One round of the feedback loop is bench/bench_loop.py's, run here on the fixture's model.
_BENCH_LOOP = pathlib.Path(__file__).resolve().parents[2] / "bench" / "bench_loop.py"
_loop_spec = importlib.util.spec_from_file_location("bench_loop", _BENCH_LOOP)
bench_loop = importlib.util.module_from_spec(_loop_spec)
_loop_spec.loader.exec_module(bench_loop)
REPORT_ONLY = ("--gate-config", str(schemas.REPORT_ONLY_GATE_CONFIG))


def _run(*args):
  return CliRunner().invoke(cli.main, ["run", *args], catch_exceptions=False)


def _versions(home: pathlib.Path):
  return sorted(path.parent.name for path in home.glob("serving/recommender/*/saved_model.pb"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  home = tmp_path_factory.mktemp("home")
  dataset = generator.generate_dataset(
      tmp_path_factory.mktemp("raw"), seed=7, n_users=generator.users_for(20_000), n_items=60,
      n_events=20_000)
  # Default training (early stopping ends it in seconds on these data): the default gate wants a
  # margin over popularity, which two epochs of Adam do not always reach.
  args = ["--interactions", str(dataset.interactions), "--items", str(dataset.items),
          "--home", str(home)]
  result = _run(*args)
  assert result.exit_code == 0, result.output
  return home, dataset, args, result.output


def test_run_pushes_a_versioned_saved_model(trained):
  home, _, _, output = trained
  versions = _versions(home)
  assert len(versions) == 1 and versions[0].isdigit()
  assert f"pushed version {versions[0]}" in output
  # Nothing was served before the first push, so there is no request log to judge.
  assert (f"Serving skew: skipped: no request log under {home}/serving/logs/recommender/"
          "predictions-*.tfrecord") in output
  # Labelled stable for TF Serving, with the warmup requests infra validation sent.
  assert model_config.read(home / "serving", "recommender") == (
      [int(versions[0])], {model_config.STABLE: int(versions[0])})
  assert len(warmup.read(home / "serving" / "recommender" / versions[0])) == 3


def test_pushed_model_answers_over_grpc(trained):
  home, dataset, _, _ = trained
  catalog = set(pd.read_csv(dataset.items, dtype=str)["item_id"])
  user = pd.read_csv(dataset.interactions, dtype=str)["user_id"].iloc[-1]
  server = server_lib.build_server(home / "serving", port=0)
  server.start()
  try:
    with client_lib.RecommenderClient(f"127.0.0.1:{server.port}", timeout=30) as client:
      recommendations = client.recommend(user, history=[], k=10)
      # A user the model never saw, with no history: the cold-start path still answers.
      cold_start = client.recommend("never-seen-user", history=[], k=10)
      # A request without a user id and a short history (an app's first clicks of a new
      # user): served from the unknown user's row and that history, like any unknown id.
      first_clicks = sorted(catalog)[:2]
      anonymous = client.recommend("", history=first_clicks, k=10, timestamp=0)
      unknown = client.recommend("another-new-user", history=first_clicks, k=10, timestamp=0)
  finally:
    server.stop(grace=None)
  assert len(recommendations) == 10 and len(cold_start) == 10
  assert {r.item_id for r in recommendations + cold_start + anonymous} <= catalog
  assert [r.item_id for r in anonymous] == [r.item_id for r in unknown]
  assert [r.item_id for r in anonymous] != [r.item_id for r in cold_start]
  scores = [r.score for r in recommendations]
  assert scores == sorted(scores, reverse=True)


def test_batch_recommendations_from_the_pushed_model(trained, tmp_path):
  home, dataset, _, _ = trained
  (version,) = _versions(home)
  output = tmp_path / "recs.csv"
  result = CliRunner().invoke(cli.main, [
      "recommend", "--model", str(home / "serving" / "recommender" / version), "--users", "all",
      "--exclude-seen", str(dataset.interactions), "--k", "10", "--output", str(output)])
  assert result.exit_code == 0, result.output
  recs = pd.read_csv(output, dtype=str)
  events = pd.read_csv(dataset.interactions, dtype=str)
  engaged = events[events["event"] != "impression"]
  assert set(recs["user_id"]) == set(engaged["user_id"])
  assert (recs.groupby("user_id").size() == 10).all()
  seen = set(zip(engaged["user_id"], engaged["item_id"]))
  assert not seen & set(zip(recs["user_id"], recs["item_id"]))


def test_lineage_names_everything_the_pushed_version_came_from(trained):
  home = trained[0]
  (version,) = _versions(home)
  result = CliRunner().invoke(cli.main, ["lineage", "--home", str(home)])  # the stable version
  assert result.exit_code == 0, result.output
  assert result.output.startswith(f"Version {version}\n")
  for artifact, component in [("PushedModel", "Pusher"), ("Model", "Trainer"),
                              ("TransformGraph", "Transform"), ("Schema", "TransitionsSchemaGen"),
                              ("Examples", "SessionBuilder"), ("Examples", "ImportExampleGen"),
                              ("ExampleStatistics", "StatisticsGen"),
                              ("ModelEvaluation", "ModelEvaluator"),
                              ("ModelBlessing", "ModelEvaluator"),
                              ("InfraBlessing", "ServingInfraValidator")]:
    assert re.search(rf"^  {artifact} +{component} +run ", result.output, re.M), artifact
  assert "span: 1" in result.output
  # The reward the head was trained for, recorded in ML Metadata with the model.
  assert "reward: click 1, purchase 1, revenue 0.01, novelty 0, retention 0" in result.output
  assert re.search(r"metrics: recall@10 0\.\d{4}", result.output)
  assert "verdict: blessed" in result.output and "verdict: loaded, answered" in result.output
  unknown = CliRunner().invoke(cli.main, ["lineage", "--home", str(home), "--version", "7"])
  assert unknown.exit_code != 0 and "no run of this pipeline pushed version 7" in unknown.output


def test_the_pipeline_trained_ranking_head_has_learnt_and_reranks(trained):
  """The untrained head ranks exactly as retrieval does: a pipeline that skipped its training
  would pass every other test."""
  home, dataset, _, _ = trained
  (report,) = home.glob(f"pipelines/*/Trainer/model_run/*/{training.HEAD_EVALUATION_FILE}")
  evaluation = json.loads(report.read_text())["validation"]
  # On the transitions of training users it was not fitted to, it predicts clicks and fits its
  # Bellman targets better than an untrained head. (On the eval split, users' last sessions,
  # whose futures are shorter than any it was trained on, it overvalues them: README.)
  head, untrained = evaluation["trained"], evaluation["untrained"]
  assert head["clicked_transitions"] > 0
  assert head["click_loss"] < 0.8 * untrained["click_loss"]
  assert head["td_error"] < untrained["td_error"]
  (version,) = _versions(home)
  model_dir = home / "serving" / "recommender" / version
  users = sorted(pd.read_csv(dataset.interactions)["user_id"].unique())[:50]
  served, retrieved = (queries.RankingSignature(model_dir, name)(users, [[]] * len(users))
                       for name in (contract.SERVING_SIGNATURE, contract.RETRIEVE_SIGNATURE))
  top = slice(0, 10)
  differ = [list(a[top]) != list(b[top])
            for a, b in zip(served[contract.ITEM_IDS], retrieved[contract.ITEM_IDS])]
  assert sum(differ) > len(users) / 2


def test_tune_searches_the_pushed_model_s_combiner_weights(trained):
  home, dataset, _, _ = trained
  (version,) = _versions(home)
  result = CliRunner().invoke(cli.main, ["tune", "--home", str(home), "--trials", "6",
                                         "--set", "tradeoffs.population=3"],
                              catch_exceptions=False)
  assert result.exit_code == 0, result.output
  assert "Pareto front" in result.output and "recsys run --reward click=" in result.output
  record = json.loads((home / "tradeoffs" / f"{version}.json").read_text())
  # Not the simulator's data: no rollouts, the offline metrics only.
  assert record["metrics"] == ["ndcg@10", "coverage@10", "category_diversity@10"]
  assert len(record["trials"]) == 6 and record["chosen"] in record["front"]
  # The first weighting tried is the model's own (RewardConfig's), up to a common factor.
  handset = record["trials"][0]["weights"]
  own = dict(zip(OBJECTIVES, RewardConfig().weights()))
  for name in OBJECTIVES:
    assert handset[name] / handset["click"] == pytest.approx(own[name] / own["click"], rel=1e-5)
  # The weights the search assigns are live in the exported graph: serving one agent alone
  # ranks differently.
  model = queries.RankingSignature(home / "serving" / "recommender" / version)
  users = sorted(pd.read_csv(dataset.interactions)["user_id"].unique())[:50]
  served = model(users, [[]] * len(users))[contract.ITEM_IDS]
  model.saved_model.q_network.objective_weights.assign([0.0, 0.0, 1.0, 0.0, 0.0])
  revenue_only = model(users, [[]] * len(users))[contract.ITEM_IDS]
  assert (served[:, :10] != revenue_only[:, :10]).any(axis=1).mean() > 0.5


def test_second_run_keeps_the_served_version(trained):
  home, _, args, _ = trained
  before = _versions(home)
  result = _run(*args)
  assert result.exit_code == 0, result.output
  assert "as span 1 " in result.output  # the same data is the same span
  assert "Inputs unchanged since the last run" in result.output
  assert _versions(home) == before


def _execution_states(home, node):
  store = metadata_store.MetadataStore(metadata.sqlite_metadata_connection_config(
      str(home / "metadata" / "recsys.sqlite")))
  context = store.get_context_by_type_and_name("node", f"recsys.{node}")
  return [metadata_store_pb2.Execution.State.Name(execution.last_known_state)
          for execution in sorted(store.get_executions_by_context(context.id),
                                  key=lambda execution: execution.id)]


def test_a_killed_run_completes_when_run_again(trained, tmp_path):
  _, dataset, args, _ = trained
  home = tmp_path / "home"
  # Resumption, not the gate, is under test here: a retraining the gate refuses (the head's
  # off-policy revenue on these small logs varies from training to training by more than the
  # rerank allowance) would not say whether the run completed.
  run_args = [*args[:4], "--home", str(home), *args[6:], *REPORT_ONLY]
  process = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", *run_args],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
  try:
    # Killed mid-way: once Transform has started, after ingestion, validation and sessions.
    deadline = time.monotonic() + 900
    while not (home / "pipelines" / "recsys" / "Transform").exists():
      assert process.poll() is None, "the run ended before it could be killed"
      assert time.monotonic() < deadline, "Transform never started"
      time.sleep(0.5)
  finally:
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
  assert _versions(home) == []

  result = _run(*run_args)  # no clean-up in between
  assert result.exit_code == 0, result.output
  assert "pushed version" in result.output
  # What the killed run finished is reused, not redone.
  assert _execution_states(home, "SessionBuilder") == ["COMPLETE", "CACHED"]


def _trained_models(home):
  return list((home / "pipelines" / "recsys" / "Trainer" / "model").glob("*"))


def test_schema_violations_stop_before_training_and_keep_serving(trained, tmp_path):
  home, dataset, args, _ = trained
  before = _versions(home)
  events = pd.read_csv(dataset.interactions, dtype=str, keep_default_na=False)
  # Some rows get an event type the schema does not know, a negative price, a date in 2300.
  events.loc[::9, "event"] = "teleport"
  events.loc[5, "price"] = "-9.5"
  events.loc[7, "timestamp"] = "10413792000"
  bad = tmp_path / "bad_events.csv"
  events.to_csv(bad, index=False)
  result = _run("--interactions", str(bad), *args[2:])
  assert result.exit_code != 0
  assert "feature 'event'" in result.output and "teleport" in result.output
  assert "feature 'price'" in result.output and "-9.5" in result.output
  assert "feature 'timestamp'" in result.output
  assert _versions(home) == before
  assert len(_trained_models(home)) == 1  # only the good run's model


def test_a_refused_model_is_not_pushed_and_the_report_says_why(trained, tmp_path):
  home, dataset, args, _ = trained
  before = _versions(home)
  # New data (a new span) and a gate no model can pass.
  fewer = tmp_path / "fewer.csv"
  events = pd.read_csv(dataset.interactions, dtype=str, keep_default_na=False)
  events.iloc[:-200].to_csv(fewer, index=False)
  strict = tmp_path / "strict.yaml"
  strict.write_text("metrics:\n  recall@10: {floor: 0.999}\n  coverage@10: {floor: 0.01}\n"
                    "hypervolume: {max_shrink: {relative: 0.5}}\n")
  # With the trade-off search on, candidate and baseline fronts are compared (rule 6).
  result = _run("--interactions", str(fewer), *args[2:], "--gate-config", str(strict),
                "--set", "search_tradeoffs=true", "--set", "tradeoffs.trials=3",
                "--set", "tradeoffs.population=2")
  assert result.exit_code == 0, result.output
  assert re.search(r"Model not blessed \(refused: recall@10 = 0\.\d+ misses its floor 0\.9990 "
                   r"by 0\.\d+", result.output), result.output
  assert _versions(home) == before
  (record,) = [json.loads(path.read_text()) for path in
               home.glob("pipelines/*/ModelEvaluator/evaluation/*/evaluation.json")
               if json.loads(path.read_text())["tradeoffs"]]
  searches = record["tradeoffs"]
  assert len(searches["candidate"]["trials"]) == len(searches["baseline"]["trials"]) == 3
  volumes = searches["hypervolumes"]
  assert volumes["baseline"] > 0 and volumes["candidate"] >= 0
  refused_by_volume = any(failure["rule"] == "hypervolume"
                          for failure in record["verdict"]["failures"])
  assert refused_by_volume == (volumes["candidate"] < 0.5 * volumes["baseline"])

  report = CliRunner().invoke(cli.main, ["report", "--home", str(home)],
                              catch_exceptions=False)
  assert report.exit_code == 0, report.output
  reason, path = report.output.strip().splitlines()[-2:]
  assert "refused: recall@10" in reason
  page = pathlib.Path(path).read_text()
  assert "misses its floor 0.9990" in page and page.count("data:image/png;base64,") >= 2
  listed = CliRunner().invoke(cli.main, ["report", "--list", "--home", str(home)])
  assert listed.exit_code == 0 and len(listed.output.strip().splitlines()) >= 2
  assert listed.output.strip().splitlines()[0].split()[1] == "blessed:"


def _latest_drift_gate(home):
  """The newest DriftGate execution's allow_drift and its output's custom properties."""
  store = metadata_store.MetadataStore(metadata.sqlite_metadata_connection_config(
      str(home / "metadata" / "recsys.sqlite")))
  execution = max((e for e in store.get_executions()
                   if store.get_execution_types_by_id([e.type_id])[0].name.endswith("DriftGate")),
                  key=lambda e: e.id)
  events = store.get_events_by_execution_ids([execution.id])
  outputs = store.get_artifacts_by_id(
      [e.artifact_id for e in events if e.type == metadata_store_pb2.Event.OUTPUT])
  (drift,) = outputs
  return (execution.properties["allow_drift"].int_value or
          execution.custom_properties["allow_drift"].int_value,
          {key: value.int_value for key, value in drift.custom_properties.items()})


def test_drift_stops_the_run_unless_overridden_and_the_override_is_recorded(trained, tmp_path):
  home, dataset, good_args, _ = trained
  before, models_before = _versions(home), len(_trained_models(home))
  # A feed that switched to cents: every price, in the log and in the items file, x100.
  cents, cents_items = tmp_path / "cents.csv", tmp_path / "cents_items.csv"
  for source, target in ((dataset.interactions, cents), (dataset.items, cents_items)):
    frame = pd.read_csv(source, dtype={"price": float}, keep_default_na=False)
    frame.loc[:, frame.columns == "price"] *= 100
    frame.to_csv(target, index=False)
  # Retraining on other data, the second model faces the first under rules that never refuse:
  # this test is about drift; the gate has its own.
  good_args = [*good_args, *REPORT_ONLY]
  args = ["--interactions", str(cents), "--items", str(cents_items), *good_args[4:]]

  result = _run(*args)
  assert result.exit_code != 0
  assert "drifted" in result.output and "feature 'price'" in result.output
  assert "--allow-drift" in result.output
  assert _versions(home) == before
  assert len(_trained_models(home)) == models_before

  # Rejected data is not the next run's baseline: the original prices pass the drift gate.
  result = _run(*good_args)
  assert result.exit_code == 0, result.output
  assert _latest_drift_gate(home)[1][artifact_properties.DRIFT_DETECTED] == 0
  assert len(_versions(home)) == len(before) + 1
  # The gate found the first model as the baseline and compared the two.
  assert ("Model blessed (blessed: floors, popularity margins, regressions and Pareto rule hold"
          in result.output)
  assert "vs baseline" in result.output

  result = _run(*args, "--allow-drift")
  assert result.exit_code == 0, result.output
  allow_drift, properties = _latest_drift_gate(home)
  assert allow_drift == 1
  assert properties[artifact_properties.DRIFT_DETECTED] == 1
  assert properties[artifact_properties.DRIFT_OVERRIDDEN] == 1
  assert len(_versions(home)) == len(before) + 2


def test_unreadable_file_stops_at_ingestion_naming_the_line(trained, tmp_path):
  home, dataset, _, _ = trained
  before = _versions(home)
  truncated = tmp_path / "truncated.csv"
  text = dataset.interactions.read_text()
  truncated.write_text(text[: text.rindex("\n", 0, len(text) - 1) + 5])  # cut the last line
  result = CliRunner().invoke(cli.main, ["run", "--interactions", str(truncated),
                                         "--home", str(home)])
  assert result.exit_code != 0
  assert "truncated.csv" in result.output and "line" in result.output
  assert _versions(home) == before


def _refusal(result) -> str:
  """The one line a refused run ends with; the output holds no traceback."""
  assert result.exit_code != 0
  assert "Traceback" not in result.output and "ERROR:absl" not in result.output
  lines = [line for line in result.output.splitlines() if line.strip()]
  assert lines[-1].startswith("Error: "), result.output
  return lines[-1]


def _serving_state(home):
  return _versions(home), model_config.read_labels(home / "serving", "recommender")


def _drift_baseline(home) -> str:
  """The statistics the next run's drift is judged against: the newest accepted data's."""
  store = metadata_store.MetadataStore(metadata.sqlite_metadata_connection_config(
      str(home / "metadata" / "recsys.sqlite")))
  accepted = [artifact for artifact in store.get_artifacts_by_type(
      standard_artifacts.Examples.TYPE_NAME)
              if artifact_properties.STATISTICS_URI in artifact.custom_properties]
  newest = max(accepted, key=lambda artifact: artifact.id)
  return newest.custom_properties[artifact_properties.STATISTICS_URI].string_value


def _engagement_rows(users: int, items_per_user: int, events_per_user: int,
                     shared: bool = False) -> str:
  """Users clicking their own few items (or, `shared`, the same few) over and over, hourly."""
  rows = [f"u{user},i{(0 if shared else user * items_per_user) + step % items_per_user},"
          f"{1_700_000_000 + 3600 * (user + users * step)},click"
          for user in range(users) for step in range(events_per_user)]
  return "user_id,item_id,timestamp,event\n" + "\n".join(rows) + "\n"


@pytest.mark.parametrize("name, content, message", [
    ("one_user.csv", _engagement_rows(1, 50, 3000),
     "one_user.csv: the engagements have 1 distinct user_id value ('u0'); training and "
     "evaluating a recommender needs at least 10 users"),
    ("one_item.csv", _engagement_rows(40, 1, 75, shared=True),
     "one_item.csv: the engagements have 1 distinct item_id value ('i0'); training and "
     "evaluating a recommender needs at least 10 items"),
    ("noise.csv", bytes(range(256)) * 20, "noise.csv: not a text file (binary data: a NUL byte"),
], ids=["one user", "one item", "random bytes"])
def test_degenerate_data_is_refused_in_one_line_and_the_served_version_keeps_serving(
    trained, tmp_path, name, content, message):
  home, _, _, _ = trained
  before = _serving_state(home)
  path = tmp_path / name
  if isinstance(content, bytes):
    path.write_bytes(content)
  else:
    path.write_text(content)
  refusal = _refusal(_run("--interactions", str(path), "--home", str(home)))
  assert message in refusal
  assert refusal.endswith(f"keeps serving from {home / 'serving' / 'recommender' / before[0][-1]}")
  assert _serving_state(home) == before


def test_data_with_nothing_left_to_evaluate_stops_after_session_building(trained, tmp_path):
  home, _, _, _ = trained
  before, models_before = _serving_state(home), len(_trained_models(home))
  baseline_before = _drift_baseline(home)
  # Every user re-clicks the same 5 items: each eval engagement is with an item of its history.
  repeats = tmp_path / "repeats.csv"
  repeats.write_text(_engagement_rows(40, 5, 60))
  result = _run("--interactions", str(repeats), "--home", str(home), "--allow-drift")
  assert result.exit_code != 0 and "Traceback" not in result.output
  assert ("SessionBuilder: each of the" in result.output
          and "is with an item already in that user's recent history" in result.output)
  assert re.search(r"SessionBuilder +FAILED", result.output)
  assert _serving_state(home) == before
  assert _execution_states(home, "SessionBuilder")[-1] == "FAILED"
  assert len(_trained_models(home)) == models_before  # stopped before the Trainer
  # It passed the drift gate (--allow-drift) but not the split check: not the next baseline.
  assert _drift_baseline(home) == baseline_before


def test_an_unexpected_error_in_a_component_is_one_line_and_recorded_as_failed(
    trained, tmp_path, monkeypatch):
  home, dataset, _, _ = trained
  before = _serving_state(home)
  fewer = tmp_path / "fewer.csv"  # new data, so SessionBuilder runs instead of being cached
  pd.read_csv(dataset.interactions, dtype=str, keep_default_na=False).iloc[:-50].to_csv(
      fewer, index=False)

  def broken(*args, **kwargs):
    raise RuntimeError("the disk is full\nand more detail on a second line")

  monkeypatch.setattr(sessions, "build_sessions", broken)
  # --allow-drift: the drift test above accepted its drifted prices with an override, so they are
  # the drift baseline now.
  refusal = _refusal(_run("--interactions", str(fewer), "--items", str(dataset.items),
                          "--home", str(home), "--allow-drift"))
  assert refusal.startswith("Error: SessionBuilder failed: RuntimeError: the disk is full; "
                            "nothing was pushed and version ")
  log_path = pathlib.Path(re.search(r"the traceback is in (\S+)\)$", refusal).group(1))
  assert "Traceback" in log_path.read_text() and "and more detail" in log_path.read_text()
  assert _serving_state(home) == before
  assert _execution_states(home, "SessionBuilder")[-1] == "FAILED"


def test_real_ratings_are_blessed_by_the_default_gate_and_pushed(movielens_dir, tmp_path):
  """ml-latest-small as a new user runs it: default hyper-parameters and the default gate,
  whose accuracy rules are margins over the most-popular ranking, not floors fitted to the
  built-in data."""
  result = _run("--interactions", str(movielens_dir / "ratings.csv"),
                "--items", str(movielens_dir / "movies.csv"), "--format", "movielens",
                "--home", str(tmp_path))
  assert result.exit_code == 0, result.output
  assert ("Model blessed (blessed: floors and popularity margins (first model: no baseline) "
          "hold") in result.output
  assert "pushed version" in result.output
  assert len(_versions(tmp_path)) == 1
  (evaluation,) = tmp_path.glob("pipelines/recsys/ModelEvaluator/evaluation/*/evaluation.json")
  record = json.loads(evaluation.read_text())
  for metric in ("recall@10", "ndcg@10"):
    assert record["candidate"]["metrics"][metric] > 1.05 * record["popularity"]["metrics"][metric]
  # Ratings hold no unengaged impression: the DQN head has no reward contrast and stays untrained.
  log = pathlib.Path(re.search(r"Logs: (\S+)", result.output).group(1)).read_text()
  assert "the DQN head is not trained" in log


def test_one_round_of_the_feedback_loop_retrains_on_the_served_slates(trained, tmp_path):
  """One round of bench/bench_loop.py: the pushed model serves simulated users with request
  logging on, their clicks and purchases are the feedback, `recsys ingest-logs` joins both into
  a new span and `recsys run --latest-span` retrains on it."""
  source_home, dataset, _, _ = trained
  home = tmp_path / "home"
  # The fixture's pushed model (without the request log earlier tests wrote), and the data it
  # learnt from as this home's span 1: the fixture's home holds the failure tests' spans since.
  shutil.copytree(source_home / "serving", home / "serving",
                  ignore=shutil.ignore_patterns(model_config.REQUEST_LOG_DIR))
  input_base = home / "data" / "spans"
  staged = ingest.prepare_dataset(dataset.interactions, dataset.items,
                                  out_dir=input_base / spans.STAGING_DIR)
  assert spans.publish(staged / ingest.EXAMPLES_FILE, input_base) == 1
  n_users = generator.users_for(20_000)
  world = generator.default_world(7, n_users, 60)  # the fixture dataset's world
  start = int(pd.read_csv(dataset.interactions, usecols=["timestamp"])["timestamp"].max()) + 86_400
  served, feedback, versions, _ = bench_loop.serve_round(home, world, np.arange(40), 2, 0, start,
                                                         "e2e")
  assert len(versions) == 1 and versions <= {int(version) for version in _versions(home)}
  feedback_path = tmp_path / "feedback.csv"
  feedback.to_csv(feedback_path, index=False)
  assert len(feedback) > 0

  ingested = CliRunner().invoke(cli.main, [
      "ingest-logs", "--predictions", str(bench_loop.request_log_dir(home)), "--feedback",
      str(feedback_path), "--slate-size", "10", "--home", str(home)], catch_exceptions=False)
  assert ingested.exit_code == 0, ingested.output
  slates = served.impressions.groupby(["session", "step"]).ngroups
  assert f"Joined {slates} served slates with {len(feedback)} engagements:" in ingested.output
  events = ingest.read_examples(input_base / "span-2" / ingest.EXAMPLES_FILE)
  logged = events[events[contract.REQUEST_ID].notna()]
  assert len(logged) == len(served.impressions) == 10 * slates
  assert set(logged[contract.MODEL_VERSION]) == versions
  assert (logged[contract.EVENT] != "impression").sum() == len(feedback)
  assert (logged[contract.EVENT] == "purchase").sum() == served.impressions["purchase"].sum()
  assert logged[contract.PROPENSITY].eq(1.0).all()  # the default serving policy is greedy
  assert len(events) - len(logged) == len(pd.read_csv(dataset.interactions))

  result = _run("--latest-span", "--home", str(home), "--set", "simulator_users=0", *REPORT_ONLY)
  assert result.exit_code == 0, result.output
  assert "Training on span 2 of" in result.output
  assert "pushed version" in result.output
