"""The whole product on tiny data: CLI → TFX pipeline → push → gRPC server → client.

One module-scoped home is shared so the pipeline runs once for the success path; the failure
paths then check that bad input never reaches the Trainer and the served version keeps serving.
"""
import pathlib

import pandas as pd
import pytest
from click.testing import CliRunner

from components.data import generator
from pipeline import cli
from serving import client as client_lib
from serving import server as server_lib

pytestmark = pytest.mark.e2e


def _run(*args):
  return CliRunner().invoke(cli.main, ["run", *args], catch_exceptions=False)


def _versions(home: pathlib.Path):
  return sorted(path.parent.name for path in home.glob("serving/recommender/*/saved_model.pb"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  home = tmp_path_factory.mktemp("home")
  dataset = generator.generate_dataset(
      tmp_path_factory.mktemp("raw"), seed=7, n_users=80, n_items=60, n_events=4000)
  args = ["--interactions", str(dataset.interactions), "--items", str(dataset.items),
          "--home", str(home), "--epochs", "2", "--recall-floor", "0.01"]
  result = _run(*args)
  assert result.exit_code == 0, result.output
  return home, dataset, args, result.output


def test_run_pushes_a_versioned_saved_model(trained):
  home, _, _, output = trained
  versions = _versions(home)
  assert len(versions) == 1 and versions[0].isdigit()
  assert f"pushed version {versions[0]}" in output


def test_pushed_model_answers_over_grpc(trained):
  home, dataset, _, _ = trained
  catalog = set(pd.read_csv(dataset.items, dtype=str)["item_id"])
  user = pd.read_csv(dataset.interactions, dtype=str)["user_id"].iloc[0]
  server, port = server_lib.build_server(home / "serving", port=0)
  server.start()
  try:
    with client_lib.RecommenderClient(f"127.0.0.1:{port}", timeout=30) as client:
      recommendations = client.recommend(user, history=[], k=10)
  finally:
    server.stop(grace=None)
  assert len(recommendations) == 10
  assert {r.item_id for r in recommendations} <= catalog
  scores = [r.score for r in recommendations]
  assert scores == sorted(scores, reverse=True)


def test_second_run_keeps_the_served_version(trained):
  home, _, args, _ = trained
  before = _versions(home)
  result = _run(*args)
  assert result.exit_code == 0, result.output
  after = _versions(home)
  assert set(before) <= set(after)


def test_schema_violation_stops_before_training_and_keeps_serving(trained, tmp_path):
  home, dataset, _, _ = trained
  before = _versions(home)
  lines = dataset.interactions.read_text().splitlines()
  header = lines[0].split(",")
  bad = tmp_path / "bad_events.csv"
  # A ninth of the rows get an event type the schema does not know.
  event = header.index("event")
  rows = [line.split(",") for line in lines[1:]]
  for row in rows[::9]:
    row[event] = "teleport"
  bad.write_text("\n".join([lines[0]] + [",".join(row) for row in rows]) + "\n")
  result = CliRunner().invoke(cli.main, [
      "run", "--interactions", str(bad), "--items", str(dataset.items), "--home", str(home)])
  assert result.exit_code != 0
  assert "feature 'event'" in result.output and "teleport" in result.output
  assert _versions(home) == before
  trainer_runs = list((home / "pipelines" / "recsys" / "Trainer" / "model").glob("*"))
  assert len(trainer_runs) == 1  # only the good run's model


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
