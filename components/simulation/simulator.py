"""A seeded e-commerce user simulator: the default dataset's source and the RL environment.

The platform shows slates; simulated users examine, click, buy and leave. The same code writes the
logged dataset (with the logging policy's propensities, components/simulation/generator.py) and runs
any policy on-policy (`simulate`), so a ranking policy can be judged by the clicks, purchases and
revenue it earns, not only off-policy from logs.

The world (`World.sample`)
  * Every category has a unit-norm centre in a `LATENT_DIM`-dimensional taste space and a typical
    price. An item has a category, an embedding (its centre plus noise), a log-normal price around
    the category's typical price and a quality prior (`item_quality`, standard normal; it also
    drives popularity).
  * A user has a long-term interest vector (a Dirichlet mix of 1 to `MAX_USER_CATEGORIES` category
    centres plus noise) and a log-normal activity: the share of sessions that are theirs. Each
    session's user is drawn independently by activity.

Interest drift (`UserModel.session_drift`, `UserModel.interest_step`)
  * Across sessions, long-term interest does a Gaussian random walk: a user's k-th session starts
    from interest + `session_drift` * (sum of k standard normal steps) / sqrt(LATENT_DIM), so the
    offset grows like session_drift * sqrt(k) in norm. The walk is per call of `run_sessions`,
    which can continue an earlier call's (`SimulationResult.walk`); `simulate` starts it at zero.
  * Within a session, interest moves toward what was clicked: after a step with clicks,
    interest <- (1 - interest_step) * interest + interest_step * mean(clicked embeddings). This
    in-session drift is the current mission and does not carry over to the next session.

A step: the policy shows a slate of `slate_size` distinct items, then, in this order, the user
examines, clicks and buys, interest drifts toward the clicks, and the user stays or leaves.
  * relevance(item) = affinity_weight * <interest, embedding> + quality_weight * quality.
  * Position bias: position p (0-based) is examined with probability 1 / (1 + p) **
    examination_decay; an unexamined item is not clicked.
  * An examined item is clicked with probability sigmoid(click_bias + relevance).
  * A clicked item is bought with probability sigmoid(purchase_bias + purchase_affinity *
    <interest, embedding> - price_sensitivity * log(price / median price)). So purchases are a
    subset of clicks, and expensive items sell less.

Leaving: after each step the user leaves with probability sigmoid(leave_bias + boredom_weight *
boredom - satisfaction_weight * [the step had a click]), where boredom counts consecutive steps
without a click, this one included. With the defaults that is 0.12 after a step with a click,
then 0.45, 0.65, 0.80, ... after 1, 2, 3, ... steps without one: bored users leave, satisfied ones
stay. A session ends after `max_steps` steps at the latest.

Policies (`Policy.slate`; the reference ones are in components/simulation/policies.py) see what
a platform sees, `SlateContext`, never the hidden interest (except `OraclePolicy`, the reference
that is handed the world):
  * `users`: the sessions' users;
  * `clicked`: the items clicked so far in the session;
  * `history`: the user's clicks across sessions, in earlier sessions and so far in this one, as
    the pipeline's `history` feature holds a user's engaged items across sessions (clicks are all
    the engagements: a purchase is a click). Sessions of a batch (see Vectorised) run side by
    side, so it is brought up to date at the end of each batch: a session sees its user's clicks
    in sessions of earlier batches, not in the user's other sessions of its own batch. Like the
    interest walk it is per call of `run_sessions`, which can continue an earlier call's
    (`SimulationResult.history`); `simulate` starts every user's empty.
`clicked` and `history` hold the `CONTEXT_HISTORY` most recent items, oldest first, padded in
front with `NO_ITEM`.

Each policy returns the items it shows, position 0 first, and per position its propensity:

  propensity[j] = P(item_j at position j | items_0 .. item_{j-1} at positions 0 .. j-1),

the probability the policy had of putting that item there given the items it had already placed
above it. For a Plackett–Luce policy with weights w = exp(logits) it is
w[item_j] / sum(w[i] for the items i not among item_0 .. item_{j-1}); for `UniformPolicy`,
1 / (n_items - j); for a deterministic policy, 1. The product over positions is the
probability of the whole ordered slate. Off-policy estimators use these; the environment refuses
a slate with repeated or unknown items or propensities outside (0, 1].

Vectorised: sessions advance together, step by step, in batches of `SESSIONS_PER_BATCH`; the
policy is asked for one batch of slates per step.

Determinism: the same seed gives the same results on any machine; the batch size is a constant,
so batching, and thus the order of random draws, never depends on the machine.
"""
import dataclasses
from typing import Optional, Protocol, Tuple

