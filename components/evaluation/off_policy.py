"""Off-policy estimates of a slate policy's mean reward per impression, from logged slates.

A candidate ranking policy (the target) is judged on slates another policy (the logging policy)
chose and users reacted to, e.g. the impressions of components/simulation/simulator.py, which log
each item's step propensity P(item at position j | the items placed above it).

The estimand. For logged contexts x (a user and the items they clicked so far in the session),
  V(target) = E_x E_{slate ~ target(x)} [ (1/K) sum_j r_j ],
the mean reward per impression (with clicks as rewards: the CTR) of the K-item slates the target
would show in those contexts, contexts weighted as they occur in the log. With one slate per
session this is the target's on-policy mean reward. With several, later contexts come from the
logging policy's earlier slates: the estimate values the target's slates where users actually
were, not how the target would have changed who stays and what they click next.

What the target must tell (`TargetPolicy`): for each logged slate and position j, its probability
distribution over the catalog for position j given that the logged items fill positions 0..j-1.
`PlackettLuceTarget` derives it from a policy's logits; `logging_policy_logits` gives those of a
policies.LoggingPolicy, e.g. at another temperature.

The weight (cascade, or reward-interaction, IPS: McInerney et al. 2020, "Counterfactual
Evaluation of Slate Recommendations with Sequential Reward Interactions"; Kiyohara et al. 2022,
"Doubly Robust Off-Policy Evaluation for Ranking Policies under the Cascade Behavior Model").
The reward at position j is reweighted by
  w_j = prod over k <= j of target(a_k at k | a_0..a_{k-1}) / logging(a_k at k | a_0..a_{k-1}),
the ratio of the two policies' probabilities of the logged prefix a_0..a_j. It is unbiased when
the logging policy could show every prefix the target can (a softmax policy can show any) and
position j's reward depends only on the items at positions 0..j: the item-position model of
Li et al. 2018 ("Offline Evaluation of Ranking Policies with Click Models", where it depends on
a_j alone; the simulator's users are such) and cascading users both qualify. The alternatives, as
in the Open Bandit Pipeline's slate estimators:
  * independent IPS (Li et al. 2018): the ratio of the marginal probabilities of a_j at j. Lower
    variance, but it needs marginal position probabilities, which the logs do not carry and a
    Plackett–Luce policy has no closed form for;
  * standard IPS: the ratio of the whole slates' probabilities; unbiased for any reward, with far
    higher variance;
  * position j's step ratio alone is no valid weight: it values a policy that fills the positions
    above j like the logging policy.

Estimators (each a class whose `estimate(log, target)` returns an `Estimate`):
  * InversePropensityScoring: mean over slates of (1/K) sum_j w_j r_j.
  * SelfNormalizedInversePropensityScoring: (1/K) sum_j [sum of w_j r_j / sum of w_j], per
    position; slightly biased, never outside the reward's range, steadier when weights are wild.
  * DoublyRobust (Kiyohara et al. 2022's cascade DR): a reward model q(x, a, j) predicts, and
    weights correct its error:
      (1/K) sum_j [ w_j (r_j - q(x, a_j, j))
                    + w_{j-1} sum_a target(a at j | a_0..a_{j-1}) q(x, a, j) ]
    with w_{-1} = 1. Unbiased for any q; the better q, the smaller the variance, though with
    rare clicks most of it is click noise that no q removes. The default model is
    `PositionBasedRewardModel`.

Confidence intervals: 95%, normal approximation, with sessions as the independent units (slates of
one session share a user and their clicks). Every estimator is a ratio of sums over sessions (of
weighted rewards, and of slates or weights), so its standard error is the delta method's over
per-session sums (the cluster-robust one). A closed form was chosen over the bootstrap: it is
deterministic and costs one pass, where the bootstrap would refit the reward model per resample;
both understate the error when a few huge weights dominate, which no interval fixes.
"""
import abc
import dataclasses
import statistics
from typing import Callable, Iterator, Optional, Protocol, Tuple

