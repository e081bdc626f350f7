"""The simulator's long-term dynamics: clickbait, satisfaction, fatigue, session time, returns."""
import dataclasses

import numpy as np
import pytest

from components.simulation import policies
from components.simulation import simulator

SATISFACTION = simulator.DYNAMICS[simulator.SATISFACTION]


@pytest.fixture(scope="module")
def world():
  return simulator.World.sample(np.random.default_rng(3), n_users=300, n_items=200,
                                n_categories=6, clickbait_share=0.2)


class FixedItemsPolicy:
  """Shows random slates drawn from a fixed set of items only (uniformly, exact propensities)."""

  def __init__(self, n_items, items):
    self._logits = np.full(n_items, -np.inf)
    self._logits[items] = 0.0

  def slate(self, context, rng):
    return policies.plackett_luce(np.tile(self._logits, (len(context.users), 1)),
                                  context.slate_size, rng)


def _outcomes(world, items, user_model=simulator.UserModel(), n_sessions=3_000, seed=0):
  result = simulator.simulate(FixedItemsPolicy(world.n_items, items), n_sessions, seed, world,
                              user_model)
  return result.sessions, result.impressions


def test_clickbait_is_attractive_and_of_low_quality(world):
  bait = world.item_clickbait
  assert 0.1 < bait.mean() < 0.3
  assert world.item_attractiveness[bait].mean() > world.item_attractiveness[~bait].mean() + 1.5
  assert world.item_quality[bait].mean() < world.item_quality[~bait].mean() - 1.0
  # An ordinary item looks as good as it is.
  np.testing.assert_array_equal(world.item_attractiveness[~bait], world.item_quality[~bait])


def test_a_world_without_clickbait_is_the_world_of_before():
  plain = simulator.World.sample(np.random.default_rng(1), 20, 30, 3)
  assert not plain.item_clickbait.any()
  np.testing.assert_array_equal(plain.item_attractiveness, plain.item_quality)
  with pytest.raises(ValueError, match="clickbait_share"):
    simulator.World.sample(np.random.default_rng(1), 20, 30, 3, clickbait_share=1.5)


def test_clickbait_is_clicked_more_and_leaves_users_less_satisfied(world):
  bait = np.flatnonzero(world.item_clickbait)
  # As many ordinary items as there are clickbait ones, from the middle of the quality range.
  ordinary = np.flatnonzero(~world.item_clickbait)
  ordinary = ordinary[np.argsort(np.abs(world.item_quality[ordinary]))][:len(bait)]
  bait_sessions, bait_log = _outcomes(world, bait)
  plain_sessions, plain_log = _outcomes(world, ordinary)
  def first_step_ctr(log):
    return log[log["step"] == 0]["click"].mean()

  assert first_step_ctr(bait_log) > 1.5 * first_step_ctr(plain_log)
  assert bait_sessions["satisfaction"].mean() < plain_sessions["satisfaction"].mean() - 0.5
  assert (bait_sessions["satisfaction"] < 0).mean() > 0.5


def test_satisfaction_extends_sessions_raises_purchases_and_returns(world):
  good = np.flatnonzero(~world.item_clickbait & (world.item_quality > 0.5))
  bad = np.flatnonzero(~world.item_clickbait & (world.item_quality < -0.5))
  # Users who click often, so that boredom (clickless steps) does not end the sessions first.
  eager = dataclasses.replace(simulator.UserModel(), click_bias=-1.0)
  good_sessions, good_log = _outcomes(world, good, eager)
  bad_sessions, bad_log = _outcomes(world, bad, eager)
  assert good_sessions["satisfaction"].mean() > bad_sessions["satisfaction"].mean()
  assert good_sessions["steps"].mean() > 1.3 * bad_sessions["steps"].mean()
  assert (good_sessions["return_probability"].mean()
          > bad_sessions["return_probability"].mean() + 0.1)
  # Per click, satisfied users buy more (price and affinity being comparable in both sets).
  def purchases_per_click(log):
    return log[log["click"]]["purchase"].mean()

  assert purchases_per_click(good_log) > purchases_per_click(bad_log)


def test_the_time_budget_ends_a_session_that_disappoints():
  """Without boredom, a user shown only poor items leaves when the budget runs out."""
  model = dataclasses.replace(simulator.UserModel(), leave_bias=-50.0, click_bias=10.0,
                              affinity_weight=0.0, examination_decay=0.0, fatigue_penalty=0.0,
                              repetition_penalty=0.0)
  world = simulator.World.sample(np.random.default_rng(0), 1, 30, 2)
  world = dataclasses.replace(world, item_quality=np.full(30, -0.1))
  sessions = simulator.simulate(FixedItemsPolicy(30, np.arange(30)), 1, 0, world,
                                user_model=model).sessions
  # Each step costs 1 and ten clicked items of quality -0.1 take 10 * 0.05 * 2 = 1 step more:
  # the budget of 8 lasts 4 steps (8 - 2 - 2 - 2 - 2 = 0).
  assert sessions["steps"].iloc[0] == 4