import numpy as np
import pandas as pd

LATENT_DIM = 16
MAX_USER_CATEGORIES = 3
CATEGORY_NAMES = ("books", "electronics", "home", "garden", "toys", "sports", "beauty", "fashion",
                  "grocery", "music")
DEFAULT_SLATE_SIZE = 10
# Clicked items the policy sees, in the session and across sessions; the pipeline's history
# length.
CONTEXT_HISTORY = 10
# Bounds the [sessions, items] arrays in memory; a constant so that random draws, and thus
# results, do not depend on the machine.
SESSIONS_PER_BATCH = 1024
NO_ITEM = -1


@dataclasses.dataclass(frozen=True)
class World:
  """The catalog and the users' hidden tastes; arrays are indexed by item or user number."""
  item_category: np.ndarray  # [n_items] int, index into category_names
  item_price: np.ndarray  # [n_items] float, > 0
  item_quality: np.ndarray  # [n_items] float, standard normal prior
  item_embedding: np.ndarray  # [n_items, LATENT_DIM]
  user_interest: np.ndarray  # [n_users, LATENT_DIM], long-term
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
    user_interest = _mixture_of_centres(rng, centres, n_users) + rng.normal(
        scale=0.3 / np.sqrt(LATENT_DIM), size=(n_users, LATENT_DIM))
    activity = rng.lognormal(sigma=0.5, size=n_users)
    return cls(item_category=item_category, item_price=item_price,
               item_quality=rng.normal(size=n_items), item_embedding=item_embedding,
               user_interest=user_interest, user_activity=activity / activity.sum(),
               category_names=tuple(CATEGORY_NAMES[k] if k < len(CATEGORY_NAMES)
                                    else f"category{k:02d}" for k in range(n_categories)))

  @property
  def n_items(self) -> int:
    return len(self.item_category)

  @property
  def n_users(self) -> int:
    return len(self.user_activity)


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


@dataclasses.dataclass(frozen=True)
class UserModel:
  """How users examine, click, buy, drift and leave (module docstring); logits unless noted."""
  affinity_weight: float = 4.0
  quality_weight: float = 0.5
  click_bias: float = -4.0
  examination_decay: float = 1.0
  purchase_bias: float = -3.0
  purchase_affinity: float = 1.5
  price_sensitivity: float = 0.8
  interest_step: float = 0.3  # share of the clicked items' embedding mixed into interest
  session_drift: float = 0.05  # scale of the random walk of interest across sessions
  leave_bias: float = -1.0
  boredom_weight: float = 0.8
  satisfaction_weight: float = 1.0
  max_steps: int = 20


@dataclasses.dataclass(frozen=True)
class SlateContext:
  """What a policy may see of a batch of sessions."""
  users: np.ndarray  # [batch] user numbers
  clicked: np.ndarray  # [batch, CONTEXT_HISTORY] items clicked so far, oldest first, NO_ITEM pads
  # [batch, CONTEXT_HISTORY] the user's clicks across sessions up to now (module docstring),
  # oldest first, NO_ITEM pads
  history: np.ndarray
  slate_size: int


