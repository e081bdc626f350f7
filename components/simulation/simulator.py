"""A seeded e-commerce user simulator: the default dataset's source and the RL environment.

The platform shows slates; simulated users examine, click, buy, grow more or less satisfied,
leave, and come back or not. The same code writes the logged dataset (with the logging policy's
propensities, components/simulation/generator.py) and runs any policy on-policy (`simulate`,
`run_users`), so a ranking policy can be judged by the clicks, purchases, revenue and returning
users it earns, not only off-policy from logs.

What is shown changes the user (in the spirit of RecSim's interest-evolution environment, Ie et
al., 2019): an item has an attractiveness, which draws the click, separate from its quality, what
consuming it does for the user, and some items are clickbait, attractive and poor. A policy that
maximises the next click fills slates with clickbait, disappoints, and its users' sessions get
shorter and rarer: a session is a Markov decision process whose long-term value differs from its
immediate rewards. `DYNAMICS` names this behaviour (`SATISFACTION`, the default) and the one
before it (`INDEPENDENT`: `INDEPENDENT_CLICKS` and no clickbait), in which a user clicks each
examined item independently and nothing carries over.

The world (`World.sample`)
  * Every category has a unit-norm centre in a `LATENT_DIM`-dimensional taste space and a typical
    price. An item has a category, an embedding (its centre plus noise), a log-normal price around
    the category's typical price, and a quality (`item_quality`, standard normal), which is also
    its attractiveness (`item_attractiveness`) unless it is clickbait.
  * A share `clickbait_share` of the items is clickbait (`item_clickbait`): quality about
    `CLICKBAIT_QUALITY` (-1.5) and attractiveness about `CLICKBAIT_ATTRACTIVENESS` (+2.0).
  * A user has a long-term interest vector (a Dirichlet mix of 1 to `MAX_USER_CATEGORIES` category
    centres plus noise) and a log-normal activity: the share of sessions that are theirs. Each
    session's user is drawn independently by activity (`run_sessions`).

Interest drift (`UserModel.session_drift`, `UserModel.interest_step`)
  * Across sessions, long-term interest does a Gaussian random walk: a user's k-th session starts
    from interest + `session_drift` * (sum of k standard normal steps) / sqrt(LATENT_DIM), so the
    offset grows like session_drift * sqrt(k) in norm. The walk is per call of `run_sessions`,
    which can continue an earlier call's (`SimulationResult.state`); `simulate` starts it at zero.
  * Within a session, interest moves toward what was clicked: after a step with clicks,
    interest <- (1 - interest_step) * interest + interest_step * mean(clicked embeddings). This
    in-session drift is the current mission and does not carry over to the next session.

A step: the policy shows a slate of `slate_size` distinct items, then, in this order, the user
examines, clicks and buys, satisfaction and interest move, and the user stays or leaves.
  * relevance(item) = affinity_weight * <interest, embedding> + quality_weight * attractiveness.
  * Position bias: position p (0-based) is examined with probability 1 / (1 + p) **
    examination_decay; an unexamined item is not clicked.
  * An examined item is clicked with probability sigmoid(click_bias + relevance).
  * A clicked item is bought with probability sigmoid(purchase_bias + purchase_affinity *
    <interest, embedding> - price_sensitivity * log(price / median price)
    + satisfaction_purchase * satisfaction). So purchases are a subset of clicks, expensive
    items sell less, and satisfied users buy more.

Satisfaction (a number per session, in [-satisfaction_bound, satisfaction_bound])
  * It starts at the user's trust: `trust_carry` times the satisfaction their previous session
    ended with (0 for a new user).
  * After each step it moves by (`satisfaction_change`)
        satisfaction_gain * (sum of the clicked items' quality)
      - repetition_penalty * (clicked items the user had clicked before: their history)
      - fatigue_penalty * max(0, max over categories of exposure - fatigue_tolerance),
    where a category's exposure is fatigue_decay * its exposure before + the share of this slate
    in it: showing one category step after step tires the user of it (exposure tends to
    1 / (1 - fatigue_decay) = 3.3), a mix does not.
  * Session time: a session starts with `session_budget` steps of time; each step costs one and
    adds budget_per_satisfaction times the step's satisfaction change. Good items extend the
    session, clickbait, repeats and monotony cut it short; it ends when the time is spent.
  * Returning: after a session the user comes back with probability
    sigmoid(return_bias + return_weight * final satisfaction) (`return_probability`, 0.88 at
    neutral satisfaction). `run_users` follows users session after session and drops those who do
    not come back; `run_sessions` is a platform's traffic, whose users keep visiting, and the
    generator spaces a user's sessions by it (the less likely the return, the longer the gap).

Leaving: after each step the user also leaves with probability sigmoid(leave_bias +
boredom_weight * boredom - click_retention * [the step had a click]), where boredom counts
consecutive steps without a click, this one included. With the defaults that is 0.12 after a
step with a click, then 0.45, 0.65, 0.80, ... after 1, 2, 3, ... steps without one: bored users
leave. A session ends after `max_steps` steps at the latest.

Policies (`Policy.slate`; the reference ones are in components/simulation/policies.py) see what
a platform sees, `SlateContext`, never the hidden interest (except `OraclePolicy`, the reference
that is handed the world):
  * `users`: the sessions' users;
  * `clicked`: the items clicked so far in the session;
  * `history`: the user's clicks across sessions, in earlier sessions and so far in this one, as
    the pipeline's `history` feature holds a user's engaged items across sessions (clicks are all
    the engagements: a purchase is a click). Sessions of a batch (see Vectorised) run side by
    side, so it is brought up to date at the end of each batch, as trust is: a session sees its
    user's clicks in sessions of earlier batches, not in the user's other sessions of its own
    batch. Like the interest walk it is per call of `run_sessions`, which can continue an
    earlier call's (`SimulationResult.state`); `simulate` starts every user's empty.
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
# Clickbait's quality and attractiveness are drawn around these, spread 0.5 (an ordinary item's
# are one standard normal draw): it looks better than almost any item and is worse than most.
CLICKBAIT_QUALITY = -1.5
CLICKBAIT_ATTRACTIVENESS = 2.0


@dataclasses.dataclass(frozen=True)
class World:
  """The catalog and the users' hidden tastes; arrays are indexed by item or user number."""
  item_category: np.ndarray  # [n_items] int, index into category_names
  item_price: np.ndarray  # [n_items] float, > 0
  item_quality: np.ndarray  # [n_items] float: what consuming the item does for the user
  item_attractiveness: np.ndarray  # [n_items] float: how much it draws the click
  item_clickbait: np.ndarray  # [n_items] bool
  item_embedding: np.ndarray  # [n_items, LATENT_DIM]
  user_interest: np.ndarray  # [n_users, LATENT_DIM], long-term
  user_activity: np.ndarray  # [n_users] float, sums to 1
  category_names: Tuple[str, ...]

  @classmethod
  def sample(cls, rng: np.random.Generator, n_users: int, n_items: int, n_categories: int,
             clickbait_share: float = 0.0) -> "World":
    """Draws a catalog and a user population as described in the module docstring."""
    if not 0.0 <= clickbait_share <= 1.0:
      raise ValueError(f"clickbait_share must be in [0, 1], got {clickbait_share}")
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
    quality = rng.normal(size=n_items)
    attractiveness = quality.copy()
    # Drawn last, and none at a share of 0, so a world without clickbait is the same world as
    # before clickbait existed.
    clickbait = np.zeros(n_items, dtype=bool)
    if clickbait_share:
      clickbait = rng.random(n_items) < clickbait_share
      quality[clickbait] = rng.normal(CLICKBAIT_QUALITY, 0.5, size=clickbait.sum())
      attractiveness[clickbait] = rng.normal(CLICKBAIT_ATTRACTIVENESS, 0.5, size=clickbait.sum())
    return cls(item_category=item_category, item_price=item_price, item_quality=quality,
               item_attractiveness=attractiveness, item_clickbait=clickbait,
               item_embedding=item_embedding, user_interest=user_interest,
               user_activity=activity / activity.sum(),
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
  """How users examine, click, buy, drift, tire and leave (module docstring); logits unless noted.

  The defaults are the satisfaction dynamics; `INDEPENDENT_CLICKS` switches them off.
  """
  affinity_weight: float = 4.0
  quality_weight: float = 0.5  # of the item's attractiveness in the click logit
  click_bias: float = -4.0
  examination_decay: float = 1.0
  purchase_bias: float = -3.0
  purchase_affinity: float = 1.5
  price_sensitivity: float = 0.8
  interest_step: float = 0.3  # share of the clicked items' embedding mixed into interest
  session_drift: float = 0.05  # scale of the random walk of interest across sessions
  leave_bias: float = -1.0
  boredom_weight: float = 0.8
  click_retention: float = 1.0  # how much a step with a click lowers the leave logit
  max_steps: int = 30
  # Satisfaction, in satisfaction units; see the module docstring.
  satisfaction_gain: float = 0.5  # per unit of a consumed item's quality
  repetition_penalty: float = 0.5  # per consumed item the user had already clicked
  fatigue_penalty: float = 0.2  # per unit of category exposure above the tolerance, per step
  fatigue_decay: float = 0.7
  fatigue_tolerance: float = 1.5
  satisfaction_bound: float = 3.0  # satisfaction stays in [-bound, bound]
  session_budget: float = 8.0  # steps of time a session starts with
  budget_per_satisfaction: float = 2.0  # steps a unit of satisfaction gained adds
  satisfaction_purchase: float = 0.5  # of satisfaction in the purchase logit
  return_bias: float = 2.0
  return_weight: float = 1.0  # of the session's final satisfaction in the return logit
  trust_carry: float = 0.5  # share of a session's final satisfaction the next one starts with


# What is shown changes nothing beyond the session: no satisfaction, no clickbait, unlimited
# time, every user returns. The simulator's dynamics before satisfaction, kept for comparison.
INDEPENDENT_CLICKS = UserModel(
    max_steps=20, satisfaction_gain=0.0, repetition_penalty=0.0, fatigue_penalty=0.0,
    session_budget=np.inf, satisfaction_purchase=0.0, return_bias=np.inf, trust_carry=0.0)


@dataclasses.dataclass(frozen=True)
class Dynamics:
  """A user model and the clickbait share of the world it lives in."""
  user_model: UserModel
  clickbait_share: float


SATISFACTION = "satisfaction"
INDEPENDENT = "independent"
DYNAMICS = {SATISFACTION: Dynamics(UserModel(), clickbait_share=0.15),
            INDEPENDENT: Dynamics(INDEPENDENT_CLICKS, clickbait_share=0.0)}
DEFAULT_DYNAMICS = SATISFACTION


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


def relevance(user_model: UserModel, affinity: np.ndarray,
              attractiveness: np.ndarray) -> np.ndarray:
  """relevance = affinity_weight * <interest, embedding> + quality_weight * attractiveness."""
  return user_model.affinity_weight * affinity + user_model.quality_weight * attractiveness


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


@dataclasses.dataclass(frozen=True)
class UserState:
  """What users carry from one session to the next (module docstring); pass a result's `state`
  to the next `run_sessions` or `run_users` to go on with the same users."""
  walk: np.ndarray  # [n_users, LATENT_DIM] each user's offset from long-term interest
  history: np.ndarray  # [n_users, CONTEXT_HISTORY] their clicks, oldest first, NO_ITEM pads
  trust: np.ndarray  # [n_users] the satisfaction their next session starts with

  @classmethod
  def new(cls, world: World) -> "UserState":
    """Users before their first session: no walk, no clicks, neutral trust."""
    return cls(walk=np.zeros_like(world.user_interest),
               history=np.full((world.n_users, CONTEXT_HISTORY), NO_ITEM, dtype=np.int64),
               trust=np.zeros(world.n_users))


@dataclasses.dataclass
class SimulationResult:
  """Per-session outcomes and every impression, in session then step then position order."""
  # session, user, steps, clicks, purchases, revenue, satisfaction (at the session's end),
  # return_probability and returned (whether the user came back, drawn from it)
  sessions: pd.DataFrame
  impressions: pd.DataFrame  # session, user, step, position, item, propensity, click,
  #                            purchase, price
  state: UserState  # the users' after these sessions


def _category_exposure(exposure: np.ndarray, slate_categories: np.ndarray,
                       user_model: UserModel) -> np.ndarray:
  """Each session's exposure to each category after a slate: decayed, plus the slate's shares."""
  shares = np.zeros_like(exposure)
  rows = np.repeat(np.arange(len(exposure)), slate_categories.shape[1])
  np.add.at(shares, (rows, slate_categories.ravel()), 1.0 / slate_categories.shape[1])
  return user_model.fatigue_decay * exposure + shares


def satisfaction_change(user_model: UserModel, clicked_quality: np.ndarray,
                        repeats: np.ndarray, exposure: np.ndarray) -> np.ndarray:
  """One step's change of satisfaction (module docstring, Satisfaction).

  Args:
    user_model: The weights.
    clicked_quality: [n, slate] quality of each clicked item, 0 where not clicked.
    repeats: [n, slate] whether each clicked item was among the user's earlier clicks.
    exposure: [n, categories] category exposure after this step's slate.
  """
  fatigue = np.maximum(exposure.max(axis=1) - user_model.fatigue_tolerance, 0.0)
  return (user_model.satisfaction_gain * clicked_quality.sum(axis=1)
          - user_model.repetition_penalty * repeats.sum(axis=1)
          - user_model.fatigue_penalty * fatigue)


def return_probability(user_model: UserModel, satisfaction: np.ndarray) -> np.ndarray:
  """P(the user comes back for another session | satisfaction at the end of this one)."""
  return _sigmoid(user_model.return_bias + user_model.return_weight * satisfaction)


@dataclasses.dataclass
class _BatchOutcome:
  impressions: pd.DataFrame
  satisfaction: np.ndarray  # [batch] each session's satisfaction at its end


def _simulate_batch(world: World, policy: Policy, user_model: UserModel, slate_size: int,
                    users: np.ndarray, interests: np.ndarray, histories: np.ndarray,
                    satisfaction: np.ndarray, rng: np.random.Generator) -> _BatchOutcome:
  """Impressions of one batch of sessions, advanced together step by step.

  `interests`, `histories` and `satisfaction` are each session's at its start.
  """
  batch = len(users)
  interests = interests.copy()
  satisfaction = satisfaction.copy()
  clicked_context = np.full((batch, CONTEXT_HISTORY), NO_ITEM, dtype=np.int64)
  history_context = histories.copy()
  boredom = np.zeros(batch)
  budget = np.full(batch, user_model.session_budget)
  exposure = np.zeros((batch, len(world.category_names)))
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
        user_model.click_bias
        + relevance(user_model, affinity, world.item_attractiveness[slate.items]))
    clicks = rng.random(p_click.shape) < p_click
    p_purchase = _sigmoid(user_model.purchase_bias + user_model.purchase_affinity * affinity
                          - user_model.price_sensitivity
                          * np.log(world.item_price[slate.items] / median_price)
                          + user_model.satisfaction_purchase * satisfaction[index, None])
    purchases = clicks & (rng.random(p_click.shape) < p_purchase)
    rows.append(pd.DataFrame({
        "batch_session": np.repeat(index, slate_size), "step": step,
        "position": np.tile(positions, len(index)), "item": slate.items.ravel(),
        "propensity": slate.propensities.ravel(), "click": clicks.ravel(),
        "purchase": purchases.ravel()}))

    exposure[index] = _category_exposure(exposure[index], world.item_category[slate.items],
                                         user_model)
    repeats = clicks & (slate.items[:, :, None] == history_context[index][:, None, :]).any(axis=2)
    change = satisfaction_change(
        user_model, np.where(clicks, world.item_quality[slate.items], 0.0), repeats,
        exposure[index])
    satisfaction[index] = np.clip(satisfaction[index] + change, -user_model.satisfaction_bound,
                                  user_model.satisfaction_bound)
    budget[index] += user_model.budget_per_satisfaction * change - 1.0

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
                       - user_model.click_retention * any_click)
    leaves = (rng.random(len(index)) < p_leave) | (budget[index] <= 0.0)
    active[index[leaves]] = False
  return _BatchOutcome(impressions=pd.concat(rows, ignore_index=True), satisfaction=satisfaction)


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


