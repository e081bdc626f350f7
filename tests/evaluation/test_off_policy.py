"""Off-policy estimators: hand-computed on a tiny log, and against on-policy simulation."""
import dataclasses

import numpy as np
import pandas as pd
import pytest

from components.evaluation import off_policy
from components.simulation import policies
from components.simulation import simulator

# Three items, slates of two. The target ranks Plackett–Luce with these probabilities everywhere.
TARGET_PROBABILITIES = np.array([0.5, 0.3, 0.2])
# Session 0 has two slates, sessions 1 and 2 one each: (session, step, items, logging step
# propensities, clicks).
TINY_SLATES = [(0, 0, [0, 1], [0.5, 0.5], [1, 0]),
               (0, 1, [1, 2], [0.25, 0.5], [0, 1]),
               (1, 0, [2, 0], [0.4, 0.5], [1, 1]),
               (2, 0, [1, 0], [0.5, 1.0], [0, 0])]
# The target's step propensities of the logged items, e.g. for [1, 2]: 0.3, then 0.2 / (1 - 0.3).
# Cascade weights are their running products over the logging propensities':
WEIGHTS = [[0.5 / 0.5, 0.5 / 0.5 * (0.6 / 0.5)],
           [0.3 / 0.25, 0.3 / 0.25 * ((2 / 7) / 0.5)],
           [0.2 / 0.4, 0.2 / 0.4 * (0.625 / 0.5)],
           [0.3 / 0.5, 0.3 / 0.5 * ((5 / 7) / 1.0)]]


def _tiny_log():
  impressions = pd.DataFrame(
      [(session, 7, step, position, item, propensity, bool(click))
       for session, step, items, propensities, clicks in TINY_SLATES
       for position, (item, propensity, click) in enumerate(zip(items, propensities, clicks))],
      columns=["session", "user", "step", "position", "item", "propensity", "click"])
  return off_policy.SlateLog.from_impressions(impressions, n_items=3)


def _tiny_target():
  return off_policy.PlackettLuceTarget(
      lambda log: np.tile(np.log(TARGET_PROBABILITIES), (log.n_slates, 1)))


class FixedRewardModel:
  """Predicts q(item, position) from a table, so DR can be computed by hand."""

  def __init__(self, table):
    self._table = np.asarray(table)  # [slate_size, n_items]

  def fit(self, log):
    del log

  def predict(self, log):
    return np.broadcast_to(self._table, (log.n_slates,) + self._table.shape)


def test_the_log_keeps_slates_and_their_in_session_clicks():
  log = _tiny_log()
  np.testing.assert_array_equal(log.sessions, [0, 0, 1, 2])
  np.testing.assert_array_equal(log.items, [[0, 1], [1, 2], [2, 0], [1, 0]])
  # Session 0 clicked item 0 at step 0, which its step 1 sees; first steps see nothing.
  np.testing.assert_array_equal(log.clicked[:, -1], [simulator.NO_ITEM, 0, simulator.NO_ITEM,
                                                     simulator.NO_ITEM])
  assert (log.clicked[:, :-1] == simulator.NO_ITEM).all()


def test_the_log_keeps_each_slates_query_history_and_time():
  impressions = pd.DataFrame(
      [(session, 7, step, position, item, propensity, bool(click), f"h{session}{step}",
        100 * session + step)
       for session, step, items, propensities, clicks in TINY_SLATES
       for position, (item, propensity, click) in enumerate(zip(items, propensities, clicks))],
      columns=["session", "user", "step", "position", "item", "propensity", "click", "history",
               "timestamp"])
  log = off_policy.SlateLog.from_impressions(impressions, n_items=3, history="history",
                                             timestamp="timestamp")
  np.testing.assert_array_equal(log.histories, ["h00", "h01", "h10", "h20"])
  np.testing.assert_array_equal(log.timestamps, [0, 1, 100, 200])
  np.testing.assert_array_equal(log.select(slice(1, 3)).timestamps, [1, 100])
  assert _tiny_log().timestamps is None


def test_incomplete_slates_are_refused():
  impressions = pd.DataFrame({"session": [0, 0, 1], "user": 0, "step": 0, "position": [0, 1, 1],
                              "item": [0, 1, 2], "propensity": 0.5, "click": False})
  with pytest.raises(ValueError, match="whole slates"):
    off_policy.SlateLog.from_impressions(impressions, n_items=3)