@dataclasses.dataclass(frozen=True)
class Slate:
  """The items a policy shows each session of a batch, with what off-policy estimators need."""
  items: np.ndarray  # [batch, slate_size] distinct item numbers, position 0 first
  # [batch, slate_size] in (0, 1]: P(item at this position | the items above it), module docstring
  propensities: np.ndarray


class Policy(Protocol):
  """Chooses the slates shown to a batch of sessions."""

  def slate(self, context: SlateContext, rng: np.random.Generator) -> Slate:
    ...


def relevance(user_model: UserModel, affinity: np.ndarray, quality: np.ndarray) -> np.ndarray:
  """relevance = affinity_weight * <interest, embedding> + quality_weight * quality."""
  return user_model.affinity_weight * affinity + user_model.quality_weight * quality


def _sigmoid(x: np.ndarray) -> np.ndarray:
  return 1.0 / (1.0 + np.exp(-x))


def examination_probability(positions: np.ndarray, user_model: UserModel) -> np.ndarray:
  """Chance that a user looks at 0-based `positions` at all: 1 / (1 + position) ** decay."""
  return 1.0 / (1.0 + positions) ** user_model.examination_decay


def _append_items(context: np.ndarray, items: np.ndarray) -> np.ndarray:
  """Each row's context items followed by its `items` other than NO_ITEM, the last kept.

  Pads (NO_ITEM) are moved to the front by a stable sort on "is an item", which keeps the items'
  order, so the context stays oldest first for every row at once.
  """
  combined = np.concatenate([context, items], axis=1)
  order = np.argsort(combined != NO_ITEM, axis=1, kind="stable")
  return np.take_along_axis(combined, order, axis=1)[:, -CONTEXT_HISTORY:]


def _history_after(history: np.ndarray, users: np.ndarray,
                   impressions: pd.DataFrame) -> np.ndarray:
  """Every user's history after a batch: their clicks appended in session, step, position order.

  Args:
    history: [n_users, CONTEXT_HISTORY] each user's history before the batch.
    users: The user of each of the batch's sessions.
    impressions: The batch's impressions, with `batch_session` numbering its sessions.
  """
  clicks = impressions[impressions["click"]].sort_values(["batch_session", "step", "position"])
  clicked_users = users[clicks["batch_session"].to_numpy()]
  # 0 for a user's latest click of the batch: only the CONTEXT_HISTORY latest can be kept.
  from_latest = clicks.groupby(clicked_users).cumcount(ascending=False).to_numpy()
  kept = from_latest < CONTEXT_HISTORY
  updated_users, row = np.unique(clicked_users[kept], return_inverse=True)
  latest = np.full((len(updated_users), CONTEXT_HISTORY), NO_ITEM, dtype=np.int64)
  latest[row, CONTEXT_HISTORY - 1 - from_latest[kept]] = clicks["item"].to_numpy()[kept]
  history_after = history.copy()
  history_after[updated_users] = _append_items(history[updated_users], latest)
  return history_after


