"""SavedModelPolicy against a tiny hand-built SavedModel (tests/fake_recommender.py)."""
import numpy as np
import pytest

from components.simulation import model_policy
from components.simulation import simulator
from schemas import contract
from tests import fake_recommender

N_ITEMS, TOP_K = fake_recommender.N_ITEMS, fake_recommender.TOP_K


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  return fake_recommender.save(tmp_path_factory.mktemp("model") / "1")


def _context(users, history, slate_size=simulator.DEFAULT_SLATE_SIZE):
  users = np.array(users)
  return simulator.SlateContext(
      users=users, clicked=np.full((len(users), simulator.CONTEXT_HISTORY), simulator.NO_ITEM),
      history=np.array(history), slate_size=slate_size)


def _pad(items):
  return [simulator.NO_ITEM] * (simulator.CONTEXT_HISTORY - len(items)) + items


def test_retrieve_shows_the_top_items_deterministically(model_dir):
  policy = model_policy.SavedModelPolicy(model_dir, contract.RETRIEVE_SIGNATURE, N_ITEMS)
  slate = policy.slate(_context([0, 15], [_pad([]), _pad([3])], slate_size=6), rng=None)
  np.testing.assert_array_equal(slate.items, [[0, 1, 2, 3, 4, 5],
                                              [15, 16, 17, 18, 19, 0]])
  np.testing.assert_array_equal(slate.propensities, np.ones((2, 6)))


def test_serving_default_sees_the_history_oldest_first_and_logs_its_propensities(model_dir):
  policy = model_policy.SavedModelPolicy(model_dir, contract.SERVING_SIGNATURE, N_ITEMS)
  slate = policy.slate(_context([2, 1], [_pad([]), _pad([3, 5])]), rng=None)
  # User 1's history reaches the model as i00003, i00005, '', ...: 1 + 1 * 3 + 2 * 5 = 14.
  np.testing.assert_array_equal(slate.items[:, 0], [2, 14])
  np.testing.assert_array_equal(slate.items[1, :7], [14, 15, 16, 17, 18, 19, 0])
  np.testing.assert_allclose(slate.propensities,
                             np.tile(1 / np.arange(1, simulator.DEFAULT_SLATE_SIZE + 1), (2, 1)),
                             rtol=1e-6)


@pytest.mark.parametrize("signature_name, has_propensities", [
    (contract.SERVING_SIGNATURE, True), (contract.RETRIEVE_SIGNATURE, False)])
def test_the_simulator_runs_the_policy(model_dir, signature_name, has_propensities):
  world = simulator.World.sample(np.random.default_rng(0), n_users=5, n_items=N_ITEMS,
                                 n_categories=2)
  policy = model_policy.SavedModelPolicy(model_dir, signature_name, N_ITEMS)
  result = simulator.simulate(policy, 30, seed=0, world=world)
  log = result.impressions
  # All 30 sessions are one batch, so no session's first slate has a history to rank by.
  first_slates = log[log["step"] == 0]
  np.testing.assert_array_equal(first_slates["item"],
                                (first_slates["user"] + first_slates["position"]) % N_ITEMS)
  expected = 1 / (log["position"] + 1) if has_propensities else np.ones(len(log))
  np.testing.assert_allclose(log["propensity"], expected, rtol=1e-6)
  assert result.sessions["clicks"].sum() > 0


def test_a_missing_signature_is_named(model_dir):
  with pytest.raises(ValueError, match=r"no signature 'rerank'.*'retrieve'"):
    model_policy.SavedModelPolicy(model_dir, "rerank", N_ITEMS)


def test_fewer_items_than_the_slate_is_refused(model_dir):
  policy = model_policy.SavedModelPolicy(model_dir, contract.RETRIEVE_SIGNATURE, N_ITEMS)
  with pytest.raises(ValueError, match=f"returned {TOP_K} items per user, fewer than the slate "
                                       f"size {TOP_K + 1}"):
    policy.slate(_context([0], [_pad([])], slate_size=TOP_K + 1), rng=None)


def test_ids_outside_the_catalog_are_refused(model_dir):
  policy = model_policy.SavedModelPolicy(model_dir, fake_recommender.BROKEN_SIGNATURE, N_ITEMS)
  with pytest.raises(ValueError, match=r"outside the simulated catalog of 20 items.*i99999"):
    policy.slate(_context([0], [_pad([])]), rng=None)
