"""Cold-start meta-training: episodes, the adaptation steps, and the meta-training step."""
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.autograph.core import ag_ctx

from components.models import cold_start
from components.models import training
from components.models import two_tower
from components.models.config import AMORTISED_COLD_START
from components.models.config import GRADIENT_COLD_START
from components.models.config import ModelConfig
from components.models.config import NO_COLD_START
from schemas import contract

PAD = -1


def test_episodes_take_the_first_items_in_time_order_as_support_and_the_next_as_query():
  rng = np.random.default_rng(0)
  # User 7: items 100..129 rated at times 0..29, stored shuffled; user 8: one rating only.
  order = rng.permutation(30)
  users = np.r_[np.full(30, 7), 8]
  items = np.r_[100 + order, 5]
  timestamps = np.r_[order, 3]
  episodes = cold_start.user_episodes(users, items, timestamps, per_user=50, rng=rng)
  # One rating leaves no query after any support: user 8 has no episode.
  assert len(episodes.support) == 50 and set(episodes.users) == {7}
  sizes = (episodes.support != PAD).sum(axis=1)
  assert set(sizes) == set(cold_start.SUPPORT_SIZES)  # every size drawn, 20 < 30 included
  for support, query, size in zip(episodes.support, episodes.query, sizes):
    # The first `size` items by time, then the next QUERY_SIZE: strictly after, no overlap.
    np.testing.assert_array_equal(support[:size], 100 + np.arange(size))
    assert (support[size:] == PAD).all()
    np.testing.assert_array_equal(query, 100 + size + np.arange(cold_start.QUERY_SIZE))


def test_a_short_user_gets_a_support_size_they_have_room_for_and_a_shorter_query():
  users, items = np.zeros(4, np.int64), np.array([3, 1, 2, 0])
  timestamps = np.array([5, 5, 6, 9])  # items 3 and 1 at the same time: file order breaks ties
  episodes = cold_start.user_episodes(users, items, timestamps, per_user=20,
                                      rng=np.random.default_rng(1))
  sequence = [3, 1, 2, 0]
  for support, query in zip(episodes.support, episodes.query):
    size = int((support != PAD).sum())
    assert size in (0, 1, 3)  # the sizes below the user's 4 ratings
    assert list(support[:size]) == sequence[:size]
    assert list(query[query != PAD]) == sequence[size:]


class _UserVectorTower(tf.keras.layers.Layer):
  """A tiny query tower: the query is the user vector; records the histories it reads."""

  def __init__(self):
    super().__init__()
    self.histories = []

  def call(self, inputs):
    self.histories.append(inputs[two_tower.HISTORY_XF].numpy())
    return inputs[two_tower.USER_VECTOR]


def test_one_adaptation_step_matches_a_hand_computed_gradient_step():
  candidates = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], np.float32)
  start = np.array([[0.2, -0.1], [0.5, 0.5]], np.float32)
  # User 0 rated items 1 then 2; user 1 nothing yet.
  support = np.array([[1, 2], [PAD, PAD]], np.int64)
  tower = _UserVectorTower()
  adapted = cold_start.adapt_user_vectors(tower, tf.constant(candidates), tf.constant(start),
                                          tf.constant(support), 1, 0.5).numpy()
  # By hand: the loss is the mean cross-entropy of items 1 and 2 under softmax(candidates . u);
  # its gradient is candidates' (p - mean of the two one-hots).
  logits = candidates @ start[0]
  p = np.exp(logits) / np.exp(logits).sum()
  gradient = candidates.T @ (p - np.array([0.0, 0.5, 0.5]))
  np.testing.assert_allclose(adapted[0], start[0] - 0.5 * gradient, rtol=1e-5)
  np.testing.assert_array_equal(adapted[1], start[1])  # no support: no step
  # Each support item was predicted from the items before it only.
  (histories,) = tower.histories
  np.testing.assert_array_equal(histories, [[PAD, PAD], [1, PAD]])
  # Zero steps are the start itself (the amortised form).
  np.testing.assert_array_equal(cold_start.adapt_user_vectors(
      tower, tf.constant(candidates), tf.constant(start), tf.constant(support), 0, 0.5), start)


NUM_USERS, NUM_ITEMS = 3, 6


def _catalog():
  items = np.arange(NUM_ITEMS)
  return {two_tower.ITEM_XF: items, two_tower.CATEGORY_XF: items % 2,
          two_tower.PRICE_BUCKET_XF: np.zeros(NUM_ITEMS, np.int64),
          two_tower.TITLE_TOKENS_XF: np.full((NUM_ITEMS, contract.TITLE_LENGTH), PAD)}


