"""The DQN ranking head: per-objective rewards and agents, Bellman targets, Double DQN, CQL and
the serving policy."""
import dataclasses

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.autograph.core import ag_ctx

from components.models import ranker
from components.models import training
from components.models import two_tower
from components.models.config import ModelConfig
from components.models.config import OBJECTIVES
from components.models.config import RankerConfig
from components.models.config import RewardConfig
from components.simulation import policies
from schemas import contract

PAD = -1


def test_each_objective_has_its_reward_and_the_config_weighs_them():
  batch = {contract.CLICK: tf.constant([1, 1, 0, 1]),
           contract.PURCHASE: tf.constant([0, 1, 0, 0]),
           contract.REVENUE: tf.constant([0.0, 40.0, 0.0, 0.0]),
           contract.RETURNED: tf.constant([0, 0, 1, 1])}
  novelty = tf.constant([0.2, 1.0, 1.0, 0.0])
  assert OBJECTIVES == ("click", "purchase", "revenue", "novelty", "retention")
  # Nothing for an unclicked item, however novel or followed by a return.
  np.testing.assert_allclose(ranker.objective_rewards(batch, novelty).numpy(),
                             [[1, 0, 0, 0.2, 0], [1, 1, 40, 1, 0], [0, 0, 0, 0, 0],
                              [1, 0, 0, 0, 1]], rtol=1e-6)
  config = RewardConfig(click=1.0, purchase=2.0, revenue=0.01, novelty=0.5, retention=3.0)
  assert config.weights() == (1.0, 2.0, 0.01, 0.5, 3.0)


def test_reward_scales_are_each_objectives_mean_per_click():
  items = tf.constant([0, 1, 1, 0], tf.int64)
  transitions = tf.data.Dataset.from_tensor_slices({
      contract.transformed_name(contract.ITEM_ID): items,
      contract.CLICK: tf.constant([1, 1, 0, 1]), contract.PURCHASE: tf.constant([0, 1, 0, 0]),
      contract.REVENUE: tf.constant([0.0, 30.0, 0.0, 0.0]),
      contract.RETURNED: tf.constant([0, 0, 0, 0])})
  # Three clicks: one purchase of 30.00; novelty 0.5 of item 1; nobody returned, so that
  # agent's unit stays 1.
  np.testing.assert_allclose(ranker.reward_scales(transitions, np.array([0.0, 0.5])),
                             [1.0, 1 / 3, 10.0, 0.5 / 3, 1.0], rtol=1e-6)


def test_item_novelty_is_scaled_self_information():
  novelty = ranker.item_novelty(np.array([0.5, 0.25, 0.25, 0.0]))
  # -log2: 1, 2, 2 bits; the never-engaged item counts as the rarest; divided by the largest, 2.
  np.testing.assert_allclose(novelty, [0.5, 1.0, 1.0, 1.0])


def test_bellman_target_by_hand():
  # Two objectives, the second's rewards and values ten times the first's.
  rewards = tf.constant([[1.0, 10.0], [1.0, 10.0], [2.0, 20.0], [1.0, 10.0]])
  next_values = tf.constant([[3.0, 30.0], [5.0, 50.0], [7.0, 70.0], [10.0, 100.0]])
  done = tf.constant([0, 0, 1, 1])
  returned = tf.constant([0, 0, 0, 1])
  engagements = tf.constant([1, 2, 1, 0])
  # 1 + 0.9 * 3 = 3.7; one of two clicks of a slate shares its next state: 1 + 0.9 * 5 / 2;
  # a user's last step has no future: 2; across the session boundary to the user's next
  # session, discounted by 0.5: 1 + 0.5 * 10 = 6.
  np.testing.assert_allclose(
      ranker.bellman_targets(rewards, next_values, done, returned, engagements, 0.9,
                             0.5).numpy(),
      np.outer([3.7, 3.25, 2.0, 6.0], [1.0, 10.0]), rtol=1e-6)