def test_target_step_probabilities_renormalise_over_the_items_left():
  probabilities = _tiny_target().step_probabilities(_tiny_log())
  np.testing.assert_allclose(probabilities[1, 0], TARGET_PROBABILITIES)
  np.testing.assert_allclose(probabilities[1, 1], [0.5 / 0.7, 0.0, 0.2 / 0.7])  # 1 placed


def test_ips_matches_a_hand_computation():
  rewards = [[1, 0], [0, 1], [1, 1], [0, 0]]
  per_slate = [np.dot(w, r) / 2 for w, r in zip(WEIGHTS, rewards)]
  estimate = off_policy.InversePropensityScoring().estimate(_tiny_log(), _tiny_target())
  assert estimate.value == pytest.approx(np.mean(per_slate))
  # Sessions, not slates, are the units: session 0 sums its two slates, and the mean is a ratio
  # (reward sums over slate counts) whose linearisation is (C_s - value * N_s) / mean(N).
  session_sums, session_slates = np.array([per_slate[0] + per_slate[1], per_slate[2],
                                           per_slate[3]]), np.array([2, 1, 1])
  influence = (session_sums - estimate.value * session_slates) / session_slates.mean()
  standard_error = np.sqrt((influence ** 2).sum() / (3 * 2))
  assert estimate.standard_error == pytest.approx(standard_error)
  assert estimate.low == pytest.approx(estimate.value - 1.959964 * standard_error)
  assert estimate.high == pytest.approx(estimate.value + 1.959964 * standard_error)
  assert estimate.n_sessions == 3


def test_with_one_slate_per_session_the_interval_is_the_textbook_one():
  log = dataclasses.replace(_tiny_log(), sessions=np.arange(4))
  estimate = off_policy.InversePropensityScoring().estimate(log, _tiny_target())
  per_slate = [np.dot(w, r) / 2 for w, r in zip(WEIGHTS, [[1, 0], [0, 1], [1, 1], [0, 0]])]
  assert estimate.standard_error == pytest.approx(np.std(per_slate, ddof=1) / np.sqrt(4))


def test_snips_normalises_each_position_by_its_weights():
  weights, rewards = np.array(WEIGHTS), np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
  by_position = (weights * rewards).sum(axis=0) / weights.sum(axis=0)
  estimate = off_policy.SelfNormalizedInversePropensityScoring().estimate(
      _tiny_log(), _tiny_target())
  assert estimate.value == pytest.approx(by_position.mean())
  # Position 0: (1 + 0.5) / (1 + 1.2 + 0.5 + 0.6).
  assert by_position[0] == pytest.approx(1.5 / 3.3)


def test_dr_matches_a_hand_computation():
  q = [[0.4, 0.2, 0.1],   # position 0, items 0 1 2
       [0.2, 0.1, 0.05]]  # position 1
  # The target's expected q at position 0, and at position 1 given the item above.
  q_0 = 0.5 * 0.4 + 0.3 * 0.2 + 0.2 * 0.1
  q_1_after = {0: 0.6 * 0.1 + 0.4 * 0.05, 1: (5 / 7) * 0.2 + (2 / 7) * 0.05,
               2: 0.625 * 0.2 + 0.375 * 0.1}
  (a0, a1), (b0, b1), (c0, c1), (d0, d1) = WEIGHTS
  per_slate = [
      (a0 * (1 - 0.4) + q_0) + (a1 * (0 - 0.1) + a0 * q_1_after[0]),    # [0, 1] clicks 1 0
      (b0 * (0 - 0.2) + q_0) + (b1 * (1 - 0.05) + b0 * q_1_after[1]),   # [1, 2] clicks 0 1
      (c0 * (1 - 0.1) + q_0) + (c1 * (1 - 0.2) + c0 * q_1_after[2]),    # [2, 0] clicks 1 1
      (d0 * (0 - 0.2) + q_0) + (d1 * (0 - 0.2) + d0 * q_1_after[1])]    # [1, 0] clicks 0 0
  estimate = off_policy.DoublyRobust(FixedRewardModel(q)).estimate(_tiny_log(), _tiny_target())
  assert estimate.value == pytest.approx(np.mean(per_slate) / 2)


