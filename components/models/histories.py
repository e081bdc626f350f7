"""The histories the retrieval task trains on: the recent items, or a sample of the user's others.

Two kinds of data want two kinds of training history:
  * Logged sessions (views, clicks, purchases, impressions): what a user does next follows from
    what they just did, so each example's history is the items just before it ("recent"), what
    serving sends too.
  * Explicit ratings (MovieLens and the like): a user rates many items in one sitting, in an order
    that says little about the next. Trained to predict the next rating from the ones just
    before, the query tower memorises those orders and misses what the user likes overall. Each
    example gets instead a random sample of the user's *other* training engagements, redrawn
    every epoch ("sampled": the held-out-item objective of Covington et al., 2016, "Deep Neural
    Networks for YouTube Recommendations", and of Mult-VAE). On MovieLens ml-latest-small under
    the random-split protocol (README, Benchmarks) the pipeline's model scores nDCG@10 0.17 with
    recent histories (and less with more epochs) and 0.30 with sampled ones. On the simulator's
    sessions, sampled histories cost retrieval about a tenth of its clicks, so they are not
    used there.
"auto" picks sampled when most engagements are ratings.
"""
import numpy as np

from components.models import preprocessing
from components.models.config import AUTO_HISTORY
from components.models.config import RECENT_HISTORY
from components.models.config import SAMPLED_HISTORY
from schemas import contract


def sampled_user_histories(users: np.ndarray, items: np.ndarray, length: int,
                           rng: np.random.Generator) -> np.ndarray:
  """For each engagement, up to `length` other items its user engaged with, in random order.

  Args:
    users: [n] user index of each engagement.
    items: [n] item index of each engagement.
    length: history slots per engagement.
    rng: the source of the sample; call again with the same generator for a new sample.

  Returns:
    int64 [n, length]: item indices, left-aligned, PADDING in slots a user with fewer
    than `length` other engagements cannot fill. An engagement's own item never appears in its
    history, even when the user engaged with it more than once.
  """
  # The engagements grouped by user, in a random order within each user: engagement i's history
  # is the `length` engagements after it in its user's group, wrapping around.
  order = np.lexsort((rng.random(len(users)), users))
  grouped_users = users[order]
  starts = np.searchsorted(grouped_users, grouped_users, side="left")
  sizes = np.searchsorted(grouped_users, grouped_users, side="right") - starts
  offsets = np.arange(1, length + 1)
  neighbours = starts[:, None] + (np.arange(len(users))[:, None] - starts[:, None]
                                  + offsets[None, :]) % sizes[:, None]
  grouped_items = items[order]
  grouped = grouped_items[neighbours]
  # A user with fewer than length + 1 engagements would wrap onto the engagement itself.
  empty = (offsets[None, :] >= sizes[:, None]) | (grouped == grouped_items[:, None])
  grouped = np.where(empty, preprocessing.PADDING, grouped)
  # Left-align: the present slots first, in their random order.
  grouped = np.take_along_axis(grouped, np.argsort(empty, axis=1, kind="stable"), axis=1)
  histories = np.empty_like(grouped, dtype=np.int64)
  histories[order] = grouped
  return histories


def resolve_mode(mode: str, events: np.ndarray) -> str:
  """RECENT_HISTORY or SAMPLED_HISTORY: `mode` itself, or for AUTO_HISTORY what the engagements'
  event types call for.

  events: the event type of each engagement (bytes or str).
  """
  if mode != AUTO_HISTORY:
    return mode
  ratings = np.mean([event in (contract.RATING_EVENT, contract.RATING_EVENT.encode())
                     for event in events])
  return SAMPLED_HISTORY if ratings > 0.5 else RECENT_HISTORY