def test_next_slate_is_chosen_online_and_valued_by_the_target_network():
  online = tf.constant([[1.0, 5.0, 2.0], [9.0, 0.0, 1.0]])
  click_logits = tf.constant([[0.0, np.log(3.0), 10.0], [0.0, 10.0, np.log(1 / 3)]])
  values = tf.constant([[10.0, 4.0, 20.0], [2.0, 30.0, 8.0]])
  slots = tf.constant([0.0, -np.log(3.0)])
  # Online picks items (1, 2) and (0, 2), not the target's own favourites, items 2 and 1.
  # Row 2: click probabilities sigmoid(0) = 1/2 and sigmoid(log(1/3) - log 3) = 1/10, so
  # P(a click) = 1 - (1/2)(9/10) = 0.55 and the click-weighted value (1/2 * 2 + 1/10 * 8) / 0.6.
  first = np.array([0.75, 1 / (1 + 3 * np.exp(-10.0))])
  expected = [(1 - np.prod(1 - first)) * (first @ [4.0, 20.0]) / first.sum(),
              0.55 * (1.0 + 0.8) / 0.6]
  # Each objective's values are valued on the same slate: a second objective of minus them.
  both = tf.stack([values, -values], axis=-1)
  np.testing.assert_allclose(
      ranker.next_slate_values(online, click_logits, both, slots, 2).numpy(),
      np.stack([expected, -np.array(expected)], axis=1), rtol=1e-5)


def test_cql_penalty_by_hand():
  candidate_q = tf.constant([[0.0, -np.inf], [np.log(3.0), np.log(3.0)], [9.0, 9.0]])
  logged_q = tf.constant([0.0, 0.0, 0.0])
  # Row 1: log(e^0 + e^0) - 0 = log 2 (the -inf slot is the logged action, not counted twice).
  # Row 2: log(3 + 3 + 1) - 0 = log 7. Row 3 has weight 0.
  assert float(ranker.cql_penalty(candidate_q, logged_q, tf.constant([1.0, 1.0, 0.0]))) == (
      pytest.approx((np.log(2.0) + np.log(7.0)) / 2, rel=1e-6))


def test_cql_penalty_is_smallest_when_the_logged_action_dominates():
  logged_q, weights = tf.constant([0.0]), tf.constant([1.0])
  assert (float(ranker.cql_penalty(tf.constant([[-5.0, -5.0]]), logged_q, weights))
          < float(ranker.cql_penalty(tf.constant([[5.0, 5.0]]), logged_q, weights)))


def test_greedy_rerank_orders_by_q_with_propensity_one():
  order, propensities = ranker.rerank(tf.constant([[0.1, 0.9, 0.5], [3.0, 1.0, 2.0]]), 2, 0.0)
  np.testing.assert_array_equal(order.numpy(), [[1, 2], [0, 2]])
  np.testing.assert_array_equal(propensities.numpy(), np.ones((2, 2)))


def test_plackett_luce_propensities_match_the_simulator():
  logits = np.array([[0.3, -1.2, 2.0, 0.0, 0.7]])
  order = np.array([[2, 0, 4]])
  # By hand: w = exp(logits); each position's item over the items not placed above it.
  w = np.exp(logits[0])
  by_hand = [w[2] / w.sum(), w[0] / (w.sum() - w[2]), w[4] / (w.sum() - w[2] - w[0])]
  np.testing.assert_allclose(
      ranker.plackett_luce_propensities(tf.constant(logits), tf.constant(order)).numpy()[0],
      by_hand, rtol=1e-6)
  # The simulator's logging policy uses the same definition.
  slate = policies.plackett_luce(logits, 3, np.random.default_rng(0))
  np.testing.assert_allclose(
      ranker.plackett_luce_propensities(tf.constant(logits), tf.constant(slate.items)).numpy(),
      slate.propensities, rtol=1e-6)


def test_sampled_rerank_follows_the_softmax():
  tf.random.set_seed(0)
  q_values = tf.constant([[1.0, 0.0, -1.0]] * 20_000)
  order, propensities = ranker.rerank(q_values, 1, temperature=1.0)
  first = np.bincount(order.numpy()[:, 0], minlength=3) / 20_000
  expected = np.exp([1.0, 0.0, -1.0]) / np.exp([1.0, 0.0, -1.0]).sum()
  np.testing.assert_allclose(first, expected, atol=0.015)
  # Each logged propensity is that item's probability of being drawn first.
  np.testing.assert_allclose(propensities.numpy()[:, 0], expected[order.numpy()[:, 0]],
                             rtol=1e-5)


