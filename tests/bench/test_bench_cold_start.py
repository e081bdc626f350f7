"""bench/bench_cold_start.py: who is held out, the index arrays, and the curve's metrics."""
import importlib.util
import pathlib

import numpy as np
import pandas as pd
import pytest

from schemas import contract

_BENCH = pathlib.Path(__file__).resolve().parents[2] / "bench" / "bench_cold_start.py"
_spec = importlib.util.spec_from_file_location("bench_cold_start", _BENCH)
bench_cold_start = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_cold_start)


def test_the_newest_users_by_first_event_are_held_out():
  events = pd.DataFrame({contract.USER_ID: ["a", "a", "b", "c", "d"],
                         contract.TIMESTAMP: [1, 90, 5, 7, 3]})
  # First events: a 1, d 3, b 5, c 7: the newest half are b and c, whatever a did later.
  assert bench_cold_start._newest_users(events, 0.5) == {"b", "c"}


def test_metrics_rank_the_catalog_without_the_support_items():
  scores = np.arange(15, 0, -1, dtype=float)  # item 0 best, then 1, 2, ...
  support = np.array([0, 1])  # the two best are removed: the top 10 is items 2..11
  query = np.array([2, 4, 11, 13, -1, 14, 12, -1, -1, -1])  # -1: not in the catalog
  recall, ndcg = bench_cold_start._metrics(scores, support, query)
  # Hits at ranks 1, 3 and 10, of 10 query items.
  assert recall == pytest.approx(3 / 10)
  discounts = 1 / np.log2(np.arange(2, 12))
  assert ndcg == pytest.approx(discounts[[0, 2, 9]].sum() / discounts.sum())


def test_the_dataset_builds_the_trainers_index_arrays_and_new_users_sequences():
  rng = np.random.default_rng(0)
  rows = 40 + 35
  events = pd.DataFrame({
      contract.USER_ID: ["old"] * 40 + ["new"] * 35,
      contract.ITEM_ID: [f"m{i % 20}" for i in range(40)] + [f"m{i}" for i in
                                                             rng.permutation(35)],
      contract.TIMESTAMP: np.arange(rows),
      contract.EVENT: "rating",
      contract.CATEGORY: "Drama",
      contract.TITLE: "Heat (1995)",
  })
  dataset = bench_cold_start.Dataset(events[events[contract.USER_ID] == "old"],
                                     events[events[contract.USER_ID] == "new"])
  assert len(dataset.items) == 20 and list(dataset.users) == ["old"]
  np.testing.assert_array_equal(dataset.catalog["item_id_xf"], np.arange(20))
  # Title words as Transform reads them: lower-cased runs of letters and digits.
  np.testing.assert_array_equal(dataset.catalog["title_tokens_xf"][0][:3], [0, 1, -1])
  (sequence,) = dataset.new_users
  # In time order; items the training data never had are -1.
  new_items = events[events[contract.USER_ID] == "new"][contract.ITEM_ID]
  np.testing.assert_array_equal(sequence, dataset.items.get_indexer(new_items))
  assert (sequence == -1).sum() == 15


def test_the_default_run_is_one_seed_of_two_models_and_full_is_the_readme_s_protocol():
  seeds, forms, overrides = bench_cold_start.offline_plan(
      False, None, bench_cold_start.DEFAULT_FORMS, [])
  assert seeds == [0] and forms == ["off", "maml"] and overrides == {"epochs": 10}
  seeds, forms, overrides = bench_cold_start.offline_plan(
      True, [5], ["off"], ["adapt_learning_rate=0.5", "epochs=7"])
  assert seeds == [0, 1, 2] and forms == ["off", "amortised", "maml"]
  # Settings come last and are typed as ModelConfig's fields are.
  assert overrides == {"epochs": 7, "adapt_learning_rate": 0.5}
