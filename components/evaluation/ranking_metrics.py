"""Top-k ranking metrics over whole recommendation lists, as the Microsoft Recommenders benchmark
defines them, so figures compare with its published tables.

Inputs are two frames: `relevant` (user_id, item_id: every held-out interaction is relevant) and
`recommended` (user_id, rank from 1, item_id). Users are those in both frames; each metric is the
mean over them of:
  * precision@k: hits in the top k / k;
  * recall@k: hits in the top k / number of relevant items;
  * nDCG@k: sum over hits of 1 / log2(rank + 1), divided by the same sum for an ideal list of
    min(number relevant, k) hits;
  * MAP@k: sum over hits of (hits up to that rank / rank), divided by min(number relevant, k);
  * hit_rate@k: 1 if the top k hold any hit, else 0;
  * MRR@k: 1 / rank of the first hit in the top k, 0 without one.
"""
from typing import Dict, Sequence, Tuple, Union

import numpy as np
import pandas as pd

USER_ID, ITEM_ID, RANK = "user_id", "item_id", "rank"


def ranking_metrics(relevant: pd.DataFrame, recommended: pd.DataFrame,
                    k: Union[int, Sequence[int]]) -> Dict[str, float]:
  """Every metric of the module docstring at each k, and the number of users they average over.

  Args:
    relevant: user_id, item_id of the held-out interactions.
    recommended: user_id, rank (from 1), item_id of each user's list.
    k: One cut-off or several; the lists are joined with `relevant` once for all of them, so
      asking for several is cheaper than calling once per k.

  Returns:
    "precision@k", "recall@k", "ndcg@k", "map@k", "hit_rate@k" and "mrr@k" for every k, and
    "users".
  """
  ks = [int(cutoff) for cutoff in np.atleast_1d(k)]
  if not ks or min(ks) < 1:
    raise ValueError(f"every k must be at least 1, got {k}")
  relevant = relevant[[USER_ID, ITEM_ID]].drop_duplicates()
  recommended = recommended[recommended[RANK] <= max(ks)][[USER_ID, ITEM_ID, RANK]]
  users = np.intersect1d(relevant[USER_ID].unique(), recommended[USER_ID].unique())
  if not len(users):
    raise ValueError("no user has both relevant items and recommendations")
  n_relevant = relevant[relevant[USER_ID].isin(users)].groupby(USER_ID).size().reindex(
      users).to_numpy()

  hits = recommended[recommended[USER_ID].isin(users)].merge(relevant, on=[USER_ID, ITEM_ID])
  hits = hits.sort_values([USER_ID, RANK])
  hits["gain"] = 1.0 / np.log2(hits[RANK] + 1)
  # Hits come in rank order, so a hit's count of hits up to it is the same within any top k.
  hits["precision_at_hit"] = (hits.groupby(USER_ID).cumcount() + 1) / hits[RANK]
  hits["reciprocal_rank"] = 1.0 / hits[RANK]

  metrics = {}
  for cutoff in ks:
    per_user = hits[hits[RANK] <= cutoff].groupby(USER_ID).agg(
        hits=(RANK, "size"), dcg=("gain", "sum"), precision_sum=("precision_at_hit", "sum"),
        first_reciprocal_rank=("reciprocal_rank", "max"),
    ).reindex(users, fill_value=0.0)
    ideal_hits = np.minimum(n_relevant, cutoff)
    discounts = 1.0 / np.log2(np.arange(2, cutoff + 2))
    idcg = np.cumsum(discounts)[ideal_hits - 1]
    metrics.update({
        f"precision@{cutoff}": float(np.mean(per_user["hits"] / cutoff)),
        f"recall@{cutoff}": float(np.mean(per_user["hits"] / n_relevant)),
        f"ndcg@{cutoff}": float(np.mean(per_user["dcg"] / idcg)),
        f"map@{cutoff}": float(np.mean(per_user["precision_sum"] / ideal_hits)),
        f"hit_rate@{cutoff}": float(np.mean(per_user["hits"] > 0)),
        f"mrr@{cutoff}": float(np.mean(per_user["first_reciprocal_rank"])),
    })
  metrics["users"] = int(len(users))
  return metrics


def stratified_split(interactions: pd.DataFrame, train_fraction: float, seed: int,
                     by: str = ITEM_ID) -> Tuple[pd.DataFrame, pd.DataFrame]:
  """A random train/test split in which each `by` group (item) keeps train_fraction of its rows.

  The protocol of the Microsoft Recommenders benchmark: every item appears in training.
  """
  rng = np.random.default_rng(seed)
  order = rng.permutation(len(interactions))
  shuffled = interactions.iloc[order]
  position = shuffled.groupby(by).cumcount().to_numpy()
  size = shuffled.groupby(by)[by].transform("size").to_numpy()
  in_train = position < np.round(train_fraction * size)
  return (shuffled[in_train].sort_index(), shuffled[~in_train].sort_index())
