"""The simulator's behaviour model, each rule observed on simulated sessions."""
import dataclasses
import itertools

import numpy as np
import pandas as pd
import pytest

from components.simulation import generator
from components.simulation import policies
from components.simulation import simulator


@pytest.fixture(scope="module")
def world():
  return simulator.World.sample(np.random.default_rng(3), n_users=200, n_items=120,
                                n_categories=6)


def test_plackett_luce_propensities_are_the_step_probabilities():
  logits = np.log(np.array([[0.5, 0.3, 0.2]]))
  slate = policies.plackett_luce(logits, slate_size=2, rng=np.random.default_rng(0))
  first, second = slate.items[0]
  weights = np.exp(logits[0])
  assert slate.propensities[0, 0] == pytest.approx(weights[first] / weights.sum())
  assert slate.propensities[0, 1] == pytest.approx(
      weights[second] / (weights.sum() - weights[first]))


def test_plackett_luce_samples_slates_with_their_probability():
  logits = np.log(np.array([0.5, 0.3, 0.2]))
  draws = policies.plackett_luce(np.tile(logits, (20_000, 1)), 2, np.random.default_rng(1))
  observed = pd.Series(map(tuple, draws.items)).value_counts(normalize=True)
  for first, second in itertools.permutations(range(3), 2):
    p = np.exp(logits[first]) * np.exp(logits[second]) / (1 - np.exp(logits[first]))
    assert observed[(first, second)] == pytest.approx(p, abs=0.015)
  # The logged propensities multiply to the slate's probability.
  slate_probability = draws.propensities.prod(axis=1)
  expected = [np.exp(logits[a]) * np.exp(logits[b]) / (1 - np.exp(logits[a]))
              for a, b in draws.items]
  assert np.allclose(slate_probability, expected)


def _step_probabilities(logits, items):
  """Each placed item's softmax probability among the items not yet placed, one at a time."""
  propensities = np.zeros(items.shape)
  for row, slate in enumerate(items):
    left = list(range(logits.shape[1]))
    for position, item in enumerate(slate):
      propensities[row, position] = np.exp(logits[row, item]
                                           - np.logaddexp.reduce(logits[row, left]))
      left.remove(item)
  return propensities


@pytest.mark.parametrize("scale", [1.0, 100.0])  # 100: a near-deterministic, peaked policy
def test_plackett_luce_propensities_match_a_step_by_step_recomputation(scale):
  rng = np.random.default_rng(2)
  logits = scale * rng.normal(size=(6, 8))
  logits[0, :3] = -np.inf  # items a policy never shows
  slate = policies.plackett_luce(logits, slate_size=4, rng=rng)
  assert not np.isin(slate.items[0], [0, 1, 2]).any()
  assert ((slate.propensities > 0) & (slate.propensities <= 1)).all()
  np.testing.assert_allclose(slate.propensities, _step_probabilities(logits, slate.items),
                             rtol=1e-9)


def test_uniform_policy_logs_one_over_the_items_left(world):
  log = simulator.simulate(policies.UniformPolicy(world.n_items), 50, seed=0,
                           world=world).impressions
  np.testing.assert_allclose(log["propensity"], 1 / (world.n_items - log["position"]))


def test_same_seed_same_sessions(world):
  policy = policies.UniformPolicy(world.n_items)
  first = simulator.simulate(policy, 200, seed=4, world=world)
  second = simulator.simulate(policy, 200, seed=4, world=world)
  pd.testing.assert_frame_equal(first.impressions, second.impressions)
  assert not first.impressions.equals(simulator.simulate(policy, 200, seed=5,
                                                         world=world).impressions)


def test_slates_are_distinct_items_with_valid_propensities(world):
  result = simulator.simulate(policies.LoggingPolicy(world, seed=0), 300, seed=1, world=world)
  log = result.impressions
  per_slate = log.groupby(["session", "step"])
  assert (per_slate["item"].nunique() == simulator.DEFAULT_SLATE_SIZE).all()
  assert ((log["propensity"] > 0) & (log["propensity"] <= 1)).all()
  assert not (log["purchase"] & ~log["click"]).any()  # purchases are clicks
  totals = log.groupby("session")[["click", "purchase"]].sum()
  assert (totals["click"].to_numpy() == result.sessions["clicks"].to_numpy()).all()
  revenue = log["price"].where(log["purchase"], 0.0).groupby(log["session"]).sum()
  assert np.allclose(revenue.to_numpy(), result.sessions["revenue"].to_numpy())


class RecordingPolicy:
  """A uniform policy that keeps every context it is shown."""

  def __init__(self, world):
    self._uniform = policies.UniformPolicy(world.n_items)
    self.contexts = []

  def slate(self, context, rng):
    self.contexts.append(context)
    return self._uniform.slate(context, rng)


