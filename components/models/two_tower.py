"""The two-tower retrieval model (TensorFlow Recommenders on tf-keras).

The query tower embeds who the user is, what they touched last, in order, and when they ask (the
hour of the week); the candidate tower embeds an item from its id, category, price bucket and
title words. Training pulls a user's next item towards the query embedding and pushes the other
items of the batch away (in-batch negatives, `tfrs.tasks.Retrieval`).

In-batch negatives are sampled by popularity: a popular item is a negative far more often than
a rare one, which teaches the model to rank popular items too low. The loss subtracts each
candidate's log sampling probability from its logit (the log-Q correction of Yi et al., 2019,
"Sampling-bias-corrected neural modeling"), and a batch's other rows that hold the same item are
not counted as negatives (accidental hits).
"""
from typing import Optional

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from components.models import preprocessing
from components.models.config import ModelConfig
from schemas import contract

USER_XF = contract.transformed_name(contract.USER_ID)
ITEM_XF = contract.transformed_name(contract.ITEM_ID)
CATEGORY_XF = contract.transformed_name(contract.CATEGORY)
PRICE_BUCKET_XF = contract.transformed_name(contract.PRICE_BUCKET)
TITLE_TOKENS_XF = contract.transformed_name(contract.TITLE_TOKENS)
HISTORY_XF = contract.transformed_name(contract.HISTORY)
HOUR_OF_WEEK_XF = contract.transformed_name(contract.HOUR_OF_WEEK)
NEXT_HISTORY_XF = contract.transformed_name(contract.NEXT_HISTORY)
_ATTENTION_HEADS = 2


