"""The two-tower retrieval model (TensorFlow Recommenders on tf-keras).

The query tower embeds who the user is and what they touched last; the candidate tower embeds an
item from its id and category. Training pulls a user's next item towards the query embedding and
pushes the other items of the batch away (in-batch negatives, `tfrs.tasks.Retrieval`).

In-batch negatives are sampled by popularity: a popular item is a negative far more often than
a rare one, which teaches the model to rank popular items too low. The loss subtracts each
candidate's log sampling probability from its logit (the log-Q correction of Yi et al., 2019,
"Sampling-bias-corrected neural modeling"), and a batch's other rows that hold the same item are
not counted as negatives (accidental hits).
"""
import dataclasses
from typing import Optional

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from components import features
from components import preprocessing

USER_XF = features.transformed_name(features.USER_ID)
ITEM_XF = features.transformed_name(features.ITEM_ID)
CATEGORY_XF = features.transformed_name(features.CATEGORY)
HISTORY_XF = features.transformed_name(features.HISTORY)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Hyper-parameters of the retrieval model; the defaults train well on the default dataset."""
  embedding_dim: int = 64
  epochs: int = 5
  batch_size: int = 512
  learning_rate: float = 0.05
  # How many items the serving signature returns per user.
  top_k: int = 100


class QueryTower(tf.keras.Model):
  """User id embedding plus the mean embedding of the recent items, projected to the shared space.

  The history shares the item embedding table with the candidate tower, so an item a user just saw
  pulls the query towards items like it from the first training step on.
  """

  def __init__(self, num_users: int, item_embedding: tf.keras.layers.Embedding,
               embedding_dim: int):
    super().__init__()
    self.user_embedding = tf.keras.layers.Embedding(num_users, embedding_dim)
    self.item_embedding = item_embedding
    self.projection = tf.keras.layers.Dense(embedding_dim)

  def call(self, inputs):
    history = inputs[HISTORY_XF]
    present = tf.cast(tf.not_equal(history, preprocessing.HISTORY_PADDING), tf.float32)
    # Padding slots index row 0 but are weighted out, so they never move the mean.
    history_embeddings = self.item_embedding(tf.maximum(history, 0)) * present[..., None]
    history_mean = tf.math.divide_no_nan(
        tf.reduce_sum(history_embeddings, axis=1),
        tf.reduce_sum(present, axis=1, keepdims=True))
    user = self.user_embedding(inputs[USER_XF])
    return self.projection(tf.concat([user, history_mean], axis=1))


class CandidateTower(tf.keras.Model):
  """Item id embedding plus category embedding, projected to the shared space."""

  def __init__(self, item_embedding: tf.keras.layers.Embedding, num_categories: int,
               embedding_dim: int):
    super().__init__()
    self.item_embedding = item_embedding
    self.category_embedding = tf.keras.layers.Embedding(num_categories, embedding_dim)
    self.projection = tf.keras.layers.Dense(embedding_dim)

  def call(self, inputs):
    return self.projection(tf.concat(
        [self.item_embedding(inputs[ITEM_XF]), self.category_embedding(inputs[CATEGORY_XF])],
        axis=1))


class TwoTowerModel(tfrs.Model):
  """Query and candidate towers trained with a sampled-softmax retrieval loss."""

  def __init__(self, num_users: int, num_items: int, num_categories: int, config: ModelConfig,
               item_probability: Optional[np.ndarray] = None):
    """item_probability: [num_items] share of training examples with each item, for the log-Q
    correction; None trains without it (uniform sampling assumed)."""
    super().__init__()
    item_embedding = tf.keras.layers.Embedding(num_items, config.embedding_dim)
    self.query_tower = QueryTower(num_users, item_embedding, config.embedding_dim)
    self.candidate_tower = CandidateTower(item_embedding, num_categories, config.embedding_dim)
    self.task = tfrs.tasks.Retrieval(remove_accidental_hits=True)
    if item_probability is None:
      item_probability = np.full(num_items, 1.0 / num_items)
    # Items never seen in training would get log(0); they are never sampled, so any floor works.
    self.item_probability = tf.constant(np.maximum(item_probability, 1e-12), tf.float32)

  def compute_loss(self, inputs, training=False):
    items = inputs[ITEM_XF]
    return self.task(self.query_tower(inputs), self.candidate_tower(inputs),
                     candidate_sampling_probability=tf.gather(self.item_probability, items),
                     candidate_ids=items)