def test_fatigue_grows_when_one_category_is_shown_over_and_over():
  model = simulator.UserModel()
  exposure = np.zeros((2, 3))
  one_category = np.zeros((1, 10), dtype=int)
  mixed = np.array([[0, 1, 2, 0, 1, 2, 0, 1, 2, 0]])
  expose = simulator._category_exposure  # pylint: disable=protected-access
  for _ in range(5):
    exposure = np.concatenate([expose(exposure[:1], one_category, model),
                               expose(exposure[1:], mixed, model)])
  # 1 + 0.7 + 0.7^2 + 0.7^3 + 0.7^4 for the one category.
  assert exposure[0, 0] == pytest.approx(sum(0.7 ** k for k in range(5)))
  nothing = np.zeros((2, 10))
  change = simulator.satisfaction_change(model, nothing, nothing.astype(bool), exposure)
  assert change[0] == pytest.approx(-model.fatigue_penalty
                                    * (exposure[0, 0] - model.fatigue_tolerance))
  assert change[1] == 0.0  # the mix stays under the tolerance


def test_repetition_and_quality_move_satisfaction_by_hand():
  model = simulator.UserModel()
  quality = np.array([[1.0, -2.0, 0.0]])
  repeats = np.array([[False, False, True]])
  change = simulator.satisfaction_change(model, quality, repeats, np.zeros((1, 2)))
  assert change[0] == pytest.approx(0.5 * (1.0 - 2.0) - 0.5)


def test_return_probability_rises_with_satisfaction():
  model = simulator.UserModel()
  p = simulator.return_probability(model, np.array([-3.0, 0.0, 3.0]))
  assert p[0] < p[1] < p[2]
  assert p[1] == pytest.approx(1 / (1 + np.exp(-model.return_bias)))


def test_run_users_follows_each_user_until_they_do_not_return(world):
  users = np.arange(100)
  result = simulator.run_users(world, policies.LoggingPolicy(world, seed=0), users, horizon=4,
                               rng=np.random.default_rng(0))
  sessions = result.sessions
  assert (sessions[sessions["round"] == 0]["user"].to_numpy() == users).all()
  assert sessions["round"].max() == 3 and sessions.groupby("user").size().max() == 4
  for round_number in range(1, 4):
    before = sessions[sessions["round"] == round_number - 1]
    now = set(sessions[sessions["round"] == round_number]["user"])
    assert now == set(before[before["returned"]]["user"])
  assert sessions["session"].is_unique
  assert set(result.impressions["session"]) == set(sessions["session"])
  # Some leave: at the default dynamics not every session brings the user back.
  assert 0 < sessions["returned"].mean() < 1


def test_trust_carries_satisfaction_into_the_next_session(world):
  policy = FixedItemsPolicy(world.n_items, np.flatnonzero(world.item_clickbait))
  first = simulator.run_sessions(world, policy, 500, np.random.default_rng(0))
  carried = SATISFACTION.user_model.trust_carry
  last = first.sessions.groupby("user")["satisfaction"].last()
  np.testing.assert_allclose(first.state.trust[last.index], carried * last.to_numpy())


def test_independent_clicks_keep_users_unchanged_by_what_they_are_shown(world):
  model = simulator.INDEPENDENT_CLICKS
  sessions = simulator.simulate(FixedItemsPolicy(world.n_items, np.flatnonzero(
      world.item_clickbait)), 500, 0, world, user_model=model).sessions
  assert (sessions["satisfaction"] == 0).all() and sessions["returned"].all()
  assert simulator.DYNAMICS[simulator.INDEPENDENT].clickbait_share == 0.0


def test_run_users_starts_no_round_once_max_impressions_are_shown(world):
  policy = policies.LoggingPolicy(world, seed=0)
  full = simulator.run_users(world, policy, np.arange(100), 4, np.random.default_rng(0))
  first_round = (full.impressions["session"] < 100).sum()
  bounded = simulator.run_users(world, policy, np.arange(100), 4, np.random.default_rng(0),
                                max_impressions=first_round)
  assert bounded.sessions["round"].max() == 0 and len(bounded.impressions) == first_round
  # One impression more than the first round showed lets the second round run, and only it.
  longer = simulator.run_users(world, policy, np.arange(100), 4, np.random.default_rng(0),
                               max_impressions=first_round + 1)
  assert longer.sessions["round"].max() == 1