def test_epsilon_greedy_replaces_slots_with_outside_candidates_at_their_logged_probability():
  tf.random.set_seed(0)
  epsilon, rows = 0.3, 20_000
  # Candidates 5, 4 are the greedy top-2; 0..3 are outside it.
  q_values = tf.constant([[0.0, 1.0, 2.0, 3.0, 5.0, 6.0]] * rows)
  order, propensities = ranker.rerank(q_values, 2, epsilon=epsilon)
  order, propensities = order.numpy(), propensities.numpy()
  greedy = order == np.array([5, 4])
  # Each slot explores with probability epsilon, and never repeats a candidate.
  np.testing.assert_allclose(1.0 - greedy.mean(axis=0), [epsilon, epsilon], atol=0.015)
  assert (order[:, 0] != order[:, 1]).all()
  assert set(order[~greedy]) == {0, 1, 2, 3}
  # The greedy item had probability 1 - epsilon; an explored one epsilon over the outside
  # candidates still unshown: 4 in the first slot, 3 in the second after an explored first.
  np.testing.assert_allclose(propensities[greedy], 1.0 - epsilon)
  np.testing.assert_allclose(propensities[~greedy[:, 0], 0], epsilon / 4)
  both = ~greedy.any(axis=1)
  np.testing.assert_allclose(propensities[both, 1], epsilon / 3)
  np.testing.assert_allclose(propensities[greedy[:, 0] & ~greedy[:, 1], 1], epsilon / 4)
  # Explored items are uniform over the outside candidates.
  np.testing.assert_allclose(np.bincount(order[~greedy[:, 0], 0], minlength=4)[:4]
                             / (~greedy[:, 0]).sum(), [0.25] * 4, atol=0.03)


def test_epsilon_greedy_stays_greedy_once_every_outside_candidate_is_shown():
  order, propensities = ranker.rerank(tf.constant([[0.0, 2.0, 1.0]] * 50), 2, epsilon=1.0)
  # One outside candidate (0): the first slot shows it in place of the best (1), the second has
  # nothing left to explore and shows its own greedy item (2), with certainty.
  np.testing.assert_array_equal(order.numpy(), [[0, 2]] * 50)
  np.testing.assert_allclose(propensities.numpy(), [[1.0, 1.0]] * 50)


def test_exploration_is_one_kind_at_a_time():
  with pytest.raises(ValueError, match="temperature or with epsilon"):
    RankerConfig(temperature=1.0, epsilon=0.1)
  with pytest.raises(ValueError, match="epsilon must be in"):
    RankerConfig(epsilon=1.5)


def _world(num_items=6, embedding_dim=4):
  """Two-tower model and catalog for users 0..3 and items 0..5 (categories alternate)."""
  config = ModelConfig(embedding_dim=embedding_dim)
  retrieval = two_tower.TwoTowerModel(4, num_items, 2, 3, 1, config)
  items = np.arange(num_items)
  categories, price_buckets = items % 2, items % 3
  embeddings = retrieval.candidate_tower({
      two_tower.ITEM_XF: tf.constant(items), two_tower.CATEGORY_XF: tf.constant(categories),
      two_tower.PRICE_BUCKET_XF: tf.constant(price_buckets),
      two_tower.TITLE_TOKENS_XF: tf.fill([num_items, 1], tf.constant(PAD, tf.int64))}).numpy()
  return retrieval, ranker.Catalog(embeddings, categories, price_buckets)


def _user_states(retrieval):
  """The query tower's states of users 0..3, with empty histories and no hour."""
  return retrieval.query_tower({
      two_tower.USER_XF: tf.range(4, dtype=tf.int64),
      two_tower.HISTORY_XF: tf.fill([4, 2], tf.constant(PAD, tf.int64)),
      two_tower.HOUR_OF_WEEK_XF: tf.fill([4], tf.constant(PAD, tf.int64))})


def _transitions(users, items, clicks, done):
  n = len(users)
  return {
      contract.USER_ID: tf.constant([f"u{user}" for user in users]),
      two_tower.USER_XF: tf.constant(users, tf.int64),
      two_tower.ITEM_XF: tf.constant(items, tf.int64),
      two_tower.HISTORY_XF: tf.fill([n, 2], tf.constant(PAD, tf.int64)),
      two_tower.HOUR_OF_WEEK_XF: tf.fill([n], tf.constant(PAD, tf.int64)),
      two_tower.NEXT_HISTORY_XF: tf.fill([n, 2], tf.constant(PAD, tf.int64)),
      contract.CLICK: tf.constant(clicks, tf.int64),
      contract.PURCHASE: tf.zeros([n], tf.int64),
      contract.REVENUE: tf.zeros([n], tf.float32),
      contract.DONE: tf.constant(done, tf.int64),
      contract.RETURNED: tf.zeros([n], tf.int64),
      contract.STEP_ENGAGEMENTS: tf.constant(clicks, tf.int64),
      contract.POSITION: tf.zeros([n], tf.int64),
  }


