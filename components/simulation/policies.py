"""Reference slate policies for the simulator: uniform, the platform's logging policy, the oracle.

Each has the `simulator.Policy.slate` method and returns exact step propensities (the simulator's
docstring defines them), so its slates can be logged and judged off-policy. A trained model is a
policy too (components/simulation/model_policy.py).
"""
import numpy as np

from components.simulation import simulator


def plackett_luce(logits: np.ndarray, slate_size: int, rng: np.random.Generator) -> simulator.Slate:
  """Samples a slate without replacement from softmax(logits), per row, with step propensities.

  Adding Gumbel noise and taking the top slate_size is an exact Plackett–Luce sample. The
  propensity at position j is w[item_j] / (sum of w over items not placed at positions < j),
  with w = exp(logits); a logit of -inf is an item the policy never shows. The denominators are
  summed in log space from the items never placed and those placed at j or later, never by
  subtracting from the total, so they stay exact for peaked (low-temperature) policies too.
  """
  items = _top_items(logits + rng.gumbel(size=logits.shape), slate_size)
  chosen = np.take_along_axis(logits, items, axis=1)
  unplaced = logits.copy()
  np.put_along_axis(unplaced, items, -np.inf, axis=1)
  placed_from_here = np.logaddexp.accumulate(chosen[:, ::-1], axis=1)[:, ::-1]
  remaining = np.logaddexp(_log_sum_exp(unplaced), placed_from_here)
  # The minimum only absorbs rounding: chosen is one of the terms of remaining.
  return simulator.Slate(items=items, propensities=np.minimum(np.exp(chosen - remaining), 1.0))


def _top_items(scores: np.ndarray, k: int) -> np.ndarray:
  """The k highest-scoring items of each row, highest first; ties keep item order."""
  top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
  order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
  return np.take_along_axis(top, order, axis=1)


def _log_sum_exp(logits: np.ndarray) -> np.ndarray:
  """log(sum(exp(logits))) per row, as a column; -inf for a row of only -inf."""
  peak = logits.max(axis=1, keepdims=True)
  peak = np.where(np.isfinite(peak), peak, 0.0)
  with np.errstate(divide="ignore"):
    return peak + np.log(np.exp(logits - peak).sum(axis=1, keepdims=True))


class UniformPolicy:
  """Shows random distinct items: the baseline every policy must beat."""

  def __init__(self, n_items: int):
    self._n_items = n_items

  def slate(self, context: simulator.SlateContext, rng: np.random.Generator) -> simulator.Slate:
    return plackett_luce(np.zeros((len(context.users), self._n_items)), context.slate_size, rng)


class LoggingPolicy:
  """The platform's production policy that wrote the logs: a softmax over its own scores.

  score = quality + estimate_weight * (its noisy estimate of the user's long-term affinity)
          + continuity_weight * <embedding of the last clicked item, embedding>,
  sampled Plackett–Luce at `temperature`. The estimate's noise is fixed per (user, item), as a
  trained model's error would be, so the logs carry a consistent, imperfect selection bias.
  """

  def __init__(self, world: simulator.World, seed: int, temperature: float = 1.0,
               estimate_weight: float = 3.0, estimate_noise: float = 0.3,
               continuity_weight: float = 2.0):
    rng = np.random.default_rng(seed)
    affinity = world.user_interest @ world.item_embedding.T
    self._base = world.item_attractiveness + estimate_weight * (
        affinity + rng.normal(scale=estimate_noise, size=affinity.shape))
    self._embedding = world.item_embedding
    self._temperature = temperature
    self._continuity_weight = continuity_weight

  def slate(self, context: simulator.SlateContext, rng: np.random.Generator) -> simulator.Slate:
    scores = self._base[context.users].copy()
    last = context.clicked[:, -1]
    has_last = last != simulator.NO_ITEM
    scores[has_last] += self._continuity_weight * (
        self._embedding[last[has_last]] @ self._embedding.T)
    return plackett_luce(scores / self._temperature, context.slate_size, rng)


class OraclePolicy:
  """Shows each user the items they are likeliest to click, likeliest first: a reference.

  It is handed what no platform has, the world and the user model, and ranks by relevance under
  the user's long-term interest, which orders the items as the click probability of an examined
  item does. A learnt policy is judged by how much of the way from the logging policy to this one
  it gets (bench/bench_policies.py). It is not the optimum: it does not see the session's drift
  toward clicked items nor the walk across sessions, and it is myopic.
  """

  def __init__(self, world: simulator.World,
               user_model: simulator.UserModel = simulator.UserModel()):
    self._relevance = simulator.relevance(user_model, world.user_interest @ world.item_embedding.T,
                                          world.item_attractiveness)

  def slate(self, context: simulator.SlateContext, rng: np.random.Generator) -> simulator.Slate:
    del rng  # It ranks deterministically.
    items = _top_items(self._relevance[context.users], context.slate_size)
    return simulator.Slate(items=items, propensities=np.ones(items.shape))