def test_the_position_based_model_is_position_mean_times_shrunk_item_lift():
  model = off_policy.PositionBasedRewardModel(prior_strength=1.0)
  model.fit(_tiny_log())
  # Both positions average 0.5. Item 0 earned 2 rewards where 1.5 were expected, item 1 earned
  # 0 of 1.5, item 2 earned 2 of 1; one expected reward at the average is added to each.
  lift = np.array([(2 + 1) / (1.5 + 1), (0 + 1) / (1.5 + 1), (2 + 1) / (1 + 1)])
  np.testing.assert_allclose(model.predict(_tiny_log())[0], [0.5 * lift, 0.5 * lift])


# Against the simulator. One step per session makes the estimand the target's on-policy CTR
# (module docstring); no interest walk and no satisfaction keep users the same in runs of any
# length.
ONE_STEP = dataclasses.replace(simulator.INDEPENDENT_CLICKS, max_steps=1, session_drift=0.0)
POLICY_SEED = 11


@pytest.fixture(scope="module")
def world():
  return simulator.World.sample(np.random.default_rng(3), n_users=200, n_items=100,
                                n_categories=6)


@pytest.fixture(scope="module")
def target_policy(world):
  # The logging policy's own scores, made more decisive.
  return policies.LoggingPolicy(world, seed=POLICY_SEED, temperature=0.7)


@pytest.fixture(scope="module")
def on_policy_ctr(world, target_policy):
  # 100k slates: its sampling error is a fifth of the estimates' with 5k.
  return simulator.simulate(target_policy, 100_000, seed=100, world=world,
                            user_model=ONE_STEP).impressions["click"].mean()


class TrueClickProbability:
  """The simulator's click probability, known here because the test owns the world."""

  def __init__(self, world):
    self._world = world

  def fit(self, log):
    del log

  def predict(self, log):
    relevance = (ONE_STEP.affinity_weight
                 * self._world.user_interest[log.users] @ self._world.item_embedding.T
                 + ONE_STEP.quality_weight * self._world.item_attractiveness)
    examined = simulator.examination_probability(np.arange(log.items.shape[1]), ONE_STEP)
    return examined[None, :, None] / (1 + np.exp(-(ONE_STEP.click_bias + relevance)))[:, None]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_estimates_from_logs_cover_the_targets_on_policy_ctr(world, target_policy,
                                                             on_policy_ctr, seed):
  logging_policy = policies.LoggingPolicy(world, seed=POLICY_SEED, temperature=1.0)
  logged = simulator.simulate(logging_policy, 5_000, seed=seed, world=world, user_model=ONE_STEP)
  log = off_policy.SlateLog.from_impressions(logged.impressions, world.n_items)
  target = off_policy.PlackettLuceTarget(off_policy.logging_policy_logits(target_policy))
  estimates = {
      "ips": off_policy.InversePropensityScoring().estimate(log, target),
      "snips": off_policy.SelfNormalizedInversePropensityScoring().estimate(log, target),
      "dr": off_policy.DoublyRobust().estimate(log, target),
      "dr_true_model": off_policy.DoublyRobust(TrueClickProbability(world)).estimate(log, target),
  }
  for name, estimate in estimates.items():
    assert estimate.low <= on_policy_ctr <= estimate.high, (name, estimate, on_policy_ctr)
    # The logging policy's own CTR is far off: the reweighting is what gets it right.
    assert log.rewards.mean() < estimate.low, (name, estimate)
  # Clicks at a CTR near 0.1 are mostly noise no reward model removes, so DR's gain is modest
  # (about 7% here), and the better its model, the larger.
  assert estimates["dr"].standard_error < estimates["ips"].standard_error
  assert estimates["dr_true_model"].standard_error < estimates["dr"].standard_error



def test_logging_policy_logits_reproduce_the_logged_propensities(world):
  # Several steps per session, so the last clicked item moves the scores too.
  policy = policies.LoggingPolicy(world, seed=POLICY_SEED)
  logged = simulator.simulate(policy, 300, seed=5, world=world)
  log = off_policy.SlateLog.from_impressions(logged.impressions, world.n_items)
  assert (log.clicked[:, -1] != simulator.NO_ITEM).mean() > 0.2
  target = off_policy.PlackettLuceTarget(off_policy.logging_policy_logits(policy))
  probabilities = target.step_probabilities(log)
  logged_items = np.take_along_axis(probabilities, log.items[:, :, None], axis=2)[:, :, 0]
  np.testing.assert_allclose(logged_items, log.propensities, rtol=1e-9)
  # Evaluated on its own logs, a policy's weights are 1: IPS gives back the logged CTR.
  estimate = off_policy.InversePropensityScoring().estimate(log, target)
  assert estimate.value == pytest.approx(log.rewards.mean())
