"""Seeded generator of e-commerce-like interactions: the project's built-in default dataset.

A fresh clone trains on this data without anything to download. The data is synthetic but has the
structure a recommender is meant to exploit, so that a model using the user and the recent history
beats popularity clearly:

The world (`World.sample`)
  * Every category has a unit-norm centre in a `LATENT_DIM`-dimensional taste space and a typical
    price.
  * An item has a category (uniformly drawn), a latent embedding (its category's centre plus
    Gaussian noise, so items of one category are alike but not interchangeable), a log-normal price
    around its category's typical price, and a popularity prior (a normal log-popularity, i.e. a
    heavy-tailed, log-normal popularity).
  * A user has an interest vector (a Dirichlet-weighted mixture of the centres of 1 to
    `MAX_USER_CATEGORIES` categories plus noise) and a log-normal activity that sets the share of
    sessions that are theirs.

Behaviour (`view_logits`, `respond`)
  * A session is a sequence of distinct items viewed by one user. The first view is drawn from
    softmax(affinity_weight * <interest, embedding> + popularity); every later view adds
    continuity_weight * <previous embedding, embedding>, so the next item tends to share the
    category of the previous one and recent history is predictive.
  * A view becomes a click with probability sigmoid(click_bias + click_affinity * affinity), and a
    click becomes a purchase with probability sigmoid(purchase_bias + purchase_affinity * affinity -
    price_sensitivity * log(price / median price)). So a purchase always follows a click on the same
    item in the same session, which always follows a view of it.

Time
  * Within a session, the click follows its view, the purchase its click, and the next view all of
    them, each by at least a second; a user's timestamps therefore strictly increase.
  * A user's sessions are spread over the `WINDOW_DAYS` days from `WINDOW_START` (2024-01-01 UTC):
    the idle time of the window is cut into random (exponential) gaps, so sessions are days apart
    for a typical user and hours apart for the most active ones.

The number of sessions is whatever yields `n_events` events; the last session is cut short. The
same seed gives byte-identical files, whatever the machine.

Files, in the generic input format of `components.data.ingest`:
  * `interactions.csv`: user_id,item_id,timestamp,event (event in view/click/purchase), sorted by
    time. Ids are strings such as "u00042" and "i00017".
  * `items.csv`: item_id,category,price,title.

The world and the behaviour functions are kept apart from the session loop and the file writing so
that a simulator which shows slates and logs propensities can reuse them.

Usage: python -m components.data.generator OUT_DIR [--seed N] [--users N] [--items N] [--events N]
"""
import argparse
import dataclasses
import os
import pathlib
from typing import Optional, Tuple

import numpy as np
import pandas as pd

# Sized for a demo that trains in about a minute on 2 CPU cores.
DEFAULT_SEED = 0
DEFAULT_USERS = 1_000
DEFAULT_ITEMS = 500
DEFAULT_EVENTS = 50_000
DEFAULT_CATEGORIES = 10

INTERACTIONS_FILE = "interactions.csv"
ITEMS_FILE = "items.csv"

WINDOW_START = 1_704_067_200  # 2024-01-01T00:00:00Z
WINDOW_DAYS = 90

LATENT_DIM = 16
MAX_USER_CATEGORIES = 3
CATEGORY_NAMES = ("books", "electronics", "home", "garden", "toys", "sports", "beauty", "fashion",
                  "grocery", "music")

# Session length is 1 + Poisson(MEAN_SESSION_VIEWS - 1) views, capped so the step loop stays short.
MEAN_SESSION_VIEWS = 8
MAX_SESSION_VIEWS = 40
# Sessions simulated together: bounds the [sessions, items] logits in memory. A constant, so that
# the random draws, and thus the files, do not depend on the machine.
SESSIONS_PER_CHUNK = 1024


@dataclasses.dataclass(frozen=True)
class Behaviour:
  """How users choose, click and buy; the weights are on the logit scale."""
  affinity_weight: float = 4.0
  continuity_weight: float = 3.0
  click_bias: float = -2.5
  click_affinity: float = 2.0
  purchase_bias: float = -2.5
  purchase_affinity: float = 1.5
  price_sensitivity: float = 0.8