import numpy as np
import pandas as pd
from scipy import special

from components.simulation import policies
from components.simulation import simulator

CONFIDENCE = 0.95
# Slates scored per call of the target and the reward model, bounding their
# [slates, slate_size, n_items] arrays.
SLATES_PER_CHUNK = 256


@dataclasses.dataclass(frozen=True)
class SlateLog:
  """Logged slates as arrays with one row per slate, in session then step order.

  A policy's context is the session's user and the items they clicked at earlier steps of it.
  The simulator also shows policies a cross-session click `history`; it cannot be rebuilt from
  impressions (it depends on the simulator's batching). Logs that carry the history a model
  reads, as the pipeline's transitions do, pass it as `histories` for targets that need it, and
  the request time of each slate as `timestamps` for targets whose ranking depends on the hour.
  """
  sessions: np.ndarray  # [n_slates] the session of each slate: the independent units
  users: np.ndarray  # [n_slates]
  # [n_slates, CONTEXT_HISTORY] items clicked at earlier steps of the session, oldest first,
  # NO_ITEM pads in front: simulator.SlateContext.clicked
  clicked: np.ndarray
  items: np.ndarray  # [n_slates, slate_size] position 0 first
  propensities: np.ndarray  # [n_slates, slate_size] the logging policy's step propensities
  rewards: np.ndarray  # [n_slates, slate_size]
  n_items: int  # catalog size: items are numbered 0..n_items - 1
  # [n_slates] the history a model was queried with for each slate (any per-slate value), if
  # the log has one
  histories: Optional[np.ndarray] = None
  # [n_slates] seconds since the epoch at which each slate was shown, if the log has them
  timestamps: Optional[np.ndarray] = None

  @classmethod
  def from_impressions(cls, impressions: pd.DataFrame, n_items: int, reward: str = "click",
                       history: Optional[str] = None,
                       timestamp: Optional[str] = None) -> "SlateLog":
    """Slates from impressions in the simulator's layout (simulator.SimulationResult).

    Args:
      impressions: session, user, step, position, item, propensity, click and the reward column;
        every (session, step) a whole slate of positions 0..slate_size - 1.
      n_items: Catalog size.
      reward: The column to estimate the mean of, e.g. click, purchase or a revenue column.
      history: A column with each slate's model history (read at position 0), if any.
      timestamp: A column with each slate's time (read at position 0), if any.
    """
    frame = impressions.sort_values(["session", "step", "position"], kind="stable")
    slate_size = int(frame["position"].max()) + 1
    if len(frame) % slate_size:
      raise ValueError(f"impressions do not form whole slates of {slate_size} positions")

    def per_slate(column: str) -> np.ndarray:
      return frame[column].to_numpy().reshape(-1, slate_size)

    positions, sessions, steps = per_slate("position"), per_slate("session"), per_slate("step")
    if ((positions != np.arange(slate_size)).any() or (sessions != sessions[:, :1]).any()
        or (steps != steps[:, :1]).any()):
      raise ValueError(f"every (session, step) must show positions 0..{slate_size - 1} once")
    items = per_slate("item")
    return cls(sessions=sessions[:, 0], users=per_slate("user")[:, 0],
               clicked=_clicked_before(sessions[:, 0], steps[:, 0], items,
                                       per_slate("click").astype(bool)),
               items=items, propensities=per_slate("propensity").astype(float),
               rewards=per_slate(reward).astype(float), n_items=n_items,
               histories=None if history is None else per_slate(history)[:, 0],
               timestamps=None if timestamp is None else per_slate(timestamp)[:, 0])

  @property
  def n_slates(self) -> int:
    return len(self.sessions)

  def select(self, slates: slice) -> "SlateLog":
    """The log of some of the slates."""
    return dataclasses.replace(
        self, sessions=self.sessions[slates], users=self.users[slates],
        clicked=self.clicked[slates], items=self.items[slates],
        propensities=self.propensities[slates], rewards=self.rewards[slates],
        histories=None if self.histories is None else self.histories[slates],
        timestamps=None if self.timestamps is None else self.timestamps[slates])