def test_dqn_learns_which_shown_item_is_clicked():
  # Every user is shown all six items; only even items are ever clicked. One-step sessions, so
  # every click is worth its reward, 1, and the ranking value is the click probability: after
  # training the even items must rank above the odd ones.
  tf.keras.utils.set_random_seed(0)
  retrieval, catalog = _world()
  users, items = np.repeat(np.arange(4), 6), np.tile(np.arange(6), 4)
  config = RankerConfig(hidden_units=(16,), train_candidates=6, cql_weight=0.1)
  dqn = ranker.DQNRanker(retrieval.query_tower, catalog, np.zeros(6), 2, 3, config)
  dqn.build_networks(4)
  data = dqn.with_states(tf.data.Dataset.from_tensor_slices(
      _transitions(users, items, (items % 2 == 0).astype(int), np.ones(24, int))))
  dqn.compile(optimizer=tf.keras.optimizers.Adam(0.01))
  untrained_loss = float(dqn.loss_terms(next(iter(data.batch(24))))["click_loss"])
  history = dqn.fit(data.repeat(20).shuffle(480).batch(24), epochs=3, verbose=0).history
  assert history["click_loss"][-1] < untrained_loss / 10
  assert history["td_loss"][-1] < 0.01
  states = _user_states(retrieval)
  q_values = dqn.q_network((states, catalog.actions(tf.tile(tf.range(6)[None], [4, 1])))).numpy()
  assert (q_values[:, ::2].min(axis=1) > q_values[:, 1::2].max(axis=1)).all()


def test_the_train_step_is_traced_without_autograph(autograph_statuses):
  statuses = autograph_statuses(ranker.QNetwork, "estimates")
  retrieval, catalog = _world()
  dqn = ranker.DQNRanker(retrieval.query_tower, catalog, np.zeros(6), 2, 3,
                         RankerConfig(hidden_units=(4,), train_candidates=6))
  dqn.build_networks(4)
  dqn.compile(optimizer=tf.keras.optimizers.Adam(0.01))
  called_before_fit = len(statuses)
  dqn.fit(dqn.with_states(tf.data.Dataset.from_tensor_slices(
      _transitions([0, 1], [0, 1], [1, 0], [1, 1]))).batch(2), epochs=1, verbose=0)
  assert len(statuses) > called_before_fit
  assert set(statuses[called_before_fit:]) == {ag_ctx.Status.DISABLED}


def test_with_states_replaces_histories_by_the_towers_states_and_retrievals():
  retrieval, catalog = _world()
  # Every user as themselves (new users' episodes are tested below).
  dqn = ranker.DQNRanker(retrieval.query_tower, catalog, np.zeros(6), 2, 3,
                         RankerConfig(train_candidates=3, new_user_share=0.0))
  rows = _transitions(np.arange(4), np.arange(4), np.ones(4, int), np.zeros(4, int))
  rows[two_tower.HISTORY_XF] = tf.constant([[1, 2], [3, PAD], [PAD, PAD], [5, 4]], tf.int64)
  rows[two_tower.NEXT_HISTORY_XF] = tf.constant([[1, 2], [3, 0], [2, PAD], [5, 4]], tf.int64)
  encoded = next(iter(dqn.with_states(tf.data.Dataset.from_tensor_slices(rows)).batch(4)))
  assert two_tower.HISTORY_XF not in encoded and two_tower.NEXT_HISTORY_XF not in encoded
  np.testing.assert_array_equal(encoded[contract.CLICK], rows[contract.CLICK])
  for state, candidates, history in (
      (ranker.STATE, ranker.CANDIDATES, two_tower.HISTORY_XF),
      (ranker.NEXT_STATE, ranker.NEXT_CANDIDATES, two_tower.NEXT_HISTORY_XF)):
    expected = retrieval.query_tower({key: rows[key] for key in (
        two_tower.USER_XF, two_tower.HOUR_OF_WEEK_XF)} | {two_tower.HISTORY_XF: rows[history]})
    np.testing.assert_allclose(encoded[state], expected, rtol=1e-5, atol=1e-6)
    scores = (expected @ tf.transpose(catalog.embeddings)).numpy()
    np.testing.assert_array_equal(encoded[candidates], np.argsort(-scores, axis=1)[:, :3])
  assert not np.allclose(encoded[ranker.STATE][1:3], encoded[ranker.NEXT_STATE][1:3])