def _run(world: World, policy: Policy, users: np.ndarray, rng: np.random.Generator,
         user_model: UserModel, slate_size: int, state: Optional[UserState]) -> SimulationResult:
  """Simulates one session per entry of `users`, in that order, numbered from 0."""
  if not 0 < slate_size <= world.n_items:
    raise ValueError(f"slate_size must be in [1, {world.n_items}], got {slate_size}")
  state = state or UserState.new(world)
  history, trust = state.history, state.trust.copy()
  interests, walk = _session_interests(world, user_model, users, state.walk, rng)
  batches, final_satisfaction = [], []
  for start in range(0, len(users), SESSIONS_PER_BATCH):
    stop = min(start + SESSIONS_PER_BATCH, len(users))
    batch_users = users[start:stop]
    outcome = _simulate_batch(world, policy, user_model, slate_size, batch_users,
                              interests[start:stop], history[batch_users], trust[batch_users],
                              rng)
    history = _history_after(history, batch_users, outcome.impressions)
    # A user's last session of the batch sets their trust, as it ends last.
    trust[batch_users] = user_model.trust_carry * outcome.satisfaction
    outcome.impressions["session"] = outcome.impressions.pop("batch_session") + start
    batches.append(outcome.impressions)
    final_satisfaction.append(outcome.satisfaction)
  impressions = pd.concat(batches, ignore_index=True)
  impressions.insert(1, "user", users[impressions["session"].to_numpy()])
  impressions["price"] = world.item_price[impressions["item"].to_numpy()]
  impressions = impressions.sort_values(["session", "step", "position"], kind="stable",
                                        ignore_index=True)[
      ["session", "user", "step", "position", "item", "propensity", "click", "purchase",
       "price"]]
  revenue = impressions["price"].where(impressions["purchase"], 0.0)
  grouped = impressions.assign(revenue=revenue).groupby("session")
  satisfaction = np.concatenate(final_satisfaction)
  p_return = return_probability(user_model, satisfaction)
  sessions = pd.DataFrame({
      "session": np.arange(len(users)), "user": users,
      "steps": grouped["step"].max().to_numpy() + 1,
      "clicks": grouped["click"].sum().to_numpy(),
      "purchases": grouped["purchase"].sum().to_numpy(),
      "revenue": grouped["revenue"].sum().to_numpy(),
      "satisfaction": satisfaction, "return_probability": p_return,
      "returned": rng.random(len(users)) < p_return})
  return SimulationResult(sessions=sessions, impressions=impressions,
                          state=UserState(walk=walk, history=history, trust=trust))