def _clicked_before(sessions: np.ndarray, steps: np.ndarray, items: np.ndarray,
                    clicks: np.ndarray) -> np.ndarray:
  """[n_slates, CONTEXT_HISTORY] per slate, its session's clicked items at earlier steps.

  Advances all sessions step by step, as the simulator does: a step's clicked items are appended
  in position order and pads (NO_ITEM) moved to the front by a stable sort on "is an item".
  """
  session_codes, unique_sessions = pd.factorize(sessions)
  history = np.full((len(unique_sessions), simulator.CONTEXT_HISTORY), simulator.NO_ITEM,
                    dtype=np.int64)
  clicked = np.empty((len(sessions), simulator.CONTEXT_HISTORY), dtype=np.int64)
  for step in np.unique(steps):
    at = np.flatnonzero(steps == step)
    clicked[at] = history[session_codes[at]]
    combined = np.concatenate(
        [history[session_codes[at]], np.where(clicks[at], items[at], simulator.NO_ITEM)], axis=1)
    order = np.argsort(combined != simulator.NO_ITEM, axis=1, kind="stable")
    history[session_codes[at]] = np.take_along_axis(
        combined, order, axis=1)[:, -simulator.CONTEXT_HISTORY:]
  return clicked


class TargetPolicy(Protocol):
  """The policy under evaluation, as the estimators need to see it."""

  def step_probabilities(self, log: SlateLog) -> np.ndarray:
    """[n_slates, slate_size, n_items]: P(item at j | the logged items at positions 0..j-1).

    Each [slate, j] row sums to 1 and is zero on the slate's logged items above j.
    """


class PlackettLuceTarget:
  """A target that ranks by sampling without replacement from softmax(logits(log))."""

  def __init__(self, logits: Callable[[SlateLog], np.ndarray]):
    """Takes a function from logged slates' contexts to their [n_slates, n_items] logits."""
    self._logits = logits

  def step_probabilities(self, log: SlateLog) -> np.ndarray:
    """Softmax over the items not placed above each position; see `TargetPolicy`."""
    logits = np.array(self._logits(log), dtype=float)
    probabilities = np.empty(log.items.shape + (logits.shape[1],))
    slates = np.arange(log.n_slates)
    for position in range(log.items.shape[1]):
      probabilities[:, position] = special.softmax(logits, axis=1)
      logits[slates, log.items[:, position]] = -np.inf
    return probabilities


def logging_policy_logits(policy: policies.LoggingPolicy) -> Callable[[SlateLog], np.ndarray]:
  """The logits `policy.slate` samples from, to evaluate a LoggingPolicy as a target.

  LoggingPolicy has no public accessor for them, so this repeats its scoring on its private
  attributes; tests/evaluation/test_off_policy.py checks they reproduce the propensities the policy
  logs, so a change to LoggingPolicy fails there instead of skewing estimates.
  """
  # pylint: disable=protected-access
  def logits(log: SlateLog) -> np.ndarray:
    scores = policy._base[log.users].copy()
    last = log.clicked[:, -1]
    has_last = last != simulator.NO_ITEM
    scores[has_last] += policy._continuity_weight * (
        policy._embedding[last[has_last]] @ policy._embedding.T)
    return scores / policy._temperature
  return logits


class RewardModel(Protocol):
  """The direct method's reward predictions, fitted on the log being evaluated."""

  def fit(self, log: SlateLog) -> None:
    ...

  def predict(self, log: SlateLog) -> np.ndarray:
    """[n_slates, slate_size, n_items] each item's expected reward at each position."""


