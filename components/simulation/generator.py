"""The project's built-in default dataset: an impression log of the seeded simulator.

A fresh clone trains on this data without anything to download. The simulator
(components/simulation/simulator.py, whose docstring is the behaviour model) runs the platform's
stochastic `LoggingPolicy` on a sampled world, and every impression it shows is logged, as a
production impression log would be, with the propensity the policy had of showing it.

Time
  * Each step (one slate) takes 5 s plus a geometric number of seconds (mean 60 s), at most
    10 minutes; all impressions of a slate share the step's timestamp.
  * A user's sessions are spread over the `WINDOW_DAYS` days from `WINDOW_START` (2024-01-01 UTC),
    in order, at least `MIN_SESSION_GAP` seconds apart: the window's idle time is cut into random
    (exponential) gaps, so sessions are days apart for a typical user and hours apart for the most
    active. A gap's draw is divided by the probability that the session before it brought the
    user back (`simulator.return_probability`): a disappointed user takes longer to return. The
    pipeline cuts sessions at 30 minutes of inactivity and recovers these exactly.

Files, in the generic input format of components/data/ingest.py:
  * `interactions.csv`: user_id,item_id,timestamp,event,price,session_id,position,propensity;
    one row per impression, event being its strongest outcome: impression (not clicked), click
    (clicked, not bought) or purchase. Sorted by time, then session, then position. Ids look like
    "u00042", "i00017", "s0000123".
  * `items.csv`: item_id,category,price,title.

Sessions are simulated until there are `n_events` impressions; the last session is cut short.
Users' interest walks, click histories and trust go on across all of a dataset's sessions. The
users behave by `simulator.DYNAMICS[dynamics]` (satisfaction and clickbait by default). At the
default sizes (1,000 users, 500 items, 100,000 impressions) about 13% of impressions are clicked
and nearly a quarter of the clicks are bought. The same seed gives byte-identical files,
whatever the machine.

Usage: python -m components.simulation.generator OUT_DIR [--seed N] [--users N] [--items N]
         [--events N] [--dynamics satisfaction|independent]
"""
import argparse
import dataclasses
import os
import pathlib
from typing import Optional, Tuple

import numpy as np
import pandas as pd

from components.simulation import policies
from components.simulation import simulator

# Sized for a demo that trains in about a minute on 2 CPU cores.
DEFAULT_SEED = 0
DEFAULT_USERS = 1_000
DEFAULT_ITEMS = 500
DEFAULT_EVENTS = 100_000
DEFAULT_CATEGORIES = 10
# Impressions per user at the default sizes. Users stop coming back, so a larger dataset needs
# more of them (`users_for`).
EVENTS_PER_USER = DEFAULT_EVENTS // DEFAULT_USERS

INTERACTIONS_FILE = "interactions.csv"
ITEMS_FILE = "items.csv"

WINDOW_START = 1_704_067_200  # 2024-01-01T00:00:00Z
WINDOW_DAYS = 90
MIN_SESSION_GAP = 3_600
# Ids are a prefix and a zero-padded number: "u00042" is user 42 of the simulator's world.
USER_PREFIX, ITEM_PREFIX, SESSION_PREFIX = "u", "i", "s"
ID_DIGITS, SESSION_ID_DIGITS = 5, 7
PRICE_FORMAT, PROPENSITY_FORMAT = "%.2f", "%.6g"
MIN_STEP_SECONDS, MEAN_EXTRA_STEP_SECONDS, MAX_STEP_SECONDS = 5, 60, 600
_EVENTS = np.array(["impression", "click", "purchase"])
# Bounds a dataset's sessions per user: of the users who always come back (every user of the
# independent dynamics), whose sessions would otherwise never end.
MAX_SESSIONS_PER_USER = 100


def default_world(seed: int = DEFAULT_SEED, n_users: int = DEFAULT_USERS,
                  n_items: int = DEFAULT_ITEMS, n_categories: int = DEFAULT_CATEGORIES,
                  dynamics: str = simulator.DEFAULT_DYNAMICS) -> simulator.World:
  """The world the dataset of this seed, sizes and dynamics was logged in."""
  return simulator.World.sample(np.random.default_rng(seed), n_users, n_items, n_categories,
                                simulator.DYNAMICS[dynamics].clickbait_share)