def _two_tower(config):
  tf.keras.utils.set_random_seed(3)
  model = two_tower.TwoTowerModel(NUM_USERS, NUM_ITEMS, 2, 1, 1, config, catalog=_catalog())
  model.compile(optimizer=tf.keras.optimizers.SGD(0.1))
  inputs = _inputs()
  model({key: tf.constant(inputs[key][:2]) for key in two_tower.QUERY_INPUTS
         + two_tower.CANDIDATE_INPUTS})  # builds the towers
  return model


@pytest.mark.parametrize("steps", [0, 2])
def test_a_first_order_maml_step_moves_the_unknown_users_row_by_the_query_gradient(
    steps, autograph_statuses):
  """The OOV row moves by -lr times the query loss's gradient at the adapted vector, as if the
  adapted vector were the row (first-order MAML; 0 steps: the amortised form)."""
  statuses = autograph_statuses(two_tower.QueryTower, "call")
  config = ModelConfig(embedding_dim=4)
  model = _two_tower(config)
  support = np.array([[0, 1, PAD], [2, PAD, PAD]], np.int64)
  query = np.array([[3, 4], [5, PAD]], np.int64)
  tower = model.query_tower
  oov = tower.user_embedding.embeddings.numpy()[-1]
  candidates = model.candidate_tower({key: tf.constant(values)
                                      for key, values in _catalog().items()})
  adapted = tf.constant(cold_start.adapt_user_vectors(
      tower, candidates, tf.constant(np.tile(oov, (2, 1))), tf.constant(support), steps, 1.0))
  # The query loss at the adapted vectors, by hand: each query item from the whole support.
  with tf.GradientTape() as tape:
    tape.watch(adapted)
    rows, items = [0, 0, 1], [3, 4, 5]
    queries = tower(cold_start.new_user_inputs(tf.constant(support[rows]),
                                               tf.gather(adapted, rows)))
    loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(
        items, tf.matmul(queries, candidates, transpose_b=True)))
  expected = oov - 0.1 * tf.convert_to_tensor(tape.gradient(loss, adapted)).numpy().sum(axis=0)
  learner = cold_start.MetaLearner(model, steps, 1.0)
  called_before = len(statuses)
  assert learner(support, query) == pytest.approx(float(loss), rel=1e-5)
  # Traced without AutoGraph, the adaptation loop included.
  assert set(statuses[called_before:]) == {ag_ctx.Status.DISABLED}
  np.testing.assert_allclose(tower.user_embedding.embeddings.numpy()[-1], expected, rtol=1e-4,
                             atol=1e-6)
  # The known users' rows are not touched; the towers are.
  assert np.allclose(tower.user_embedding.embeddings.numpy()[:-1],
                     _two_tower(config).query_tower.user_embedding.embeddings.numpy()[:-1])


def _inputs():
  rng = np.random.default_rng(0)
  n = 24
  items = rng.integers(0, NUM_ITEMS, n)
  return {
      two_tower.USER_XF: np.repeat(np.arange(NUM_USERS - 1), n // 2),
      two_tower.ITEM_XF: items,
      two_tower.CATEGORY_XF: items % 2,
      two_tower.PRICE_BUCKET_XF: np.zeros(n, np.int64),
      two_tower.TITLE_TOKENS_XF: np.full((n, contract.TITLE_LENGTH), PAD),
      two_tower.HISTORY_XF: np.full((n, contract.HISTORY_LENGTH), PAD),
      two_tower.HOUR_OF_WEEK_XF: np.full(n, PAD),
      contract.EVENT: np.array([b"click"] * n, dtype=object),
      contract.TIMESTAMP: np.arange(n),
  }


@pytest.mark.parametrize("form", [AMORTISED_COLD_START, GRADIENT_COLD_START])
def test_retrieval_training_meta_trains_the_unknown_user_only_when_asked(form):
  trained = {}
  for cold_start_form in (NO_COLD_START, form):
    config = ModelConfig(embedding_dim=4, epochs=2, cold_start=cold_start_form,
                         validation_fraction=0.0)
    model = _two_tower(config)
    before = model.query_tower.user_embedding.embeddings.numpy()[-1]
    training.train_retrieval(model, _inputs(), config)
    trained[cold_start_form] = model.query_tower.user_embedding.embeddings.numpy()[-1] - before
  # Ordinary training never sees the unknown user: its row stays as initialised.
  np.testing.assert_array_equal(trained[NO_COLD_START], 0.0)
  assert np.abs(trained[form]).sum() > 0


def test_cold_start_needs_the_catalog():
  config = ModelConfig(embedding_dim=4, epochs=1, cold_start=AMORTISED_COLD_START,
                       negatives="mixed")
  model = two_tower.TwoTowerModel(NUM_USERS, NUM_ITEMS, 2, 1, 1, config)
  model.compile(optimizer=tf.keras.optimizers.SGD(0.1))
  with pytest.raises(ValueError, match="cold_start='amortised' needs the two-tower model's "
                                       "catalog"):
    training.train_retrieval(model, _inputs(), config)