class PositionBasedRewardModel:
  """q(item, position) = the log's mean reward at the position * the item's lift.

  The position-based click model (the examination hypothesis of Craswell et al. 2008, one of the
  click models of Li et al. 2018):
  a position's mean reward stands for how often it is looked at, and an item's lift (its logged
  reward over the reward its positions would predict) for its appeal. Lifts are shrunk towards 1
  as if each item had also earned `prior_strength` expected rewards at exactly the average, so
  rarely logged items get near-average predictions instead of noise. It ignores the context, so
  it is fitted once, on the same log it corrects: with few parameters per item, that overfits
  negligibly, and DR stays unbiased whatever q is.
  """

  def __init__(self, prior_strength: float = 10.0):
    self._prior_strength = prior_strength
    self._table: Optional[np.ndarray] = None  # [slate_size, n_items]

  def fit(self, log: SlateLog) -> None:
    position_mean = log.rewards.mean(axis=0)
    expected = np.bincount(log.items.ravel(), minlength=log.n_items,
                           weights=np.broadcast_to(position_mean, log.items.shape).ravel())
    observed = np.bincount(log.items.ravel(), weights=log.rewards.ravel(), minlength=log.n_items)
    lift = (observed + self._prior_strength) / (expected + self._prior_strength)
    self._table = position_mean[:, None] * lift[None, :]

  def predict(self, log: SlateLog) -> np.ndarray:
    if self._table is None:
      raise ValueError("fit the reward model before predicting")
    return np.broadcast_to(self._table, (log.n_slates,) + self._table.shape)


@dataclasses.dataclass(frozen=True)
class Estimate:
  """An estimate of the mean reward per impression with its CONFIDENCE interval."""
  value: float
  low: float
  high: float
  standard_error: float
  n_sessions: int  # the independent units the interval rests on


class BaseOffPolicyEstimator(abc.ABC):
  """An estimator of the target's mean reward per impression, as Open Bandit Pipeline shapes them.

  Each estimator is a small dataclass whose fields are its settings; it says only how each logged
  impression contributes (`_terms`). The estimate is then the same for all: the ratio of the
  terms' sums, with an interval from the sessions as independent units (a session's slates
  depend on each other through its clicks).
  """

  def estimate(self, log: SlateLog, target: TargetPolicy) -> Estimate:
    numerators, denominators = self._terms(log, target)
    return _ratio_over_sessions(log.sessions, numerators, denominators)

  @abc.abstractmethod
  def _terms(self, log: SlateLog, target: TargetPolicy) -> Tuple[np.ndarray, np.ndarray]:
    """[n_slates, slate_size] numerator and denominator terms of each logged impression."""


@dataclasses.dataclass(frozen=True)
class InversePropensityScoring(BaseOffPolicyEstimator):
  """Cascade IPS: the logged rewards reweighted by the prefix probability ratios."""

  def _terms(self, log: SlateLog, target: TargetPolicy) -> Tuple[np.ndarray, np.ndarray]:
    weights = cascade_weights(log, _logged_target_propensities(log, target))
    return weights * log.rewards, np.ones(log.items.shape)


@dataclasses.dataclass(frozen=True)
class SelfNormalizedInversePropensityScoring(BaseOffPolicyEstimator):
  """Cascade IPS divided, position by position, by the mean weight instead of by 1."""

  def _terms(self, log: SlateLog, target: TargetPolicy) -> Tuple[np.ndarray, np.ndarray]:
    weights = cascade_weights(log, _logged_target_propensities(log, target))
    if (weights.sum(axis=0) == 0).any():
      raise ValueError("at some position the target gives every logged prefix probability 0")
    return weights * log.rewards, weights