def test_new_user_episodes_compute_a_share_of_users_states_without_their_id():
  retrieval, catalog = _world()
  rows = _transitions(np.arange(4), np.arange(4), np.ones(4, int), np.zeros(4, int))
  rows[two_tower.HISTORY_XF] = tf.constant([[1, 2], [3, PAD], [PAD, PAD], [5, 4]], tf.int64)
  rows[contract.USER_ID] = tf.constant(["a", "b", "c", "d"])
  unknown_user = dict(rows, **{two_tower.USER_XF: tf.fill([4], tf.constant(3, tf.int64))})
  for share, expected_rows in ((0.0, rows), (1.0, unknown_user)):
    dqn = ranker.DQNRanker(retrieval.query_tower, catalog, np.zeros(6), 2, 3,
                           RankerConfig(train_candidates=3, new_user_share=share))
    encoded = next(iter(dqn.with_states(tf.data.Dataset.from_tensor_slices(rows)).batch(4)))
    expected = retrieval.query_tower({key: expected_rows[key] for key in (
        two_tower.USER_XF, two_tower.HOUR_OF_WEEK_XF, two_tower.HISTORY_XF)})
    np.testing.assert_allclose(encoded[ranker.STATE], expected, rtol=1e-5, atol=1e-6)
  # A share picks about that many users, by id (so all of a user's transitions), and not the
  # head's validation users.
  ids = tf.constant([f"u{user}" for user in range(2000)])
  picked = ranker.is_new_user_episode(ids, 0.2).numpy()
  assert 0.17 < picked.mean() < 0.23
  np.testing.assert_array_equal(picked, ranker.is_new_user_episode(ids, 0.2).numpy())
  validation = training.is_validation_user(ids, 0.2).numpy()
  assert (picked & validation).mean() < 0.08  # about 0.2 * 0.2 if independent


def test_untrained_q_network_ranks_as_retrieval_does():
  retrieval, catalog = _world()
  states = _user_states(retrieval)
  q_network = ranker.QNetwork(6, 2, 3, hidden_units=(8,), num_positions=10)
  candidates = tf.tile(tf.range(6, dtype=tf.int64)[None], [4, 1])
  q_values = q_network((states, catalog.actions(candidates))).numpy()
  scores = tf.matmul(states, catalog.embeddings, transpose_b=True).numpy()
  np.testing.assert_array_equal(np.argsort(-q_values, axis=1), np.argsort(-scores, axis=1))
  assert len(set(np.round(q_values.ravel(), 6))) > 1  # not a constant


def test_target_network_starts_equal_and_follows_softly():
  retrieval, catalog = _world()
  config = RankerConfig(hidden_units=(8,), target_update_rate=0.25)
  dqn = ranker.DQNRanker(retrieval.query_tower, catalog, np.zeros(6), 2, 3, config)
  dqn.build_networks(4)
  for online, target in zip(dqn.q_network.get_weights(), dqn.target_network.get_weights()):
    np.testing.assert_array_equal(online, target)
  before = dqn.target_network.get_weights()
  online = [w + 1.0 for w in dqn.q_network.get_weights()]
  dqn.q_network.set_weights(online)
  dqn.update_target_network()
  for old, new, moved in zip(before, online, dqn.target_network.get_weights()):
    np.testing.assert_allclose(moved, 0.75 * old + 0.25 * new, rtol=1e-6)


def test_config_round_trips_through_a_dict():
  config = ModelConfig(ranker=RankerConfig(
      hidden_units=(8, 4), gamma=0.5, reward=RewardConfig(novelty=0.2)))
  assert ModelConfig.from_dict(dataclasses.asdict(config)) == config


def test_config_rejects_a_discount_of_one():
  with pytest.raises(ValueError, match="gamma"):
    RankerConfig(gamma=1.0)


