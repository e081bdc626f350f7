"""Ranking metrics against hand-computed values."""
import numpy as np
import pandas as pd
import pytest

from components.evaluation import ranking_metrics


def _recommended(rows):
  return pd.DataFrame([(user, rank, item) for user, items in rows.items()
                       for rank, item in enumerate(items, start=1)],
                      columns=["user_id", "rank", "item_id"])


def test_metrics_match_a_hand_computation():
  relevant = pd.DataFrame({"user_id": ["a", "a", "a", "b"], "item_id": ["x", "y", "z", "q"]})
  recommended = _recommended({"a": ["x", "w", "y"], "b": ["r", "s", "t"], "c": ["x", "y", "z"]})
  metrics = ranking_metrics.ranking_metrics(relevant, recommended, k=3)
  # a: hits at ranks 1 and 3 of 3 relevant; b: none; c has no relevant items and is left out.
  assert metrics["users"] == 2
  assert metrics["precision@3"] == pytest.approx((2 / 3 + 0) / 2)
  assert metrics["recall@3"] == pytest.approx((2 / 3 + 0) / 2)
  dcg = 1 / np.log2(2) + 1 / np.log2(4)
  idcg = 1 / np.log2(2) + 1 / np.log2(3) + 1 / np.log2(4)
  assert metrics["ndcg@3"] == pytest.approx((dcg / idcg + 0) / 2)
  assert metrics["map@3"] == pytest.approx(((1 / 1 + 2 / 3) / 3 + 0) / 2)
  assert metrics["hit_rate@3"] == pytest.approx((1 + 0) / 2)
  assert metrics["mrr@3"] == pytest.approx((1 / 1 + 0) / 2)


def test_metrics_at_several_k_match_a_hand_computation():
  relevant = pd.DataFrame({"user_id": ["a", "a", "b"], "item_id": ["x", "y", "s"]})
  recommended = _recommended({"a": ["w", "x", "y", "v"], "b": ["p", "q", "r", "s"]})
  metrics = ranking_metrics.ranking_metrics(relevant, recommended, k=[1, 2, 4])
  # k=1: no hit for anyone.
  for name in ("precision", "recall", "ndcg", "map", "hit_rate", "mrr"):
    assert metrics[f"{name}@1"] == 0.0
  # k=2: a hits x at rank 2 of 2 relevant; b has no hit yet.
  assert metrics["precision@2"] == pytest.approx((1 / 2 + 0) / 2)
  assert metrics["recall@2"] == pytest.approx((1 / 2 + 0) / 2)
  assert metrics["ndcg@2"] == pytest.approx((1 / np.log2(3)) / (1 + 1 / np.log2(3)) / 2)
  assert metrics["map@2"] == pytest.approx(((1 / 2) / 2 + 0) / 2)
  assert metrics["hit_rate@2"] == pytest.approx((1 + 0) / 2)
  assert metrics["mrr@2"] == pytest.approx((1 / 2 + 0) / 2)
  # k=4: a hits x at 2 and y at 3; b hits s at 4, its only relevant item.
  assert metrics["precision@4"] == pytest.approx((2 / 4 + 1 / 4) / 2)
  assert metrics["recall@4"] == pytest.approx((1 + 1) / 2)
  ndcg_a = (1 / np.log2(3) + 1 / np.log2(4)) / (1 + 1 / np.log2(3))
  assert metrics["ndcg@4"] == pytest.approx((ndcg_a + 1 / np.log2(5)) / 2)
  assert metrics["map@4"] == pytest.approx(((1 / 2 + 2 / 3) / 2 + (1 / 4) / 1) / 2)
  assert metrics["hit_rate@4"] == 1.0
  assert metrics["mrr@4"] == pytest.approx((1 / 2 + 1 / 4) / 2)
  assert metrics["users"] == 2
  # One pass over several k gives what one call per k gives.
  for k in (1, 2, 4):
    assert ranking_metrics.ranking_metrics(relevant, recommended, k) == {
        name: value for name, value in metrics.items()
        if name == "users" or name.endswith(f"@{k}")}


def test_k_below_one_is_refused():
  relevant = pd.DataFrame({"user_id": ["a"], "item_id": ["x"]})
  with pytest.raises(ValueError, match="at least 1"):
    ranking_metrics.ranking_metrics(relevant, _recommended({"a": ["x"]}), k=[3, 0])


def test_only_the_top_k_count_and_a_perfect_list_scores_one():
  relevant = pd.DataFrame({"user_id": ["a", "a"], "item_id": ["x", "y"]})
  perfect = ranking_metrics.ranking_metrics(relevant, _recommended({"a": ["x", "y", "z"]}), k=2)
  assert perfect["ndcg@2"] == pytest.approx(1.0) and perfect["map@2"] == pytest.approx(1.0)
  late = ranking_metrics.ranking_metrics(relevant, _recommended({"a": ["z", "w", "x"]}), k=2)
  assert late["recall@2"] == 0.0


def test_stratified_split_keeps_the_share_of_every_item_and_is_seeded():
  interactions = pd.DataFrame({"user_id": [str(n) for n in range(400)],
                               "item_id": ["p"] * 100 + ["q"] * 300})
  train, test = ranking_metrics.stratified_split(interactions, 0.75, seed=42)
  assert train.groupby("item_id").size().to_dict() == {"p": 75, "q": 225}
  assert len(test) == 100 and set(train.index).isdisjoint(test.index)
  again, _ = ranking_metrics.stratified_split(interactions, 0.75, seed=42)
  pd.testing.assert_frame_equal(train, again)
  other, _ = ranking_metrics.stratified_split(interactions, 0.75, seed=7)
  assert not other.index.equals(train.index)