@dataclasses.dataclass(frozen=True)
class DoublyRobust(BaseOffPolicyEstimator):
  """Cascade DR: a reward model's predictions for the target, corrected by weighted residuals.

  The reward model is fitted on the log being evaluated, at each estimate.
  """
  reward_model: RewardModel = dataclasses.field(default_factory=PositionBasedRewardModel)

  def _terms(self, log: SlateLog, target: TargetPolicy) -> Tuple[np.ndarray, np.ndarray]:
    self.reward_model.fit(log)
    target_propensities = np.empty(log.items.shape)
    logged_prediction = np.empty(log.items.shape)
    target_prediction = np.empty(log.items.shape)  # E over the target's item at j of q
    for rows, chunk in _chunks(log):
      probabilities = _step_probabilities(target, chunk)
      predictions = self.reward_model.predict(chunk)
      target_propensities[rows] = _at_logged_items(probabilities, chunk.items)
      logged_prediction[rows] = _at_logged_items(predictions, chunk.items)
      target_prediction[rows] = (probabilities * predictions).sum(axis=2)
    weights = cascade_weights(log, target_propensities)
    weights_above = np.concatenate([np.ones((log.n_slates, 1)), weights[:, :-1]], axis=1)
    terms = weights * (log.rewards - logged_prediction) + weights_above * target_prediction
    return terms, np.ones(log.items.shape)


def cascade_weights(log: SlateLog, target_propensities: np.ndarray) -> np.ndarray:
  """[n_slates, slate_size] w_j: the target's over the logging policy's logged prefix 0..j."""
  return np.cumprod(target_propensities / log.propensities, axis=1)


def _logged_target_propensities(log: SlateLog, target: TargetPolicy) -> np.ndarray:
  """[n_slates, slate_size] the target's step propensity of each logged item."""
  return np.concatenate([_at_logged_items(_step_probabilities(target, chunk), chunk.items)
                         for _, chunk in _chunks(log)])


def _chunks(log: SlateLog) -> Iterator[Tuple[slice, SlateLog]]:
  for start in range(0, log.n_slates, SLATES_PER_CHUNK):
    rows = slice(start, start + SLATES_PER_CHUNK)
    yield rows, log.select(rows)


def _step_probabilities(target: TargetPolicy, log: SlateLog) -> np.ndarray:
  probabilities = target.step_probabilities(log)
  expected_shape = log.items.shape + (log.n_items,)
  if probabilities.shape != expected_shape:
    raise ValueError(f"the target's step probabilities have shape {probabilities.shape}, "
                     f"expected {expected_shape}")
  return probabilities


def _at_logged_items(per_item: np.ndarray, items: np.ndarray) -> np.ndarray:
  return np.take_along_axis(per_item, items[:, :, None], axis=2)[:, :, 0]


def _ratio_over_sessions(sessions: np.ndarray, numerators: np.ndarray,
                         denominators: np.ndarray) -> Estimate:
  """(1/K) sum_j [sum of numerators_j / sum of denominators_j], with a delta-method interval.

  Sums are taken per session first: the per-position ratio's linearisation at session s is
  (A_sj - ratio_j * B_sj) / mean_s(B_sj), whose sample variance over sessions gives the error.
  """
  codes, unique_sessions = pd.factorize(sessions)
  n_sessions = len(unique_sessions)
  if n_sessions < 2:
    raise ValueError("an interval needs at least two sessions")
  per_session_numerators = pd.DataFrame(numerators).groupby(codes).sum().to_numpy()
  per_session_denominators = pd.DataFrame(denominators).groupby(codes).sum().to_numpy()
  per_position = per_session_numerators.sum(axis=0) / per_session_denominators.sum(axis=0)
  influence = ((per_session_numerators - per_position * per_session_denominators)
               / per_session_denominators.mean(axis=0)).mean(axis=1)
  standard_error = float(np.sqrt((influence ** 2).sum() / (n_sessions * (n_sessions - 1))))
  value = float(per_position.mean())
  half_width = statistics.NormalDist().inv_cdf(0.5 + CONFIDENCE / 2) * standard_error
  return Estimate(value=value, low=value - half_width, high=value + half_width,
                  standard_error=standard_error, n_sessions=n_sessions)