def _even_items_clicked(done: int, heads: int, config: RankerConfig):
  """Four users each shown the six items, the even ones clicked, every step done or none; and
  `heads` compiled heads on a toy world. Returns (the transitions, their clicks, the heads)."""
  tf.keras.utils.set_random_seed(0)
  retrieval, catalog = _world()
  users, items = np.repeat(np.arange(4), 6), np.tile(np.arange(6), 4)
  clicks = (items % 2 == 0).astype(int)
  dqns = [ranker.DQNRanker(retrieval.query_tower, catalog, np.zeros(6), 2, 3, config)
          for _ in range(heads)]
  for dqn in dqns:
    dqn.build_networks(4)
    dqn.compile(optimizer=tf.keras.optimizers.Adam(0.01))
  # The heads share the towers, so one head's states serve them all.
  data = dqns[0].with_states(tf.data.Dataset.from_tensor_slices(
      _transitions(users, items, clicks, np.full(24, done))))
  return data, clicks, dqns


def test_held_out_losses_judge_the_click_model_and_the_bellman_residual():
  data, _, (dqn,) = _even_items_clicked(1, 1, RankerConfig(
      hidden_units=(16,), train_candidates=6, reward=RewardConfig(purchase=0.0, revenue=0.0)))
  untrained = training.held_out_losses({"head": dqn}, data.batch(10), dqn)["head"]
  # Only the clicked transitions have a consumed value to fit. Every click's reward is 1 and
  # every step is a last one here, so every target is 1, which the untrained value of the click
  # agent, the only one weighed (softplus(0.5413) = 1), already predicts.
  assert untrained["clicked_transitions"] == 12
  assert untrained["td_error"] == pytest.approx(0.0, abs=1e-6)
  dqn.fit(data.repeat(20).shuffle(480).batch(24), epochs=3, verbose=0)
  trained = training.held_out_losses({"head": dqn}, data.batch(10), dqn)["head"]
  assert trained["click_loss"] < untrained["click_loss"] / 10


def test_held_out_losses_judge_a_head_on_another_heads_bellman_targets():
  # Steps that continue: each target is 1 + gamma * V(s') / engagements, and V(s') is what the
  # valuing head makes of the next state, so two heads' targets differ.
  data, clicks, (trained, untrained) = _even_items_clicked(
      0, 2, RankerConfig(hidden_units=(16,), train_candidates=6, slate_size=3,
                         reward=RewardConfig(purchase=0.0, revenue=0.0)))
  trained.fit(data.repeat(20).shuffle(480).batch(24), epochs=2, verbose=0)
  everything = next(iter(data.batch(24)))
  weights = np.array(trained.config.reward.weights())
  targets = trained.transition_terms(everything)["targets"].numpy()[clicks > 0] @ weights
  values = untrained.transition_terms(everything)["values"].numpy()[clicks > 0] @ weights
  on_trained_targets, on_own_targets = (
      training.held_out_losses({"head": untrained}, data.batch(10), targets)["head"]
      for targets in (trained, untrained))
  assert on_trained_targets["td_error"] == pytest.approx(np.mean((targets - values) ** 2),
                                                         rel=1e-5)
  assert on_trained_targets["relative_td_error"] == pytest.approx(
      np.mean((targets - values) ** 2) / np.var(targets), rel=1e-5)
  # Its own residual is its own: an untrained head's targets, not the trained one's.
  assert on_own_targets["td_error"] == pytest.approx(on_own_targets["bellman_residual"])
  assert on_trained_targets["bellman_residual"] == pytest.approx(
      on_own_targets["bellman_residual"])
  assert abs(on_trained_targets["td_error"] - on_own_targets["td_error"]) > 1e-3


def test_held_out_losses_of_nothing_clicked_are_nan_not_zero():
  data, clicks, (dqn,) = _even_items_clicked(1, 1, RankerConfig(hidden_units=(16,),
                                                                  train_candidates=6))
  unclicked = training.held_out_losses(
      {"head": dqn}, data.filter(lambda t: t[contract.CLICK] == 0).batch(5), dqn)["head"]
  assert unclicked["clicked_transitions"] == 0
  assert np.isfinite(unclicked["click_loss"])
  assert np.isnan(unclicked["td_error"]) and np.isnan(unclicked["bellman_residual"])
  empty = training.held_out_losses({"head": dqn}, data.take(0).batch(5), dqn)["head"]
  assert np.isnan(empty["click_loss"]) and empty["clicked_transitions"] == 0


