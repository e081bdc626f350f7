"""Batch recommendations from an exported SavedModel: every requested user's top-k in one file.

For offline evaluation and for precomputed recommendations. It calls the model's `rank_catalog`
signature, which ranks the whole catalog, so that removing the items a user has already engaged
with (their "seen" items) still leaves k to recommend. Each user's query uses their most recent
engaged items as history, as the online service would.
"""
import os
from typing import Dict, Iterable, List, Sequence

import numpy as np
import pandas as pd
import tensorflow as tf

from components.models import queries
from schemas import contract

OUTPUT_COLUMNS = ("user_id", "rank", "item_id", "score")


def engaged_items(events: pd.DataFrame) -> Dict[str, List[str]]:
  """Each user's engaged items in time order (impressions are shown, not seen, items)."""
  engaged = events[events[contract.EVENT].isin(contract.ENGAGEMENT_EVENTS)]
  engaged = engaged.sort_values(contract.TIMESTAMP, kind="stable")
  return engaged.groupby(contract.USER_ID, sort=False)[contract.ITEM_ID].agg(list).to_dict()


def recommend(model_dir: os.PathLike, users: Sequence[str], seen: Dict[str, List[str]], k: int,
              history_length: int = contract.HISTORY_LENGTH,
              remove_seen: bool = True, adapt_steps: int = 0) -> pd.DataFrame:
  """OUTPUT_COLUMNS for each user: the k best items they have not engaged with, best first.

  Users the model never saw get its out-of-vocabulary user embedding, like online. The seen
  items are always the query's history; `remove_seen=False` keeps them in the ranking, as
  protocols that score every item do. The time is unknown (contract.UNKNOWN_TIME): the lists
  are read later, at times the job cannot know. `adapt_steps` > 0 first adapts each user's
  vector by that many gradient steps on their latest history items (the model's
  ADAPTED_RANK_SIGNATURE; components/models/cold_start.py), for new users above all.
  """
  if k < 1:
    raise ValueError(f"k must be at least 1, got {k}")
  if adapt_steps < 0:
    raise ValueError(f"adapt_steps must be at least 0, got {adapt_steps}")
  model = (queries.RankingSignature(model_dir, contract.RANK_CATALOG_SIGNATURE) if not adapt_steps
           else queries.RankingSignature(
               model_dir, contract.ADAPTED_RANK_SIGNATURE,
               extra_inputs={contract.ADAPT_STEPS: tf.constant(adapt_steps, tf.int32)}))
  histories = [seen.get(user, [])[-history_length:] for user in users]
  frames = []
  ranked = ((items, item_scores) for batch in model.rank_batches(list(users), histories)
            for items, item_scores in zip(*batch))
  for user, (items, item_scores) in zip(users, ranked):
    removed = set(seen.get(user, ())) if remove_seen else set()
    frames.append(top_unseen(user, items, item_scores, removed, k))
  return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
      columns=list(OUTPUT_COLUMNS))


def top_unseen(user: str, items: np.ndarray, scores: np.ndarray, seen: Iterable[str],
               k: int) -> pd.DataFrame:
  """OUTPUT_COLUMNS for one user: the first k of `items` (ranked best first) not in `seen`."""
  keep = ~np.isin(items, list(seen))
  items, scores = items[keep][:k], scores[keep][:k]
  return pd.DataFrame({"user_id": user, "rank": np.arange(1, len(items) + 1),
                       "item_id": items, "score": scores})
