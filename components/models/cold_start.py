"""Meta-training for cold start: users as tasks, their first items as the support set.

A user the model has never seen has no trained embedding row: the query tower gets the
out-of-vocabulary (OOV) row and whatever history the request carries. Nothing in ordinary
training asks the model to do well then, since every training example's user is known and its
history long. Here each training user is also a task (an episode, as in MAML): their
engagements in time order, the first N (N drawn from SUPPORT_SIZES) the support set, the next
up to QUERY_SIZE the query set. The model learns to rank the query items from the support set
alone, as it must for a new user:
  * AMORTISED_COLD_START: the query is the OOV row plus the support as history, and the loss
    on the query items trains the whole query tower, the OOV row included (the history path
    learns to stand in for the missing user id). This is what the exported graph serves as it
    is: a request with an unknown id and a short history.
  * GRADIENT_COLD_START (first-order MAML, Finn et al., 2017; Nichol et al., 2018): the user's
    vector starts at the OOV row and takes `adapt_steps` gradient steps on the support set's
    loss (`support_loss`); the query loss is taken at the adapted vector and, first-order, its
    gradient moves the OOV row and the towers as if the adapted vector were the row itself. So
    the OOV row is learnt as a starting point a few steps away from every user. Serving takes
    the same steps (`adapt_user_vectors`, the `adapt` function of the exported graph): batch
    recommendations with `--adapt-steps`, and the offline job that stores adapted vectors for
    new users in the serving graph.
With 0 steps the two are the same. Which one is the default was chosen on a validation split
of the training users (bench/bench_cold_start.py; README, "Cold start").
"""
from typing import Dict, NamedTuple

import numpy as np
import tensorflow as tf

from components.models import preprocessing
from components.models import two_tower

# How many first items an episode's support set holds, drawn uniformly among those the user has
# room for (at least one query item after them): the counts the adaptation curve is measured at.
SUPPORT_SIZES = (0, 1, 3, 5, 10, 20)
MAX_SUPPORT = max(SUPPORT_SIZES)
QUERY_SIZE = 10
# Episodes per meta-training step: each one's support set is ranked against the whole catalog
# once per item per adaptation step, so a batch of 64 is 64 x 20 rows by the catalog's width.
EPISODES_PER_BATCH = 64


class Episodes(NamedTuple):
  """Support and query sets of users, item indices in time order, PADDING after the last."""
  support: np.ndarray  # int64 [episodes, MAX_SUPPORT]
  query: np.ndarray  # int64 [episodes, QUERY_SIZE]
  users: np.ndarray  # int64 [episodes] whose episode it is


def user_episodes(users: np.ndarray, items: np.ndarray, timestamps: np.ndarray,
                  per_user: int, rng: np.random.Generator,
                  support_sizes=SUPPORT_SIZES, query_size: int = QUERY_SIZE) -> Episodes:
  """`per_user` episodes of every user with at least two engagements.

  Each: a support size N drawn from `support_sizes` among those below the user's engagement
  count; the user's first N engagements by time as support, the next up to `query_size` as
  query. Engagements at the same time keep their order in the arrays, so a support item is
  never later than a query item, and no engagement is in both.
  """
  order = np.lexsort((np.arange(len(users)), timestamps, users))
  users, items = users[order], items[order]
  starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
  counts = np.diff(np.r_[starts, len(users)])
  sizes = np.asarray(support_sizes)
  width = max(support_sizes)
  support, query, owners = [], [], []
  for start, count in zip(starts, counts):
    room = sizes[sizes < count]
    if count < 2 or not len(room):
      continue
    for size in rng.choice(room, per_user):
      support.append(_padded(items[start:start + size], width))
      query.append(_padded(items[start + size:start + min(count, size + query_size)],
                           query_size))
      owners.append(users[start])
  if not support:
    return Episodes(np.zeros((0, width), np.int64), np.zeros((0, query_size), np.int64),
                    np.zeros(0, np.int64))
  return Episodes(np.stack(support), np.stack(query), np.asarray(owners, np.int64))


def _padded(values: np.ndarray, width: int) -> np.ndarray:
  return np.concatenate([values, np.full(width - len(values), preprocessing.PADDING)]).astype(
      np.int64)


def new_user_inputs(histories: tf.Tensor, user_vectors: tf.Tensor) -> Dict[str, tf.Tensor]:
  """The query tower's inputs for a new user: the vectors in place of the id, no hour."""
  return {two_tower.HISTORY_XF: histories, two_tower.USER_VECTOR: user_vectors,
          two_tower.HOUR_OF_WEEK_XF: tf.fill(tf.shape(histories)[:1],
                                             tf.constant(preprocessing.PADDING, tf.int64))}


