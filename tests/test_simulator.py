"""The simulator's behaviour model, each rule observed on simulated sessions."""
import dataclasses
import itertools

import numpy as np
import pandas as pd
import pytest

from components.data import generator
from components.data import simulator


@pytest.fixture(scope="module")
def world():
  return simulator.World.sample(np.random.default_rng(3), n_users=200, n_items=120,
                                n_categories=6)


class OraclePolicy:
  """Knows every user's long-term taste: shows the most relevant items, best first."""

  def __init__(self, world):
    self._relevance = world.user_interest @ world.item_embedding.T

  def slate(self, context, rng):
    del rng
    items = np.argsort(-self._relevance[context.users], axis=1)[:, :context.slate_size]
    return simulator.Slate(items=items, propensities=np.ones(items.shape))


def test_plackett_luce_propensities_are_the_step_probabilities():
  logits = np.log(np.array([[0.5, 0.3, 0.2]]))
  slate = simulator.plackett_luce(logits, slate_size=2, rng=np.random.default_rng(0))
  first, second = slate.items[0]
  weights = np.exp(logits[0])
  assert slate.propensities[0, 0] == pytest.approx(weights[first] / weights.sum())
  assert slate.propensities[0, 1] == pytest.approx(
      weights[second] / (weights.sum() - weights[first]))


def test_plackett_luce_samples_slates_with_their_probability():
  logits = np.log(np.array([0.5, 0.3, 0.2]))
  draws = simulator.plackett_luce(np.tile(logits, (20_000, 1)), 2, np.random.default_rng(1))
  observed = pd.Series(map(tuple, draws.items)).value_counts(normalize=True)
  for first, second in itertools.permutations(range(3), 2):
    p = np.exp(logits[first]) * np.exp(logits[second]) / (1 - np.exp(logits[first]))
    assert observed[(first, second)] == pytest.approx(p, abs=0.015)
  # The logged propensities multiply to the slate's probability.
  slate_probability = draws.propensities.prod(axis=1)
  expected = [np.exp(logits[a]) * np.exp(logits[b]) / (1 - np.exp(logits[a]))
              for a, b in draws.items]
  assert np.allclose(slate_probability, expected)


def test_same_seed_same_sessions(world):
  policy = simulator.UniformPolicy(world.n_items)
  first = simulator.simulate(policy, 200, seed=4, world=world)
  second = simulator.simulate(policy, 200, seed=4, world=world)
  pd.testing.assert_frame_equal(first.impressions, second.impressions)
  assert not first.impressions.equals(simulator.simulate(policy, 200, seed=5,
                                                         world=world).impressions)


def test_slates_are_distinct_items_with_valid_propensities(world):
  result = simulator.simulate(simulator.LoggingPolicy(world, seed=0), 300, seed=1, world=world)
  log = result.impressions
  per_slate = log.groupby(["session", "step"])
  assert (per_slate["item"].nunique() == simulator.DEFAULT_SLATE_SIZE).all()
  assert ((log["propensity"] > 0) & (log["propensity"] <= 1)).all()
  assert not (log["purchase"] & ~log["click"]).any()  # purchases are clicks
  totals = log.groupby("session")[["click", "purchase"]].sum()
  assert (totals["click"].to_numpy() == result.sessions["clicks"].to_numpy()).all()
  revenue = log["price"].where(log["purchase"], 0.0).groupby(log["session"]).sum()
  assert np.allclose(revenue.to_numpy(), result.sessions["revenue"].to_numpy())


def test_top_positions_are_clicked_more(world):
  log = simulator.simulate(simulator.UniformPolicy(world.n_items), 3_000, seed=2,
                           world=world).impressions
  by_position = log.groupby("position")["click"].mean()
  assert by_position[0] > 2 * by_position[simulator.DEFAULT_SLATE_SIZE - 1]


def test_informed_policies_earn_more_than_random_ones(world):
  def clicks_per_session(policy):
    return simulator.simulate(policy, 1_000, seed=3, world=world).sessions["clicks"].mean()

  uniform = clicks_per_session(simulator.UniformPolicy(world.n_items))
  logging = clicks_per_session(simulator.LoggingPolicy(world, seed=0))
  oracle = clicks_per_session(OraclePolicy(world))
  assert uniform * 1.5 < logging < oracle


def test_satisfied_users_stay_and_bored_users_leave(world):
  sessions = simulator.simulate(simulator.LoggingPolicy(world, seed=0), 2_000, seed=6,
                                world=world).sessions
  with_clicks = sessions[sessions["clicks"] > 0]["steps"].mean()
  without = sessions[sessions["clicks"] == 0]["steps"].mean()
  assert with_clicks > without
  impatient = dataclasses.replace(simulator.UserModel(), boredom_weight=3.0)
  bored = simulator.simulate(simulator.UniformPolicy(world.n_items), 2_000, seed=6,
                             world=world, user_model=impatient).sessions
  patient = simulator.simulate(simulator.UniformPolicy(world.n_items), 2_000, seed=6,
                               world=world).sessions
  assert bored["steps"].mean() < patient["steps"].mean()
  assert sessions["steps"].max() <= simulator.UserModel().max_steps


def test_interest_moves_toward_clicked_items(world):
  """After clicks, items like the clicked ones are clicked more than the long-term taste says."""
  no_drift = dataclasses.replace(simulator.UserModel(), interest_step=0.0)
  strong_drift = dataclasses.replace(simulator.UserModel(), interest_step=0.8)

  def later_clicks_near_first_click(user_model):
    log = simulator.simulate(simulator.UniformPolicy(world.n_items), 3_000, seed=7,
                             world=world, user_model=user_model).impressions
    clicks = log[log["click"]]
    first = clicks.groupby("session").head(1).set_index("session")["item"]
    later = clicks[clicks.groupby("session").cumcount() > 0]
    similarity = np.einsum(
        "nd,nd->n", world.item_embedding[later["item"]],
        world.item_embedding[first.loc[later["session"]].to_numpy()])
    return similarity.mean()

  assert later_clicks_near_first_click(strong_drift) > later_clicks_near_first_click(no_drift)


def test_interest_random_walks_across_sessions(world):
  users = np.zeros(50, dtype=int)  # one user's 50 sessions
  interests = simulator._session_interests(  # pylint: disable=protected-access
      world, simulator.UserModel(), users, np.random.default_rng(0))
  distance = np.linalg.norm(interests - world.user_interest[0], axis=1)
  assert distance[40:].mean() > 2 * distance[:5].mean()  # a walk strays further with time


def test_default_world_is_the_default_datasets():
  world = generator.default_world()
  assert world.n_users == generator.DEFAULT_USERS and world.n_items == generator.DEFAULT_ITEMS
  np.testing.assert_array_equal(world.item_embedding, generator.default_world().item_embedding)


def test_slate_larger_than_the_catalog_is_refused(world):
  with pytest.raises(ValueError, match="slate_size"):
    simulator.simulate(simulator.UniformPolicy(world.n_items), 1, seed=0, world=world,
                       slate_size=world.n_items + 1)
