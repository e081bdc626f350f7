"""What accuracy metrics miss: how much of the catalog lists reach, how varied and how unfamiliar
they are, and how unequally they expose items.

Accuracy rewards showing everyone the same popular items; these metrics expose that, so a release
gate can hold them alongside components/evaluation/ranking_metrics.py. Every function takes the same
`recommended` frame (user_id, rank from 1, item_id) and looks only at each user's top k.
Definitions follow the Microsoft Recommenders evaluation module where it has the metric:
  * catalog coverage: distinct recommended items / catalog size;
  * category diversity: per user, the share of pairs of listed items whose categories differ,
    averaged over users;
  * embedding diversity: per user, the mean cosine distance (1 - cosine similarity) over pairs of
    listed items, averaged over users (Ziegler et al. 2005's intra-list diversity);
  * novelty: the mean over recommendations of an item's self-information -log2 p(item), with
    p(item) its share of training interactions (Castells et al. 2011, choice model);
  * exposure Gini: the Gini coefficient of how often each catalog item is recommended, unexposed
    items counted as zero: 0 when all items are shown equally often, (n - 1) / n when one of n
    items takes every slot.
Users with fewer than two listed items have no pairs and are left out of the diversity means.

Degenerate input is defined, not an error, so that an evaluation on a tiny or odd dataset gives
numbers the release gate can judge: over no recommendations at all, coverage, novelty and the
exposure Gini are 0; when no user has two listed items, both diversities are 0 (nothing differs).
"""
from typing import Collection, Mapping, Union

import numpy as np
import pandas as pd

from components.evaluation.ranking_metrics import ITEM_ID
from components.evaluation.ranking_metrics import RANK
from components.evaluation.ranking_metrics import USER_ID


def catalog_coverage(recommended: pd.DataFrame, catalog: Collection, k: int) -> float:
  """Share of the catalog that is in at least one user's top k."""
  shown = _top(recommended, k)[ITEM_ID].unique()
  _check_in_catalog(shown, catalog)
  return len(shown) / len(set(catalog))


def category_diversity(recommended: pd.DataFrame,
                       item_category: Union[Mapping, pd.Series], k: int) -> float:
  """Mean over users of the share of their top-k item pairs whose categories differ.

  Args:
    recommended: user_id, rank, item_id.
    item_category: item_id -> category, for every listed item.
    k: Cut-off.
  """
  top = _top(recommended, k)
  categories = top[ITEM_ID].map(item_category)
  if categories.isna().any():
    raise ValueError(f"{top[ITEM_ID][categories.isna()].nunique()} listed items have no category")
  # Pairs within one category are sum over categories of c (c - 1) / 2, for c items of it.
  per_category = top.assign(category=categories).groupby([USER_ID, "category"]).size()
  same_pairs = (per_category * (per_category - 1) / 2).groupby(level=USER_ID).sum()
  listed = per_category.groupby(level=USER_ID).sum()
  pairs = listed * (listed - 1) / 2
  has_pairs = listed >= 2
  if not has_pairs.any():
    return 0.0
  return float(np.mean(1.0 - same_pairs[has_pairs] / pairs[has_pairs]))


def embedding_diversity(recommended: pd.DataFrame, item_vectors: Mapping[object, np.ndarray],
                        k: int) -> float:
  """Mean over users of the mean pairwise cosine distance of their top-k items' vectors.

  For unit vectors u_1..u_n the pairwise cosines sum to (|sum of u|^2 - n) / 2, so each list
  costs one sum instead of n^2 products.

  Args:
    recommended: user_id, rank, item_id.
    item_vectors: item_id -> embedding, non-zero, for every listed item.
    k: Cut-off.
  """
  top = _top(recommended, k)
  if top.empty:
    return 0.0
  item_codes, items = pd.factorize(top[ITEM_ID])
  missing = [item for item in items if item not in item_vectors]
  if missing:
    raise ValueError(f"{len(missing)} listed items have no vector")
  vectors = np.stack([np.asarray(item_vectors[item], dtype=float) for item in items])
  norms = np.linalg.norm(vectors, axis=1, keepdims=True)
  if (norms == 0).any():
    raise ValueError("a listed item's vector is zero, so its cosine distance is undefined")
  unit_vectors = (vectors / norms)[item_codes]
  user_codes, users = pd.factorize(top[USER_ID])
  sums = np.zeros((len(users), unit_vectors.shape[1]))
  np.add.at(sums, user_codes, unit_vectors)
  listed = np.bincount(user_codes, minlength=len(users))
  has_pairs = listed >= 2
  if not has_pairs.any():
    return 0.0
  n = listed[has_pairs]
  mean_cosine = ((sums[has_pairs] ** 2).sum(axis=1) - n) / (n * (n - 1))
  return float(np.mean(1.0 - mean_cosine))


def novelty(recommended: pd.DataFrame, train_interactions: pd.DataFrame, k: int) -> float:
  """Mean self-information, in bits, of the top-k recommendations' items.

  An item never interacted with in training has unbounded self-information, so such items are
  refused rather than dropped: dropping them would hide the most novel recommendations.

  Args:
    recommended: user_id, rank, item_id.
    train_interactions: One row per training interaction, with item_id.
    k: Cut-off.
  """
  popularity = train_interactions[ITEM_ID].value_counts(normalize=True)
  shown = _top(recommended, k)[ITEM_ID]
  share = shown.map(popularity)
  if share.isna().any():
    raise ValueError(f"{shown[share.isna()].nunique()} recommended items never occur in "
                     f"training, so their novelty is unbounded")
  if shown.empty:
    return 0.0
  return float(np.mean(-np.log2(share.to_numpy(dtype=float))))


def exposure_gini(recommended: pd.DataFrame, catalog: Collection, k: int) -> float:
  """Gini coefficient of the top-k recommendation counts over the whole catalog."""
  shown = _top(recommended, k)[ITEM_ID]
  _check_in_catalog(shown.unique(), catalog)
  exposure = np.sort(shown.value_counts().reindex(list(set(catalog)), fill_value=0).to_numpy())
  n = len(exposure)
  if not exposure.sum():
    return 0.0
  # The standard closed form over values sorted ascending, ranks i = 1..n.
  return float(np.sum((2 * np.arange(1, n + 1) - n - 1) * exposure) / (n * exposure.sum()))


def _top(recommended: pd.DataFrame, k: int) -> pd.DataFrame:
  if k < 1:
    raise ValueError(f"k must be at least 1, got {k}")
  return recommended[recommended[RANK] <= k][[USER_ID, ITEM_ID]]


def _check_in_catalog(shown: np.ndarray, catalog: Collection) -> None:
  """Refuses recommended items outside the catalog: shares of it would then mean nothing."""
  unknown = set(shown) - set(catalog)
  if unknown:
    raise ValueError(f"{len(unknown)} recommended items are not in the catalog")