def test_policies_see_the_items_clicked_so_far_oldest_first(world):
  policy = RecordingPolicy(world)
  result = simulator.simulate(policy, 300, seed=8, world=world)
  log, sessions = result.impressions, result.sessions
  clicks = log[log["click"]]
  for step, context in enumerate(policy.contexts):
    active = sessions[sessions["steps"] > step]  # a step's batch, in session order
    np.testing.assert_array_equal(context.users, active["user"].to_numpy())
    for session, seen in zip(active["session"], context.clicked):
      before = clicks[(clicks["session"] == session) & (clicks["step"] < step)]["item"]
      expected = before.to_numpy()[-simulator.CONTEXT_HISTORY:]
      padding = np.full(simulator.CONTEXT_HISTORY - len(expected), simulator.NO_ITEM)
      np.testing.assert_array_equal(seen, np.concatenate([padding, expected]))


@pytest.fixture
def tiny_world():
  """Three users, so that their sessions share batches and each has several."""
  return simulator.World.sample(np.random.default_rng(5), n_users=3, n_items=15, n_categories=2)


def _history(items):
  """The last CONTEXT_HISTORY of `items`, padded in front with NO_ITEM, as policies see it."""
  items = list(items)[-simulator.CONTEXT_HISTORY:]
  return np.array([simulator.NO_ITEM] * (simulator.CONTEXT_HISTORY - len(items)) + items)


def test_policies_see_the_users_clicks_up_to_their_batch_and_in_their_session(
    tiny_world, monkeypatch):
  monkeypatch.setattr(simulator, "SESSIONS_PER_BATCH", 4)
  # Eager clickers fill the history beyond CONTEXT_HISTORY within a few sessions.
  eager = dataclasses.replace(simulator.UserModel(), click_bias=0.0)
  policy = RecordingPolicy(tiny_world)
  result = simulator.simulate(policy, 10, seed=0, world=tiny_world, user_model=eager)
  sessions = result.sessions
  clicks = result.impressions[result.impressions["click"]]  # session, step, position order
  assert sessions.groupby("user")["clicks"].sum().max() > simulator.CONTEXT_HISTORY
  contexts = iter(policy.contexts)
  for batch_start in range(0, len(sessions), 4):
    batch = sessions[sessions["session"].between(batch_start, batch_start + 3)]
    for step in range(batch["steps"].max()):
      context = next(contexts)
      active = batch[batch["steps"] > step]
      np.testing.assert_array_equal(context.users, active["user"].to_numpy())
      for session, user, seen in zip(active["session"], active["user"], context.history):
        earlier_batches = clicks[(clicks["user"] == user) & (clicks["session"] < batch_start)]
        this_session = clicks[(clicks["session"] == session) & (clicks["step"] < step)]
        np.testing.assert_array_equal(
            seen, _history(list(earlier_batches["item"]) + list(this_session["item"])))
  assert next(contexts, None) is None
  # After the run, a user's history is all of their clicks.
  for user in range(tiny_world.n_users):
    np.testing.assert_array_equal(result.state.history[user],
                                  _history(clicks[clicks["user"] == user]["item"]))


def test_a_run_continues_the_history_of_the_one_before(tiny_world):
  first = simulator.run_sessions(tiny_world, policies.UniformPolicy(tiny_world.n_items), 20,
                                 np.random.default_rng(0))
  assert (first.state.history != simulator.NO_ITEM).any()
  continued, fresh = RecordingPolicy(tiny_world), RecordingPolicy(tiny_world)
  simulator.run_sessions(tiny_world, continued, 20, np.random.default_rng(1), state=first.state)
  simulator.run_sessions(tiny_world, fresh, 20, np.random.default_rng(1))
  opening = continued.contexts[0]
  np.testing.assert_array_equal(opening.history, first.state.history[opening.users])
  assert (fresh.contexts[0].history == simulator.NO_ITEM).all()


def test_top_positions_are_clicked_more(world):
  log = simulator.simulate(policies.UniformPolicy(world.n_items), 3_000, seed=2,
                           world=world).impressions
  by_position = log.groupby("position")["click"].mean()
  assert by_position[0] > 2 * by_position[simulator.DEFAULT_SLATE_SIZE - 1]


def test_informed_policies_earn_more_than_random_ones(world):
  def clicks_per_session(policy):
    return simulator.simulate(policy, 1_000, seed=3, world=world).sessions["clicks"].mean()

  uniform = clicks_per_session(policies.UniformPolicy(world.n_items))
  logging = clicks_per_session(policies.LoggingPolicy(world, seed=0))
  oracle = clicks_per_session(policies.OraclePolicy(world))
  assert uniform * 1.5 < logging < oracle