def run_sessions(world: World, policy: Policy, n_sessions: int, rng: np.random.Generator,
                 user_model: UserModel = UserModel(), slate_size: int = DEFAULT_SLATE_SIZE,
                 state: Optional[UserState] = None) -> SimulationResult:
  """Simulates n_sessions sessions of users drawn by activity; see `simulate`.

  Every user comes back whatever `returned` says: the sessions are a platform's traffic, whose
  regulars keep visiting (the dataset's timestamps say how soon, components/simulation/
  generator.py). `run_users` follows users who may not.

  Args:
    world: The catalog and the users.
    policy: Chooses every slate.
    n_sessions: How many sessions, numbered from 0.
    rng: All of the users' draws and the policy's.
    user_model: How users behave.
    slate_size: Items per slate.
    state: The users' state after the sessions before (`SimulationResult.state`); None for
      users' first sessions.
  """
  if n_sessions < 1:
    raise ValueError(f"n_sessions must be at least 1, got {n_sessions}")
  users = rng.choice(world.n_users, size=n_sessions, p=world.user_activity)
  return _run(world, policy, users, rng, user_model, slate_size, state)


def run_users(world: World, policy: Policy, users: np.ndarray, horizon: int,
              rng: np.random.Generator, user_model: UserModel = UserModel(),
              slate_size: int = DEFAULT_SLATE_SIZE,
              max_impressions: Optional[int] = None) -> SimulationResult:
  """Follows each of `users` over up to `horizon` sessions: retention under a policy.

  Every user starts new (`UserState.new`) and has a session; after each session a user comes
  back for the next with its `return_probability`, and one who does not is gone. Sessions are
  simulated round by round, the k-th sessions of the users still there together, and numbered
  in that order; `sessions` has a `round` column (0 for the first). With `max_impressions`, no
  round starts once the rounds before it showed that many impressions.
  """
  if horizon < 1:
    raise ValueError(f"horizon must be at least 1, got {horizon}")
  users = np.asarray(users)
  state, rounds, offset, impressions = None, [], 0, 0
  for round_number in range(horizon):
    if not len(users) or (max_impressions is not None and impressions >= max_impressions):
      break
    result = _run(world, policy, users, rng, user_model, slate_size, state)
    for frame in (result.sessions, result.impressions):
      frame["session"] += offset
    rounds.append((result.sessions.assign(round=round_number), result.impressions))
    offset += len(users)
    impressions += len(result.impressions)
    users, state = users[result.sessions["returned"].to_numpy()], result.state
  return SimulationResult(sessions=pd.concat([r[0] for r in rounds], ignore_index=True),
                          impressions=pd.concat([r[1] for r in rounds], ignore_index=True),
                          state=state)


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