def users_for(n_events: int) -> int:
  """Users for a dataset of n_events impressions at the default sizes' ratio."""
  return max(1, n_events // EVENTS_PER_USER)


def logging_policy(world: simulator.World,
                   seed: int = DEFAULT_SEED) -> policies.LoggingPolicy:
  """The policy that logged the dataset of this seed in `world`."""
  # Its own stream, so the policy's estimate does not shift the users' draws.
  return policies.LoggingPolicy(world, seed=seed + 1)


def _impressions(world: simulator.World, user_model: simulator.UserModel,
                 rng: np.random.Generator, seed: int,
                 n_events: int) -> Tuple[pd.DataFrame, pd.DataFrame]:
  """The first n_events impressions of every user's sessions until they stop coming back.

  Round by round, every user still there has a session (`simulator.run_users`), so a user who
  is disappointed leaves the log and a satisfied one stays in it, as on a real platform. Users
  come back at most `MAX_SESSIONS_PER_USER` times. Returns the impressions and their sessions'
  outcomes.
  """
  policy = logging_policy(world, seed)
  slate_size = min(simulator.DEFAULT_SLATE_SIZE, world.n_items)
  result = simulator.run_users(world, policy, np.arange(world.n_users), MAX_SESSIONS_PER_USER,
                               rng, user_model, slate_size, max_impressions=n_events)
  if len(result.impressions) < n_events:
    raise ValueError(f"{world.n_users} users stop coming back after {len(result.impressions)} "
                     f"impressions, fewer than n_events = {n_events}: ask for more users or "
                     f"fewer events")
  impressions = result.impressions.iloc[:n_events]
  sessions = result.sessions
  return impressions, sessions[sessions["session"].isin(impressions["session"].unique())]


def _timestamps(impressions: pd.DataFrame, outcomes: pd.DataFrame,
                rng: np.random.Generator) -> np.ndarray:
  """Absolute time of every impression (see Time in the module docstring).

  outcomes: the sessions' `return_probability`, indexed by session number.
  """
  steps = impressions.drop_duplicates(["session", "step"])[["session", "user", "step"]]
  seconds = np.minimum(MIN_STEP_SECONDS + rng.geometric(1 / MEAN_EXTRA_STEP_SECONDS,
                                                        size=len(steps)), MAX_STEP_SECONDS)
  # Offset of each step from its session's start; the first step starts the session.
  offsets = steps.assign(seconds=seconds).groupby("session")["seconds"].cumsum() - seconds
  sessions = steps.assign(offset=offsets).groupby("session").agg(
      user=("user", "first"), duration=("offset", "max"))
  # gap: idle time before the session; tail: after it, used for the user's last session only.
  # A user comes back the sooner the likelier the session before made their return.
  previous = outcomes["return_probability"].loc[sessions.index].groupby(
      sessions["user"]).shift(1).fillna(1.0)
  sessions["gap"] = rng.exponential(size=len(sessions)) / previous.to_numpy()
  sessions["tail"] = rng.exponential(size=len(sessions))
  by_user = sessions.groupby("user")
  count = by_user["duration"].transform("count")
  idle = np.maximum(WINDOW_DAYS * 86_400 - by_user["duration"].transform("sum")
                    - count * MIN_SESSION_GAP, 0)
  all_gaps = by_user["gap"].transform("sum") + by_user["tail"].transform("last")
  # Before a user's k-th session (k from 1): k minimum gaps, their share of the idle time, and
  # the durations of the sessions before it.
  start = (WINDOW_START + by_user.cumcount().add(1) * MIN_SESSION_GAP
           + np.floor(idle * by_user["gap"].cumsum() / all_gaps)
           + by_user["duration"].cumsum() - sessions["duration"])
  step_time = start.loc[steps["session"]].to_numpy() + offsets.to_numpy()
  step_index = pd.MultiIndex.from_frame(steps[["session", "step"]])
  return pd.Series(step_time, index=step_index).loc[
      pd.MultiIndex.from_frame(impressions[["session", "step"]])].to_numpy().astype(np.int64)


@dataclasses.dataclass(frozen=True)
class GeneratedDataset:
  """Paths of a generated dataset's files."""
  interactions: pathlib.Path
  items: pathlib.Path


def generate_dataset(out_dir: os.PathLike, *, seed: int = DEFAULT_SEED,
                     n_users: int = DEFAULT_USERS, n_items: int = DEFAULT_ITEMS,
                     n_events: int = DEFAULT_EVENTS, n_categories: int = DEFAULT_CATEGORIES,
                     dynamics: str = simulator.DEFAULT_DYNAMICS) -> GeneratedDataset:
  """Writes interactions.csv and items.csv into out_dir (created if needed), each atomically.

  `dynamics` names the users' behaviour, a key of `simulator.DYNAMICS`.
  """
  if dynamics not in simulator.DYNAMICS:
    raise ValueError(f"dynamics must be one of {sorted(simulator.DYNAMICS)}, got {dynamics!r}")
  for name, value in (("n_users", n_users), ("n_items", n_items), ("n_events", n_events),
                      ("n_categories", n_categories)):
    if value < 1:
      raise ValueError(f"{name} must be at least 1, got {value}")
  rng = np.random.default_rng(seed)
  dynamics = simulator.DYNAMICS[dynamics]
  world = simulator.World.sample(rng, n_users, n_items, n_categories, dynamics.clickbait_share)
  impressions, outcomes = _impressions(world, dynamics.user_model, rng, seed, n_events)
  impressions["timestamp"] = _timestamps(impressions, outcomes.set_index("session"), rng)
  impressions = impressions.sort_values(["timestamp", "session", "position"], kind="stable",
                                        ignore_index=True)

  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  dataset = GeneratedDataset(interactions=out_dir / INTERACTIONS_FILE, items=out_dir / ITEMS_FILE)
  _write_csv(_items_frame(world), dataset.items)
  outcome = impressions["click"].to_numpy(int) + impressions["purchase"].to_numpy(int)
  items = impressions["item"].to_numpy()
  _write_csv(pd.DataFrame({
      "user_id": ids(USER_PREFIX, impressions["user"].to_numpy()),
      "item_id": ids(ITEM_PREFIX, items),
      "timestamp": impressions["timestamp"],
      "event": _EVENTS[outcome],
      "price": _price_texts(world)[items],
      "session_id": ids(SESSION_PREFIX, impressions["session"].to_numpy(),
                        SESSION_ID_DIGITS),
      "position": impressions["position"],
      "propensity": [PROPENSITY_FORMAT % p for p in impressions["propensity"]],
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


def ids(prefix: str, numbers: np.ndarray, digits: int = ID_DIGITS) -> np.ndarray:
  """Ids like "u00042"; each distinct number is formatted once, as millions of rows repeat them."""
  names = np.array([f"{prefix}{n:0{digits}d}" for n in range(numbers.max() + 1)], dtype=object)
  return names[numbers]


def _price_texts(world: simulator.World) -> np.ndarray:
  """Each item's price as written, formatted once per item rather than once per row."""
  return np.array([PRICE_FORMAT % price for price in world.item_price], dtype=object)


def _items_frame(world: simulator.World) -> pd.DataFrame:
  category = np.array(world.category_names)[world.item_category]
  numbers = np.arange(world.n_items)
  return pd.DataFrame({
      "item_id": ids(ITEM_PREFIX, numbers),
      "category": category,
      "price": _price_texts(world),
      "title": [f"{name.capitalize()} item {n}" for name, n in zip(category, numbers)],
  })


def _write_csv(frame: pd.DataFrame, path: pathlib.Path) -> None:
  """Writes through a temporary file in the same directory so readers never see a partial file."""
  temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  try:
    frame.to_csv(temp, index=False, lineterminator="\n")
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
  parser.add_argument("--dynamics", choices=sorted(simulator.DYNAMICS),
                      default=simulator.DEFAULT_DYNAMICS)
  args = parser.parse_args(argv)
  dataset = generate_dataset(args.out_dir, seed=args.seed, n_users=args.users,
                             n_items=args.items, n_events=args.events,
                             n_categories=args.categories, dynamics=args.dynamics)
  print(f"Wrote {dataset.interactions} and {dataset.items}")


if __name__ == "__main__":
  main()