def _session_interests(world: World, user_model: UserModel, users: np.ndarray,
                       walk: np.ndarray,
                       rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
  """Each session's starting interest, and every user's walk after these sessions.

  Args:
    world: The users' long-term interests.
    user_model: The walk's scale.
    users: The user of each session, in session order.
    walk: [n_users, LATENT_DIM] each user's offset from long-term interest before the sessions.
    rng: Draws one walk step per session.
  """
  steps = rng.normal(scale=user_model.session_drift / np.sqrt(LATENT_DIM),
                     size=(len(users), LATENT_DIM))
  # In session order per user, so that a user's k-th session has taken k steps.
  session_walk = walk[users] + pd.DataFrame(steps).groupby(users).cumsum().to_numpy()
  walk_after = walk.copy()
  np.add.at(walk_after, users, steps)
  return world.user_interest[users] + session_walk, walk_after


@dataclasses.dataclass
class SimulationResult:
  """Per-session outcomes and every impression, in session then step then position order."""
  sessions: pd.DataFrame  # session, user, steps, clicks, purchases, revenue
  impressions: pd.DataFrame  # session, user, step, position, item, propensity, click,
  #                            purchase, price
  # [n_users, LATENT_DIM] each user's interest walk after these sessions, and
  # [n_users, CONTEXT_HISTORY] their click history (module docstring); pass both to the next
  # `run_sessions` to go on with the same users.
  walk: np.ndarray
  history: np.ndarray


def _simulate_batch(world: World, policy: Policy, user_model: UserModel, slate_size: int,
                    users: np.ndarray, interests: np.ndarray, histories: np.ndarray,
                    rng: np.random.Generator) -> pd.DataFrame:
  """Impressions of one batch of sessions, advanced together step by step.

  `interests` and `histories` are each session's at its start.
  """
  batch = len(users)
  interests = interests.copy()
  clicked_context = np.full((batch, CONTEXT_HISTORY), NO_ITEM, dtype=np.int64)
  history_context = histories.copy()
  boredom = np.zeros(batch)
  active = np.ones(batch, dtype=bool)
  median_price = np.median(world.item_price)
  positions = np.arange(slate_size)
  rows = []
  for step in range(user_model.max_steps):
    index = np.flatnonzero(active)
    if not len(index):
      break
    slate = policy.slate(SlateContext(users=users[index], clicked=clicked_context[index],
                                      history=history_context[index], slate_size=slate_size),
                         rng)
    _check_slate(slate, len(index), slate_size, world.n_items)
    embeddings = world.item_embedding[slate.items]  # [n, K, D]
    affinity = np.einsum("nd,nkd->nk", interests[index], embeddings)
    p_click = examination_probability(positions, user_model) * _sigmoid(
        user_model.click_bias + relevance(user_model, affinity, world.item_quality[slate.items]))
    clicks = rng.random(p_click.shape) < p_click
    p_purchase = _sigmoid(user_model.purchase_bias + user_model.purchase_affinity * affinity
                          - user_model.price_sensitivity
                          * np.log(world.item_price[slate.items] / median_price))
    purchases = clicks & (rng.random(p_click.shape) < p_purchase)
    rows.append(pd.DataFrame({
        "batch_session": np.repeat(index, slate_size), "step": step,
        "position": np.tile(positions, len(index)), "item": slate.items.ravel(),
        "propensity": slate.propensities.ravel(), "click": clicks.ravel(),
        "purchase": purchases.ravel()}))

    any_click = clicks.any(axis=1)
    clicked_mean = np.einsum("nk,nkd->nd", clicks, embeddings) / np.maximum(
        clicks.sum(axis=1, keepdims=True), 1)
    interests[index[any_click]] = ((1 - user_model.interest_step) * interests[index[any_click]]
                                   + user_model.interest_step * clicked_mean[any_click])
    clicked_items = np.where(clicks, slate.items, NO_ITEM)
    clicked_context[index] = _append_items(clicked_context[index], clicked_items)
    history_context[index] = _append_items(history_context[index], clicked_items)
    boredom[index] = np.where(any_click, 0, boredom[index] + 1)
    p_leave = _sigmoid(user_model.leave_bias + user_model.boredom_weight * boredom[index]
                       - user_model.satisfaction_weight * any_click)
    active[index[rng.random(len(index)) < p_leave]] = False
  return pd.concat(rows, ignore_index=True)


def _check_slate(slate: Slate, batch: int, slate_size: int, n_items: int) -> None:
  """Refuses a policy's slate that is not one the environment can show and log."""
  if slate.items.shape != (batch, slate_size) or slate.propensities.shape != (batch, slate_size):
    raise ValueError(f"a policy must return items and propensities of shape "
                     f"{(batch, slate_size)}, got {slate.items.shape} and "
                     f"{slate.propensities.shape}")
  if slate.items.min() < 0 or slate.items.max() >= n_items:
    raise ValueError(f"a policy returned items outside [0, {n_items})")
  ordered = np.sort(slate.items, axis=1)
  if (ordered[:, 1:] == ordered[:, :-1]).any():
    raise ValueError("a policy showed an item twice in one slate")
  if not ((slate.propensities > 0) & (slate.propensities <= 1)).all():
    raise ValueError("a policy returned propensities outside (0, 1]")


def run_sessions(world: World, policy: Policy, n_sessions: int, rng: np.random.Generator,
                 user_model: UserModel = UserModel(), slate_size: int = DEFAULT_SLATE_SIZE,
                 walk: Optional[np.ndarray] = None,
                 history: Optional[np.ndarray] = None) -> SimulationResult:
  """Simulates n_sessions sessions of users drawn by activity; see `simulate`.

  Args:
    world: The catalog and the users.
    policy: Chooses every slate.
    n_sessions: How many sessions, numbered from 0.
    rng: All of the users' draws and the policy's.
    user_model: How users behave.
    slate_size: Items per slate.
    walk: Each user's interest walk so far (`SimulationResult.walk` of the sessions before);
      None for users' first sessions.
    history: Each user's click history so far (`SimulationResult.history` of the sessions
      before); None for users' first sessions.
  """
  if n_sessions < 1:
    raise ValueError(f"n_sessions must be at least 1, got {n_sessions}")
  if not 0 < slate_size <= world.n_items:
    raise ValueError(f"slate_size must be in [1, {world.n_items}], got {slate_size}")
  if walk is None:
    walk = np.zeros_like(world.user_interest)
  if history is None:
    history = np.full((world.n_users, CONTEXT_HISTORY), NO_ITEM, dtype=np.int64)
  users = rng.choice(world.n_users, size=n_sessions, p=world.user_activity)
  interests, walk = _session_interests(world, user_model, users, walk, rng)
  batches = []
  for start in range(0, n_sessions, SESSIONS_PER_BATCH):
    stop = min(start + SESSIONS_PER_BATCH, n_sessions)
    batch = _simulate_batch(world, policy, user_model, slate_size, users[start:stop],
                            interests[start:stop], history[users[start:stop]], rng)
    history = _history_after(history, users[start:stop], batch)
    batch["session"] = batch.pop("batch_session") + start
    batches.append(batch)
  impressions = pd.concat(batches, ignore_index=True)
  impressions.insert(1, "user", users[impressions["session"].to_numpy()])
  impressions["price"] = world.item_price[impressions["item"].to_numpy()]
  impressions = impressions.sort_values(["session", "step", "position"], kind="stable",
                                        ignore_index=True)[
      ["session", "user", "step", "position", "item", "propensity", "click", "purchase",
       "price"]]
  revenue = impressions["price"].where(impressions["purchase"], 0.0)
  grouped = impressions.assign(revenue=revenue).groupby("session")
  sessions = pd.DataFrame({
      "session": np.arange(n_sessions), "user": users,
      "steps": grouped["step"].max().to_numpy() + 1,
      "clicks": grouped["click"].sum().to_numpy(),
      "purchases": grouped["purchase"].sum().to_numpy(),
      "revenue": grouped["revenue"].sum().to_numpy()})
  return SimulationResult(sessions=sessions, impressions=impressions, walk=walk,
                          history=history)


def simulate(policy: Policy, n_sessions: int, seed: int, world: World,
             user_model: UserModel = UserModel(),
             slate_size: int = DEFAULT_SLATE_SIZE) -> SimulationResult:
  """Runs `policy` on-policy for n_sessions sessions: clicks, purchases, revenue per session.

  Any object with the `Policy.slate` method will do. Users start from their long-term interest
  (no walk yet) and an empty history, so policies compared with the same seed and world meet the
  same users in the same order. A policy trained on the default logs is evaluated on the users
  who wrote them with the default dataset's world (components/simulation/generator.py).
  """
  return run_sessions(world, policy, n_sessions, np.random.default_rng(seed), user_model,
                      slate_size)
