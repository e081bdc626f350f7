"""Batch recommendations: the whole catalog ranked, seen items removed, k left for every user."""
from click.testing import CliRunner
import pandas as pd
import pytest
import tensorflow as tf

from components.models import queries
from pipeline import cli
from schemas import contract
from serving import batch
from tests.models.test_model import export_tiny_model

N_ITEMS = 6


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  """A tiny exported model whose item ids are "0".."5" (the identity transform reads numbers)."""
  path = tmp_path_factory.mktemp("model")
  export_tiny_model(path, range(N_ITEMS), top_k=2)
  return path


def _catalog_order(model_dir, user, history):
  rank = tf.saved_model.load(str(model_dir)).signatures[contract.RANK_CATALOG_SIGNATURE]
  ranked = rank(user_id=tf.constant([user]), history=tf.constant([history or [""]]),
                timestamp=tf.constant([contract.UNKNOWN_TIME], tf.int64))
  return list(ranked[contract.ITEM_IDS].numpy()[0].astype(str))


def test_seen_items_are_removed_and_k_remain(model_dir):
  seen = {"1": ["0", "3", "4"]}
  recommendations = batch.recommend(model_dir, ["1", "2"], seen, k=3)
  user_1 = recommendations[recommendations["user_id"] == "1"]
  expected = [item for item in _catalog_order(model_dir, "1", ["0", "3", "4"])
              if item not in seen["1"]][:3]
  assert list(user_1["item_id"]) == expected  # more than the 2-item serving top-k could give
  assert list(user_1["rank"]) == [1, 2, 3]
  assert user_1["score"].is_monotonic_decreasing
  user_2 = recommendations[recommendations["user_id"] == "2"]
  assert list(user_2["item_id"]) == _catalog_order(model_dir, "2", [])[:3]


def test_seen_items_can_stay_in_the_ranking_and_still_form_the_history(model_dir):
  recommendations = batch.recommend(model_dir, ["1"], {"1": ["0", "3"]}, k=6, remove_seen=False)
  assert list(recommendations["item_id"]) == _catalog_order(model_dir, "1", ["0", "3"])


def test_a_user_who_has_seen_almost_everything_gets_what_is_left(model_dir):
  recommendations = batch.recommend(model_dir, ["1"], {"1": ["0", "1", "2", "3", "4"]}, k=3)
  assert list(recommendations["item_id"]) == ["5"]


def test_engaged_items_ignore_impressions_and_follow_time():
  events = pd.DataFrame({"user_id": ["a", "a", "a", "b"], "item_id": ["x", "y", "z", "x"],
                         "timestamp": [3, 1, 2, 1], "event": ["click", "rating", "impression",
                                                              "view"]})
  assert batch.engaged_items(events) == {"a": ["y", "x"], "b": ["x"]}


def test_command_line_writes_every_users_top_k(model_dir, tmp_path):
  seen = tmp_path / "seen.csv"
  seen.write_text("user_id,item_id,timestamp,event\n1,0,1,click\n2,5,1,purchase\n2,4,2,view\n")
  output = tmp_path / "recs.csv"
  result = CliRunner().invoke(cli.main, [
      "recommend", "--model", str(model_dir), "--users", "all", "--exclude-seen", str(seen),
      "--k", "2", "--output", str(output)])
  assert result.exit_code == 0, result.output
  recs = pd.read_csv(output, dtype={"user_id": str, "item_id": str})
  assert list(recs.columns) == list(batch.OUTPUT_COLUMNS)
  assert recs.groupby("user_id").size().to_dict() == {"1": 2, "2": 2}
  assert "0" not in set(recs[recs["user_id"] == "1"]["item_id"])
  assert not {"4", "5"} & set(recs[recs["user_id"] == "2"]["item_id"])


@pytest.mark.parametrize("args, message", [
    ([], "either --user"),
    (["--user", "1", "--model", "."], "either --user"),
    (["--model", ".", "--users", "all", "--output", "x.csv"], "--exclude-seen"),
])
def test_command_line_refuses_ambiguous_requests(args, message):
  result = CliRunner().invoke(cli.main, ["recommend", *args])
  assert result.exit_code != 0 and message in result.output


def test_histories_are_padded_at_the_end_to_the_longest():
  padded = queries.padded_histories([["i1"], [], ["i2", "i3"]])
  assert padded.shape == (3, 2)
  assert padded.numpy().astype(str).tolist() == [["i1", ""], ["", ""], ["i2", "i3"]]
  assert queries.padded_histories([]).shape == (0, 0)