class QueryTower(tf.keras.Model):
  """User id embedding, the recent items as a set (mean) and as a sequence (self-attention), and
  the hour of the week.

  The mean says what the user likes. The self-attention block (SASRec-style: one layer, each item
  attending to the others, with an embedding of how recent it is) says where the session is
  heading, which a mean cannot tell apart from its reverse. Padding is masked out of both. The
  history shares the item embedding table with the candidate tower, so an item a user just saw
  pulls the query towards items like it from the first training step on. The hour of the week is
  context: an unknown hour contributes a zero vector, and training hides it for a
  `context_dropout` share of examples so that the query without it is trained too.
  """

  def __init__(self, num_users: int, item_embedding: tf.keras.layers.Embedding,
               embedding_dim: int, context_dropout: float = 0.0):
    super().__init__()
    self.user_embedding = tf.keras.layers.Embedding(num_users, embedding_dim)
    self.hour_embedding = tf.keras.layers.Embedding(contract.HOURS_PER_WEEK, embedding_dim)
    self.context_dropout = context_dropout
    self.item_embedding = item_embedding
    # Recency 0 is the latest item; histories are cut to HISTORY_LENGTH by Transform.
    self.recency_embedding = tf.keras.layers.Embedding(contract.HISTORY_LENGTH, embedding_dim)
    self.attention = tf.keras.layers.MultiHeadAttention(
        num_heads=_ATTENTION_HEADS, key_dim=embedding_dim // _ATTENTION_HEADS)
    self.attention_norm = tf.keras.layers.LayerNormalization()
    self.projection = tf.keras.layers.Dense(embedding_dim)

  def get_config(self):
    """Its sizes and context dropout; the shared item embedding is passed in (CandidateTower)."""
    return {"num_users": self.user_embedding.input_dim,
            "embedding_dim": self.user_embedding.output_dim,
            "context_dropout": self.context_dropout}

  def call(self, inputs, training=False):
    history = inputs[HISTORY_XF]
    present, weights, history_embeddings = _padded_embeddings(self.item_embedding, history)
    history_mean = _masked_mean(history_embeddings, weights)
    # Histories are oldest first and padded at the end: an item's recency is counted from the
    # last present one.
    lengths = tf.reduce_sum(tf.cast(present, tf.int64), axis=1, keepdims=True)
    recency = tf.clip_by_value(lengths - 1 - tf.range(tf.shape(history, out_type=tf.int64)[1]),
                               0, contract.HISTORY_LENGTH - 1)
    sequence = history_embeddings + self.recency_embedding(recency) * weights
    attended = self.attention_norm(sequence + self.attention(
        sequence, sequence, attention_mask=present[:, None, :]))
    user = self.user_embedding(inputs[USER_XF])
    hour = inputs[HOUR_OF_WEEK_XF]
    if training and self.context_dropout:
      hidden = tf.random.uniform(tf.shape(hour)) < self.context_dropout
      hour = tf.where(hidden, tf.constant(preprocessing.PADDING, tf.int64), hour)
    _, _, context = _padded_embeddings(self.hour_embedding, hour)
    return self.projection(tf.concat(
        [user, history_mean, _masked_mean(attended * weights, weights), context], axis=1))


def _padded_embeddings(embedding: tf.keras.layers.Embedding, indices: tf.Tensor):
  """(present [...] bool, weights [..., 1], embeddings [..., dim]) of indices [...] with padding.

  Padding slots look up row 0 but are multiplied by a zero weight, so they never move anything.
  """
  present = tf.not_equal(indices, preprocessing.PADDING)
  weights = tf.cast(present, tf.float32)[..., None]
  return present, weights, embedding(tf.maximum(indices, 0)) * weights


def _masked_mean(values: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
  """Mean over axis 1 of the present slots; zeros for a history with none."""
  return tf.math.divide_no_nan(tf.reduce_sum(values, axis=1), tf.reduce_sum(weights, axis=1))


class CandidateTower(tf.keras.Model):
  """Item id, category, price bucket and title embeddings, projected to the shared space.

  Category, price and title words are shared by many items, so a rarely seen item still lands
  near items like it. The title is a bag of words (the mean of its words' embeddings): titles are
  short, and which words they share ("Star Wars", a year, a franchise) matters more than order.
  An item without a title has a zero title vector.
  """

  def __init__(self, item_embedding: tf.keras.layers.Embedding, num_categories: int,
               num_price_buckets: int, num_title_words: int, embedding_dim: int):
    super().__init__()
    self.item_embedding = item_embedding
    self.category_embedding = tf.keras.layers.Embedding(num_categories, embedding_dim)
    self.price_embedding = tf.keras.layers.Embedding(num_price_buckets, embedding_dim)
    self.title_embedding = tf.keras.layers.Embedding(num_title_words, embedding_dim)
    self.projection = tf.keras.layers.Dense(embedding_dim)

  def get_config(self):
    """Its sizes. The item embedding it shares with the query tower is not config: the two-tower
    model passes it in, and the towers are saved inside the serving graph, not from config."""
    return {"num_categories": self.category_embedding.input_dim,
            "num_price_buckets": self.price_embedding.input_dim,
            "num_title_words": self.title_embedding.input_dim,
            "embedding_dim": self.category_embedding.output_dim}

  def call(self, inputs):
    _, weights, title_words = _padded_embeddings(self.title_embedding, inputs[TITLE_TOKENS_XF])
    return self.projection(tf.concat(
        [self.item_embedding(inputs[ITEM_XF]), self.category_embedding(inputs[CATEGORY_XF]),
         self.price_embedding(inputs[PRICE_BUCKET_XF]), _masked_mean(title_words, weights)],
        axis=1))


class TwoTowerModel(tfrs.Model):
  """Query and candidate towers trained with a sampled-softmax retrieval loss."""

  def __init__(self, num_users: int, num_items: int, num_categories: int,
               num_price_buckets: int, num_title_words: int, config: ModelConfig,
               item_probability: Optional[np.ndarray] = None):
    """item_probability: [num_items] share of training examples with each item, for the log-Q
    correction; None trains without it (uniform sampling assumed)."""
    super().__init__()
    item_embedding = tf.keras.layers.Embedding(num_items, config.embedding_dim)
    self.query_tower = QueryTower(num_users, item_embedding, config.embedding_dim,
                                  config.context_dropout)
    self.candidate_tower = CandidateTower(item_embedding, num_categories, num_price_buckets,
                                          num_title_words, config.embedding_dim)
    self.task = tfrs.tasks.Retrieval(remove_accidental_hits=True)
    if item_probability is None:
      item_probability = np.full(num_items, 1.0 / num_items)
    # Items never seen in training would get log(0); they are never sampled, so any floor works.
    self.item_probability = tf.constant(np.maximum(item_probability, 1e-12), tf.float32)

  def compute_loss(self, inputs, training=False):
    items = inputs[ITEM_XF]
    return self.task(self.query_tower(inputs, training=training), self.candidate_tower(inputs),
                     candidate_sampling_probability=tf.gather(self.item_probability, items),
                     candidate_ids=items)
