"""Beyond-accuracy metrics against hand-computed values."""
import numpy as np
import pandas as pd
import pytest

from components.evaluation import beyond_accuracy

CATALOG = ["a", "b", "c", "d", "e"]


def _recommended(rows):
  return pd.DataFrame([(user, rank, item) for user, items in rows.items()
                       for rank, item in enumerate(items, start=1)],
                      columns=["user_id", "rank", "item_id"])


# u3 has a single item: no pairs, so it is left out of the diversity means.
LISTS = _recommended({"u1": ["a", "b", "c"], "u2": ["a", "d", "e"], "u3": ["a"]})


def test_catalog_coverage_counts_distinct_items_in_the_top_k():
  assert beyond_accuracy.catalog_coverage(LISTS, CATALOG, k=2) == pytest.approx(3 / 5)  # a b d
  assert beyond_accuracy.catalog_coverage(LISTS, CATALOG, k=3) == pytest.approx(5 / 5)
  with pytest.raises(ValueError, match="not in the catalog"):
    beyond_accuracy.catalog_coverage(LISTS, ["a", "b"], k=3)


def test_category_diversity_is_the_share_of_pairs_across_categories():
  category = {"a": "books", "b": "books", "c": "toys", "d": "toys", "e": "garden"}
  # u1: (a,b) same, (a,c) and (b,c) differ: 2/3. u2: books, toys, garden: 3/3.
  assert beyond_accuracy.category_diversity(LISTS, category, k=3) == pytest.approx(
      (2 / 3 + 1) / 2)
  # Top 2: u1 a,b: 0/1; u2 a,d: 1/1. A pandas Series is a mapping too.
  assert beyond_accuracy.category_diversity(LISTS, pd.Series(category), k=2) == pytest.approx(
      (0 + 1) / 2)
  with pytest.raises(ValueError, match="no category"):
    beyond_accuracy.category_diversity(LISTS, {"a": "books"}, k=3)


def test_embedding_diversity_is_the_mean_pairwise_cosine_distance():
  # Length does not matter to a cosine: c points the same way as (1, 1).
  vectors = {"a": np.array([1.0, 0.0]), "b": np.array([0.0, 1.0]), "c": np.array([2.0, 2.0]),
             "d": np.array([-1.0, 0.0]), "e": np.array([1.0, 0.0])}
  # u1: cos(a,b) = 0, cos(a,c) = cos(b,c) = 1/sqrt(2). u2: cos(a,d) = -1, cos(a,e) = 1,
  # cos(d,e) = -1.
  u1 = 1 - (0 + 2 / np.sqrt(2)) / 3
  u2 = 1 - (-1 + 1 - 1) / 3
  assert beyond_accuracy.embedding_diversity(LISTS, vectors, k=3) == pytest.approx((u1 + u2) / 2)
  # Top 2: u1 a,b: distance 1; u2 a,d: distance 2.
  assert beyond_accuracy.embedding_diversity(LISTS, vectors, k=2) == pytest.approx((1 + 2) / 2)
  with pytest.raises(ValueError, match="no vector"):
    beyond_accuracy.embedding_diversity(LISTS, {"a": np.ones(2)}, k=2)


def test_novelty_is_the_mean_self_information_of_recommendations():
  train = pd.DataFrame({"item_id": ["a"] * 4 + ["b"] * 2 + ["c", "d"]})
  # p = 1/2, 1/4, 1/8, 1/8: 1, 2, 3 and 3 bits. Top 2: a b | a d | a.
  assert beyond_accuracy.novelty(LISTS, train, k=2) == pytest.approx((1 + 2 + 1 + 3 + 1) / 5)
  with pytest.raises(ValueError, match="never occur in training"):
    beyond_accuracy.novelty(LISTS, train, k=3)  # e


def test_exposure_gini_over_the_catalog():
  # Top 2 shows a 3 times, b and d once, c and e never: sorted 0 0 1 1 3, so
  # sum((2i - n - 1) x_i) / (n sum x) = (2 * 1 + 4 * 3) / (5 * 5).
  assert beyond_accuracy.exposure_gini(LISTS, CATALOG, k=2) == pytest.approx(14 / 25)
  equal = _recommended({"u1": ["a", "b"], "u2": ["c", "d"], "u3": ["e"]})
  assert beyond_accuracy.exposure_gini(equal, CATALOG, k=2) == pytest.approx(0.0)
  one_item = _recommended({"u1": ["a"], "u2": ["a"]})
  assert beyond_accuracy.exposure_gini(one_item, CATALOG, k=2) == pytest.approx(4 / 5)


def test_k_below_one_is_refused():
  with pytest.raises(ValueError, match="at least 1"):
    beyond_accuracy.catalog_coverage(LISTS, CATALOG, k=0)


def test_over_no_lists_or_single_item_lists_every_metric_is_defined():
  none = _recommended({})
  single = _recommended({"u1": ["a"], "u2": ["b"]})
  category = dict(zip(CATALOG, ["books", "toys", "toys", "garden", "garden"]))
  vectors = {item: np.eye(5)[index] for index, item in enumerate(CATALOG)}
  train = pd.DataFrame({"item_id": CATALOG})
  assert beyond_accuracy.catalog_coverage(none, CATALOG, k=10) == 0.0
  assert beyond_accuracy.novelty(none, train, k=10) == 0.0
  assert beyond_accuracy.exposure_gini(none, CATALOG, k=10) == 0.0
  for lists in (none, single):  # no list has two items to compare
    assert beyond_accuracy.category_diversity(lists, category, k=10) == 0.0
    assert beyond_accuracy.embedding_diversity(lists, vectors, k=10) == 0.0
  assert beyond_accuracy.catalog_coverage(single, CATALOG, k=10) == pytest.approx(2 / 5)