def test_each_agent_learns_its_own_reward_and_one_hot_weights_rank_by_it():
  # Every user is shown the six items four times, one-step sessions. Which item is best depends
  # on the objective: item 0 is always clicked; item 1 bought at each of its (half as many)
  # clicks for 1.00; item 2 bought at half of them for 100.00; item 3 is the novel one; after
  # item 4 the user comes back; item 5 is clicked least.
  tf.keras.utils.set_random_seed(0)
  retrieval, catalog = _world()
  users, items = np.repeat(np.arange(4), 24), np.tile(np.repeat(np.arange(6), 4), 4)
  repeat = np.tile(np.arange(4), 24)
  clicks = np.where(items == 0, 1, np.where(items == 5, repeat < 1, repeat < 2)).astype(int)
  rows = _transitions(users, items, clicks, np.ones(len(users), int))
  bought = (clicks > 0) & ((items == 1) | ((items == 2) & (repeat == 0)))
  rows[contract.PURCHASE] = tf.constant(bought, tf.int64)
  rows[contract.REVENUE] = tf.constant(np.where(items == 1, 1.0, 100.0)
                                       * rows[contract.PURCHASE].numpy(), tf.float32)
  rows[contract.RETURNED] = tf.constant(items == 4, tf.int64)
  data = tf.data.Dataset.from_tensor_slices(rows)
  novelty = (np.arange(6) == 3).astype(np.float32)
  config = RankerConfig(hidden_units=(16,), gamma=0.0, session_gamma=0.0, train_candidates=6)
  dqn = ranker.DQNRanker(retrieval.query_tower, catalog, novelty, 2, 3, config,
                         ranker.reward_scales(data, novelty))
  dqn.build_networks(4)
  dqn.compile(optimizer=tf.keras.optimizers.Adam(0.02))
  dqn.fit(dqn.with_states(data).repeat(30).shuffle(3000, seed=0).batch(32), epochs=4, verbose=0)

  states = _user_states(retrieval)
  actions = catalog.actions(tf.tile(tf.range(6, dtype=tf.int64)[None], [4, 1]))
  agent_values = dqn.q_network.agent_values((states, actions)).numpy()  # [users, items, agents]
  best = {"click": 0, "purchase": 1, "revenue": 2, "novelty": 3, "retention": 4}
  for agent, name in enumerate(OBJECTIVES):
    assert list(agent_values[:, :, agent].argmax(axis=1)) == [best[name]] * 4, name
    # One-hot weights: the combined ranking is this agent's.
    dqn.q_network.objective_weights.assign(np.eye(len(OBJECTIVES))[agent])
    order, _ = ranker.rerank(dqn.q_network((states, actions)), k=6)
    np.testing.assert_array_equal(order.numpy(),
                                  np.argsort(-agent_values[:, :, agent], axis=1, kind="stable"))


@pytest.mark.parametrize("batch", [1, 3, 64])
@pytest.mark.parametrize("as_variables", [False, True])
def test_top_candidates_from_the_transposed_catalog_equal_the_transpose_b_scores(batch,
                                                                                as_variables):
  """The pre-transposed matrix changes the layout the matmul reads, not the answer: the same
  items in the same order, the scores equal up to float32 summation order."""
  rng = np.random.default_rng(batch)
  embeddings = rng.normal(size=(2_000, 16)).astype(np.float32)
  catalog = ranker.Catalog(embeddings, np.arange(2_000) % 3, np.arange(2_000) % 5, as_variables)
  assert isinstance(catalog.embeddings_t, tf.Variable) == as_variables
  states = tf.constant(rng.normal(size=(batch, 16)).astype(np.float32))
  scores, items = catalog.top_candidates(states, 200)
  old_scores, old_items = tf.math.top_k(
      tf.matmul(states, tf.constant(embeddings), transpose_b=True), k=200)
  np.testing.assert_array_equal(items.numpy(), old_items.numpy())
  assert items.dtype == tf.int64
  np.testing.assert_allclose(scores.numpy(), old_scores.numpy(), rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(catalog.embeddings_t.numpy(), embeddings.T)
  actions = catalog.actions(items)
  np.testing.assert_array_equal(actions["embedding"].numpy(), embeddings[items.numpy()])
  np.testing.assert_array_equal(actions["category"].numpy(), items.numpy() % 3)
  np.testing.assert_array_equal(actions["price_bucket"].numpy(), items.numpy() % 5)