def support_loss(query_tower: tf.keras.Model, candidates: tf.Tensor, user_vectors: tf.Tensor,
                 support: tf.Tensor, temperature: float = 1.0) -> tf.Tensor:
  """Sum over users of the mean softmax cross-entropy of each of their support items, given
  the items before it as history, over the whole catalog.

  Args:
    query_tower: the two-tower model's query tower (reads USER_VECTOR).
    candidates: [catalog, dim] the catalog's embeddings; item index i is row i.
    user_vectors: [users, dim] each user's vector.
    support: int64 [users, width] each user's support items in time order, PADDING after.
    temperature: divides the logits, as in training.

  A user's term depends on their own vector only, so its gradient is per user; a user without
  support items adds 0.
  """
  width = tf.shape(support)[1]
  # Row (user, j): the items before position j as history, item j as the positive.
  before = tf.range(width)[None, :] < tf.range(width)[:, None]
  histories = tf.where(before[None], support[:, None, :],
                       tf.constant(preprocessing.PADDING, support.dtype))
  present = tf.where(tf.not_equal(support, preprocessing.PADDING))
  queries = query_tower(new_user_inputs(tf.gather_nd(histories, present),
                                      tf.gather(user_vectors, present[:, 0])))
  losses = tf.nn.sparse_softmax_cross_entropy_with_logits(
      tf.gather_nd(support, present),
      tf.matmul(queries, candidates, transpose_b=True) / temperature)
  users = tf.shape(support, out_type=tf.int64)[:1]
  totals = tf.math.unsorted_segment_sum(losses, present[:, 0], users[0])
  counts = tf.math.unsorted_segment_sum(tf.ones_like(losses), present[:, 0], users[0])
  return tf.reduce_sum(tf.math.divide_no_nan(totals, counts))


def adapt_user_vectors(query_tower: tf.keras.Model, candidates: tf.Tensor,
                       user_vectors: tf.Tensor, support: tf.Tensor, steps,
                       learning_rate: float, temperature: float = 1.0) -> tf.Tensor:
  """`user_vectors` after `steps` steps of gradient descent on `support_loss` (inner loop).

  `steps` may be a tensor (the serving graph's input); the towers are not changed. The loop is
  a `tf.while_loop` of its own, not left to AutoGraph, so that the functions calling it are
  traced without AutoGraph (MetaLearner).
  """
  def step(taken, vectors):
    with tf.GradientTape() as tape:
      tape.watch(vectors)
      loss = support_loss(query_tower, candidates, vectors, support, temperature)
    # Dense: each row's gradient is its own user's (gathered once per support item).
    return taken + 1, vectors - learning_rate * tf.convert_to_tensor(
        tape.gradient(loss, vectors))

  _, adapted = tf.while_loop(lambda taken, _: taken < steps, step,
                             (tf.constant(0, tf.int32), user_vectors))
  return adapted


class MetaLearner:
  """One meta-training step on a batch of episodes (`__call__`), for one two-tower model.

  The query loss is the model's own training loss (its softmax, `TwoTowerModel.logits`) on the
  query items, from the user vector after `steps` adaptation steps from the OOV row; with
  0 steps, the OOV row itself (amortised). First-order: the adapted vector's gradient is applied
  to the OOV row, not differentiated through the inner steps.
  """

  def __init__(self, retrieval: two_tower.TwoTowerModel, steps: int, learning_rate: float):
    self._retrieval = retrieval
    self._steps = steps
    self._learning_rate = learning_rate
    # Without AutoGraph, which took 15 s rewriting Keras' layer code on the first step (the
    # two-tower model's train step says more).
    self._step = tf.function(self._meta_step, autograph=False, input_signature=[
        tf.TensorSpec([None, None], tf.int64), tf.TensorSpec([None, None], tf.int64)])

  def __call__(self, support: np.ndarray, query: np.ndarray) -> float:
    """Applies one step; the summed query loss before it."""
    return float(self._step(tf.constant(support), tf.constant(query)))

  def _meta_step(self, support, query):
    retrieval = self._retrieval
    tower = retrieval.query_tower
    rows = tower.user_embedding.embeddings
    oov = tower.user_embedding.input_dim - 1
    start = tf.tile(tf.gather(rows, [oov]), [tf.shape(support)[0], 1])
    adapted = adapt_user_vectors(
        tower, tf.stop_gradient(retrieval.candidate_tower(retrieval.catalog)), start, support,
        self._steps, self._learning_rate, retrieval.temperature)
    present = tf.where(tf.not_equal(query, preprocessing.PADDING))
    positives = tf.gather_nd(query, present)
    with tf.GradientTape() as tape:
      vectors = tf.gather(rows, [oov]) + tf.stop_gradient(adapted - start)
      inputs = new_user_inputs(tf.gather(support, present[:, 0]),
                             tf.gather(vectors, present[:, 0]))
      inputs.update({key: tf.gather(retrieval.catalog[key], positives)
                     for key in two_tower.CANDIDATE_INPUTS})
      logits, labels = retrieval.logits(tower(inputs, training=True), inputs)
      loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
    variables = retrieval.trainable_variables
    gradients = tape.gradient(loss, variables)
    retrieval.optimizer.apply_gradients(
        [(gradient, variable) for gradient, variable in zip(gradients, variables)
         if gradient is not None])
    return loss

  def train(self, episodes: Episodes, rng: np.random.Generator) -> float:
    """One pass over `episodes` in random order; the mean query loss per episode."""
    order = rng.permutation(len(episodes.support))
    total = 0.0
    for start in range(0, len(order), EPISODES_PER_BATCH):
      batch = order[start:start + EPISODES_PER_BATCH]
      total += self(episodes.support[batch], episodes.query[batch])
    return total / max(len(order), 1)