@dataclasses.dataclass(frozen=True)
class World:
  """The catalog and the users' hidden tastes; arrays are indexed by item or user number."""
  item_category: np.ndarray  # [n_items] int, index into category_names
  item_price: np.ndarray  # [n_items] float, > 0
  item_popularity: np.ndarray  # [n_items] float, log-popularity prior
  item_embedding: np.ndarray  # [n_items, LATENT_DIM]
  user_interest: np.ndarray  # [n_users, LATENT_DIM]
  user_activity: np.ndarray  # [n_users] float, sums to 1
  category_names: Tuple[str, ...]

  @classmethod
  def sample(cls, rng: np.random.Generator, n_users: int, n_items: int,
             n_categories: int) -> "World":
    """Draws a catalog and a user population as described in the module docstring."""
    centres = _unit_rows(rng.normal(size=(n_categories, LATENT_DIM)))
    typical_price = rng.lognormal(mean=np.log(30.0), sigma=0.7, size=n_categories)

    item_category = rng.integers(n_categories, size=n_items)
    # Noise of norm about 0.5 around unit-norm centres: a category's items stay closer to each
    # other than to other categories' items.
    item_embedding = centres[item_category] + rng.normal(
        scale=0.5 / np.sqrt(LATENT_DIM), size=(n_items, LATENT_DIM))
    item_price = np.maximum(
        np.round(typical_price[item_category] * rng.lognormal(sigma=0.5, size=n_items), 2), 0.01)
    item_popularity = rng.normal(scale=1.0, size=n_items)

    user_interest = _mixture_of_centres(rng, centres, n_users) + rng.normal(
        scale=0.3 / np.sqrt(LATENT_DIM), size=(n_users, LATENT_DIM))
    activity = rng.lognormal(sigma=0.5, size=n_users)
    return cls(item_category=item_category, item_price=item_price,
               item_popularity=item_popularity, item_embedding=item_embedding,
               user_interest=user_interest, user_activity=activity / activity.sum(),
               category_names=_category_names(n_categories))

  @property
  def n_items(self) -> int:
    return len(self.item_category)


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
  return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def _mixture_of_centres(rng: np.random.Generator, centres: np.ndarray,
                        n_users: int) -> np.ndarray:
  """Per user, a Dirichlet-weighted mix of 1..MAX_USER_CATEGORIES distinct category centres."""
  n_categories = len(centres)
  n_liked = rng.integers(1, min(MAX_USER_CATEGORIES, n_categories) + 1, size=n_users)
  # A random permutation per user, of which the first n_liked categories are the liked ones.
  liked = np.argsort(rng.random((n_users, n_categories)), axis=1)
  weights = rng.dirichlet(np.ones(n_categories), size=n_users)
  weights[np.arange(n_categories) >= n_liked[:, None]] = 0.0
  weights /= weights.sum(axis=1, keepdims=True)
  return np.einsum("uk,ukd->ud", weights, centres[liked])


def _category_names(n_categories: int) -> Tuple[str, ...]:
  """Readable names for the first categories, numbered ones beyond them."""
  return tuple(CATEGORY_NAMES[k] if k < len(CATEGORY_NAMES) else f"category{k:02d}"
               for k in range(n_categories))


def affinity(world: World, users: np.ndarray, items: np.ndarray) -> np.ndarray:
  """<interest, embedding> of each (user, item) pair: the hidden taste signal."""
  return np.einsum("nd,nd->n", world.user_interest[users], world.item_embedding[items])


def view_logits(world: World, behaviour: Behaviour, users: np.ndarray,
                previous_items: Optional[np.ndarray]) -> np.ndarray:
  """[len(users), n_items] logits of the next view; None previous_items for a session's start."""
  logits = behaviour.affinity_weight * (world.user_interest[users] @ world.item_embedding.T)
  logits += world.item_popularity
  if previous_items is not None:
    logits += behaviour.continuity_weight * (
        world.item_embedding[previous_items] @ world.item_embedding.T)
  return logits