def test_the_oracle_shows_the_likeliest_clicks_best_first(world):
  # Quality weighs more than by default, so an oracle ignoring the user model it is given fails.
  user_model = dataclasses.replace(simulator.UserModel(), quality_weight=3.0)
  users = np.array([0, 7, 7, 199])
  empty = np.full((len(users), simulator.CONTEXT_HISTORY), simulator.NO_ITEM)
  slate = policies.OraclePolicy(world, user_model).slate(
      simulator.SlateContext(users=users, clicked=empty, history=empty, slate_size=5), rng=None)
  click_probability = 1.0 / (1.0 + np.exp(-(
      user_model.click_bias
      + user_model.affinity_weight * world.user_interest[users] @ world.item_embedding.T
      + user_model.quality_weight * world.item_attractiveness)))
  np.testing.assert_array_equal(slate.items, np.argsort(-click_probability, axis=1)[:, :5])
  np.testing.assert_array_equal(slate.propensities, np.ones((len(users), 5)))


def test_satisfied_users_stay_and_bored_users_leave(world):
  sessions = simulator.simulate(policies.LoggingPolicy(world, seed=0), 2_000, seed=6,
                                world=world).sessions
  with_clicks = sessions[sessions["clicks"] > 0]["steps"].mean()
  without = sessions[sessions["clicks"] == 0]["steps"].mean()
  assert with_clicks > without
  impatient = dataclasses.replace(simulator.UserModel(), boredom_weight=3.0)
  bored = simulator.simulate(policies.UniformPolicy(world.n_items), 2_000, seed=6,
                             world=world, user_model=impatient).sessions
  patient = simulator.simulate(policies.UniformPolicy(world.n_items), 2_000, seed=6,
                               world=world).sessions
  assert bored["steps"].mean() < patient["steps"].mean()
  assert sessions["steps"].max() <= simulator.UserModel().max_steps


def test_interest_moves_toward_clicked_items(world):
  """After clicks, items like the clicked ones are clicked more than the long-term taste says."""
  no_drift = dataclasses.replace(simulator.UserModel(), interest_step=0.0)
  strong_drift = dataclasses.replace(simulator.UserModel(), interest_step=0.8)

  def later_clicks_near_first_click(user_model):
    log = simulator.simulate(policies.UniformPolicy(world.n_items), 3_000, seed=7,
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
  no_walk = np.zeros_like(world.user_interest)
  interests, walk = simulator._session_interests(  # pylint: disable=protected-access
      world, simulator.UserModel(), users, no_walk, np.random.default_rng(0))
  distance = np.linalg.norm(interests - world.user_interest[0], axis=1)
  assert distance[40:].mean() > 2 * distance[:5].mean()  # a walk strays further with time
  # The walk after the sessions is where the last one started; other users have not moved.
  np.testing.assert_allclose(world.user_interest[0] + walk[0], interests[-1])
  assert not walk[1:].any()


def test_a_run_continues_the_walk_of_the_one_before(world):
  policy = policies.UniformPolicy(world.n_items)
  first = simulator.run_sessions(world, policy, 2_000, np.random.default_rng(0))
  second = simulator.run_sessions(world, policy, 2_000, np.random.default_rng(1),
                                  state=first.state)
  fresh = simulator.run_sessions(world, policy, 2_000, np.random.default_rng(1))
  assert np.linalg.norm(second.state.walk, axis=1).mean() > 1.2 * np.linalg.norm(
      fresh.state.walk, axis=1).mean()


def test_default_world_is_the_default_datasets(tmp_path):
  world = generator.default_world()
  assert world.n_users == generator.DEFAULT_USERS and world.n_items == generator.DEFAULT_ITEMS
  np.testing.assert_array_equal(world.item_embedding, generator.default_world().item_embedding)
  # The world of a seed and sizes is the one its dataset was logged in.
  small = generator.default_world(seed=4, n_users=30, n_items=25, n_categories=3)
  items = pd.read_csv(generator.generate_dataset(tmp_path, seed=4, n_users=30, n_items=25,
                                                 n_events=200, n_categories=3).items)
  np.testing.assert_allclose(items["price"], small.item_price)


class BrokenPolicy:
  """A uniform policy with one flaw in the first slate of every batch."""

  def __init__(self, world, flaw):
    self._uniform = policies.UniformPolicy(world.n_items)
    self._flaw = flaw

  def slate(self, context, rng):
    slate = self._uniform.slate(context, rng)
    items, propensities = slate.items.copy(), slate.propensities.copy()
    if self._flaw == "repeated item":
      items[0, 1] = items[0, 0]
    elif self._flaw == "unknown item":
      items[0, 0] = -1
    elif self._flaw == "zero propensity":
      propensities[0, 0] = 0.0
    return simulator.Slate(items=items, propensities=propensities)


@pytest.mark.parametrize("flaw, message", [("repeated item", "twice"),
                                           ("unknown item", "outside"),
                                           ("zero propensity", r"\(0, 1\]")])
def test_policies_returning_unshowable_slates_are_refused(world, flaw, message):
  with pytest.raises(ValueError, match=message):
    simulator.simulate(BrokenPolicy(world, flaw), 5, seed=0, world=world)


def test_slate_larger_than_the_catalog_is_refused(world):
  with pytest.raises(ValueError, match="slate_size"):
    simulator.simulate(policies.UniformPolicy(world.n_items), 1, seed=0, world=world,
                       slate_size=world.n_items + 1)