def respond(world: World, behaviour: Behaviour, rng: np.random.Generator, users: np.ndarray,
            items: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  """Whether each viewed item is clicked, and whether it is then bought (bought ⊂ clicked)."""
  taste = affinity(world, users, items)
  p_click = _sigmoid(behaviour.click_bias + behaviour.click_affinity * taste)
  relative_price = np.log(world.item_price[items] / np.median(world.item_price))
  p_purchase = _sigmoid(behaviour.purchase_bias + behaviour.purchase_affinity * taste
                        - behaviour.price_sensitivity * relative_price)
  clicked = rng.random(len(items)) < p_click
  purchased = clicked & (rng.random(len(items)) < p_purchase)
  return clicked, purchased


def _sigmoid(x: np.ndarray) -> np.ndarray:
  return 1.0 / (1.0 + np.exp(-x))


def _simulate_views(world: World, behaviour: Behaviour, rng: np.random.Generator,
                    n_sessions: int) -> pd.DataFrame:
  """One row per view (session, step, user, item) of n_sessions new sessions."""
  max_views = min(MAX_SESSION_VIEWS, world.n_items)
  lengths = np.minimum(1 + rng.poisson(MEAN_SESSION_VIEWS - 1, size=n_sessions), max_views)
  users = rng.choice(len(world.user_activity), size=n_sessions, p=world.user_activity)
  items = np.concatenate([
      _session_items(world, behaviour, rng, users[start:start + SESSIONS_PER_CHUNK],
                     lengths[start:start + SESSIONS_PER_CHUNK], max_views)
      for start in range(0, n_sessions, SESSIONS_PER_CHUNK)])
  session, step = np.nonzero(np.arange(max_views) < lengths[:, None])
  return pd.DataFrame({"session": session, "step": step, "user": users[session],
                       "item": items[session, step]})


def _session_items(world: World, behaviour: Behaviour, rng: np.random.Generator,
                   users: np.ndarray, lengths: np.ndarray, max_views: int) -> np.ndarray:
  """[len(users), max_views] items viewed, all sessions advanced together step by step."""
  seen = np.zeros((len(users), world.n_items), dtype=bool)
  items = np.zeros((len(users), max_views), dtype=np.int64)
  for step in range(lengths.max()):
    active = np.flatnonzero(lengths > step)
    logits = view_logits(world, behaviour, users[active],
                         items[active, step - 1] if step else None)
    logits[seen[active]] = -np.inf  # no item is viewed twice in a session
    chosen = _sample_softmax(rng, logits)
    items[active, step] = chosen
    seen[active, chosen] = True
  return items


def _sample_softmax(rng: np.random.Generator, logits: np.ndarray) -> np.ndarray:
  """One draw per row from softmax(logits), by inverting the row's cumulative distribution."""
  cumulative = np.cumsum(np.exp(logits - logits.max(axis=1, keepdims=True)), axis=1)
  threshold = rng.random(len(logits)) * cumulative[:, -1]
  # The first index whose cumulative weight exceeds the threshold; the minimum guards rounding.
  return np.minimum((cumulative <= threshold[:, None]).sum(axis=1), logits.shape[1] - 1)


def _simulate_events(world: World, behaviour: Behaviour, rng: np.random.Generator,
                     n_events: int) -> pd.DataFrame:
  """Exactly n_events rows (session, user, item, event, offset in seconds from session start).

  Sessions are simulated in batches until they hold enough events; the last one is cut short.
  """
  batches, total, session_offset = [], 0, 0
  events_per_session = MEAN_SESSION_VIEWS * 1.3  # a view, sometimes a click, seldom a purchase
  while total < n_events:
    n_sessions = int(np.ceil((n_events - total) / events_per_session * 1.1)) + 1
    views = _simulate_views(world, behaviour, rng, n_sessions)
    views["session"] += session_offset
    batch = _expand_responses(world, behaviour, rng, views)
    batches.append(batch)
    total += len(batch)
    session_offset += n_sessions
  return pd.concat(batches, ignore_index=True).iloc[:n_events]


def _expand_responses(world: World, behaviour: Behaviour, rng: np.random.Generator,
                      views: pd.DataFrame) -> pd.DataFrame:
  """Adds click and purchase rows after their views and times every row within its session."""
  users, items = views["user"].to_numpy(), views["item"].to_numpy()
  clicked, purchased = respond(world, behaviour, rng, users, items)
  # Seconds from the view to the click, from the click to the purchase, from the last of them to
  # the next view: at least 1 s each, so timestamps strictly increase within a session.
  to_click = 1 + rng.geometric(1 / 10, size=len(views))
  to_purchase = 1 + rng.geometric(1 / 60, size=len(views))
  to_next = 1 + rng.geometric(1 / 30, size=len(views))
  step_seconds = to_next + clicked * to_click + purchased * to_purchase
  session = views["session"].to_numpy()
  view_offset = _exclusive_cumsum_by_group(step_seconds, session)

  per_view = 1 + clicked.astype(int) + purchased.astype(int)
  row = np.repeat(np.arange(len(views)), per_view)
  kind = np.arange(len(row)) - np.repeat(np.cumsum(per_view) - per_view, per_view)  # 0, 1, 2
  offset = view_offset[row] + np.select(
      [kind == 1, kind == 2], [to_click[row], to_click[row] + to_purchase[row]], 0)
  return pd.DataFrame({"session": session[row], "user": users[row], "item": items[row],
                       "event": np.array(["view", "click", "purchase"])[kind],
                       "offset": offset, "duration": _group_total(step_seconds, session)[row]})


def _exclusive_cumsum_by_group(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
  """Running total of values before each row within its group (rows grouped contiguously)."""
  totals = np.cumsum(values) - values
  starts = np.r_[True, groups[1:] != groups[:-1]]
  return totals - np.maximum.accumulate(np.where(starts, totals, 0))


def _group_total(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
  """Each row's group total (rows grouped contiguously)."""
  return pd.Series(values).groupby(groups).transform("sum").to_numpy()


def _place_sessions(events: pd.DataFrame, rng: np.random.Generator) -> np.ndarray:
  """Absolute timestamps: each user's sessions in order, separated by random idle gaps.

  A user with k sessions of total length D gets k + 1 exponential gaps scaled to share the
  window's remaining WINDOW_DAYS * 86400 - D seconds, so every session lies in the window.
  """
  sessions = events.groupby("session", sort=True).agg(user=("user", "first"),
                                                       duration=("duration", "first"))
  # gap: idle time before the session; tail: after it, used for the user's last session only.
  sessions["gap"] = rng.exponential(size=len(sessions))
  sessions["tail"] = rng.exponential(size=len(sessions))
  by_user = sessions.groupby("user")
  idle = np.maximum(WINDOW_DAYS * 86_400 - by_user["duration"].transform("sum"), 0)
  all_gaps = by_user["gap"].transform("sum") + by_user["tail"].transform("last")
  gap_seconds = np.floor(idle * by_user["gap"].cumsum() / all_gaps)
  start = WINDOW_START + gap_seconds + by_user["duration"].cumsum() - sessions["duration"]
  return (start.loc[events["session"]].to_numpy() + events["offset"].to_numpy()).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class GeneratedDataset:
  """Paths of a generated dataset's files."""
  interactions: pathlib.Path
  items: pathlib.Path


def generate_dataset(out_dir: os.PathLike, *, seed: int = DEFAULT_SEED,
                     n_users: int = DEFAULT_USERS, n_items: int = DEFAULT_ITEMS,
                     n_events: int = DEFAULT_EVENTS,
                     n_categories: int = DEFAULT_CATEGORIES) -> GeneratedDataset:
  """Writes interactions.csv and items.csv into out_dir (created if needed), each atomically."""
  for name, value in (("n_users", n_users), ("n_items", n_items), ("n_events", n_events),
                      ("n_categories", n_categories)):
    if value < 1:
      raise ValueError(f"{name} must be at least 1, got {value}")
  rng = np.random.default_rng(seed)
  world = World.sample(rng, n_users, n_items, n_categories)
  events = _simulate_events(world, Behaviour(), rng, n_events)
  # Stable sort: same-second events keep simulation order, which is time order within a user.
  events = events.assign(timestamp=_place_sessions(events, rng)).sort_values(
      "timestamp", kind="stable")

  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  dataset = GeneratedDataset(interactions=out_dir / INTERACTIONS_FILE, items=out_dir / ITEMS_FILE)
  _write_csv(_items_frame(world), dataset.items)
  _write_csv(pd.DataFrame({
      "user_id": _ids("u", events["user"]),
      "item_id": _ids("i", events["item"]),
      "timestamp": events["timestamp"],
      "event": events["event"],
  }), dataset.interactions)
  return dataset


def ensure_dataset(out_dir: os.PathLike) -> GeneratedDataset:
  """The default dataset in out_dir, generated only if absent so re-runs leave the files alone.

  Files are written atomically, so their presence means they are complete.
  """
  out_dir = pathlib.Path(out_dir)
  dataset = GeneratedDataset(interactions=out_dir / INTERACTIONS_FILE, items=out_dir / ITEMS_FILE)
  if dataset.interactions.exists() and dataset.items.exists():
    return dataset
  return generate_dataset(out_dir)


def _ids(prefix: str, numbers: pd.Series) -> pd.Series:
  return prefix + numbers.map("{:05d}".format)


def _items_frame(world: World) -> pd.DataFrame:
  category = np.array(world.category_names)[world.item_category]
  numbers = pd.Series(np.arange(world.n_items))
  return pd.DataFrame({
      "item_id": _ids("i", numbers),
      "category": category,
      "price": world.item_price,
      "title": [f"{name.capitalize()} item {n}" for name, n in zip(category, numbers)],
  })


def _write_csv(frame: pd.DataFrame, path: pathlib.Path) -> None:
  """Writes through a temporary file in the same directory so readers never see a partial file."""
  temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  try:
    frame.to_csv(temp, index=False, float_format="%.2f", lineterminator="\n")
    os.replace(temp, path)
  finally:
    temp.unlink(missing_ok=True)


def main(argv: Optional[list] = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
  parser.add_argument("out_dir", type=pathlib.Path, help="Directory to write the CSV files to.")
  parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
  parser.add_argument("--users", type=int, default=DEFAULT_USERS)
  parser.add_argument("--items", type=int, default=DEFAULT_ITEMS)
  parser.add_argument("--events", type=int, default=DEFAULT_EVENTS)
  parser.add_argument("--categories", type=int, default=DEFAULT_CATEGORIES)
  args = parser.parse_args(argv)
  dataset = generate_dataset(args.out_dir, seed=args.seed, n_users=args.users,
                             n_items=args.items, n_events=args.events,
                             n_categories=args.categories)
  print(f"Wrote {dataset.interactions} and {dataset.items}")


if __name__ == "__main__":
  main()
