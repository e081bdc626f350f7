"""The two-tower retrieval model (TensorFlow Recommenders on tf-keras).

The query tower embeds who the user is, their profile, what they touched last, in order, and when
they ask (the hour of the week); the candidate tower embeds an item from its id, category, price
bucket and title words. Training pulls a user's next item towards the query embedding and pushes
other items away.

Which other items (`ModelConfig.negatives`; AUTO_NEGATIVES picks by catalog size,
`resolve_negatives`):
  * FULL_SOFTMAX, every item of the catalog: the exact likelihood, with no sampling and so no
    sampling bias; for a catalog of 10k items it is one matrix product per batch.
  * MIXED_NEGATIVES: the batch's other positives plus `mixed_negatives` items drawn uniformly
    from the catalog (Yang et al., 2020), for catalogs too large to score whole. In-batch
    negatives are drawn by popularity, so each candidate's logit is corrected by the log of how
    often it is expected in the pool (the log-Q correction of Yi et al., 2019), and rows whose
    positive is the same item are not counted as negatives (accidental hits). The uniform ones
    give rare items, which the batch almost never holds, negatives too. With none, it is the
    classic in-batch softmax.
The loss is summed over the batch, as TensorFlow Recommenders' Retrieval task does.
`temperature` divides the logits in both: below 1 it sharpens the softmax, which the scale of dot
products between embeddings may need.
"""
from typing import Dict, Optional

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from components.models import preprocessing
from components.models.config import ATTENTION_ENCODER
from components.models.config import ATTENTION_TITLE
from components.models.config import AUTO_NEGATIVES
from components.models.config import BAG_OF_WORDS_TITLE
from components.models.config import CNN_ENCODER
from components.models.config import FULL_SOFTMAX
from components.models.config import FULL_SOFTMAX_MAX_ITEMS
from components.models.config import GRU_ENCODER
from components.models.config import MIXED_NEGATIVES
from components.models.config import ModelConfig
from components.models.config import SEQUENCE_ENCODERS
from components.models.config import TITLE_ENCODERS
from schemas import contract

USER_XF = contract.transformed_name(contract.USER_ID)
ITEM_XF = contract.transformed_name(contract.ITEM_ID)
CATEGORY_XF = contract.transformed_name(contract.CATEGORY)
PRICE_BUCKET_XF = contract.transformed_name(contract.PRICE_BUCKET)
TITLE_TOKENS_XF = contract.transformed_name(contract.TITLE_TOKENS)
HISTORY_XF = contract.transformed_name(contract.HISTORY)
HOUR_OF_WEEK_XF = contract.transformed_name(contract.HOUR_OF_WEEK)
NEXT_HISTORY_XF = contract.transformed_name(contract.NEXT_HISTORY)
# An optional query tower input: [batch, dim] user vectors that stand in for the user id's
# embedding row, e.g. vectors adapted to a new user's first items (components/models/
# cold_start.py).
USER_VECTOR = "user_vector"
_ATTENTION_HEADS = 2
# What each tower reads.
CANDIDATE_INPUTS = (ITEM_XF, CATEGORY_XF, PRICE_BUCKET_XF, TITLE_TOKENS_XF)
QUERY_INPUTS = (USER_XF, HISTORY_XF, HOUR_OF_WEEK_XF)


class QueryTower(tf.keras.Model):
  """User id embedding, the whole profile as a set (masked mean), the most recent items as a
  sequence, and the hour of the week.

  The profile mean says what the user likes, from up to HISTORY_LENGTH items: on ratings data
  the whole profile is what predicts the held-out items (EASE, Mult-VAE read all of it). The
  sequence encoder reads the last `recent_length` of them, in order, and says where the session
  is heading, which a mean cannot tell apart from its reverse (SEQUENCE_ENCODERS). Padding is
  masked out of every part. The history shares the item embedding table with the candidate
  tower, so an item a user just saw pulls the query towards items like it from the first
  training step on. The hour of the week is context: an unknown hour contributes a zero vector,
  and training hides it for a `context_dropout` share of examples so that the query without it
  is trained too. Where the inputs hold USER_VECTOR, it replaces the user id's embedding; the
  user id is then not read.
  """

  def __init__(self, num_users: int, item_embedding: tf.keras.layers.Embedding,
               embedding_dim: int, context_dropout: float = 0.0,
               sequence_encoder: str = ATTENTION_ENCODER,
               recent_length: int = contract.RECENT_LENGTH):
    super().__init__()
    self.user_embedding = tf.keras.layers.Embedding(num_users, embedding_dim)
    self.hour_embedding = tf.keras.layers.Embedding(contract.HOURS_PER_WEEK, embedding_dim)
    self.context_dropout = context_dropout
    self.item_embedding = item_embedding
    self.recent_length = recent_length
    self.sequence_encoder = sequence_encoder
    self.encoder = _sequence_encoder(sequence_encoder, embedding_dim, recent_length)
    self.projection = tf.keras.layers.Dense(embedding_dim)

  def get_config(self):
    """Its sizes, encoder and context dropout; the shared item embedding is passed in
    (CandidateTower)."""
    return {"num_users": self.user_embedding.input_dim,
            "embedding_dim": self.user_embedding.output_dim,
            "context_dropout": self.context_dropout,
            "sequence_encoder": self.sequence_encoder,
            "recent_length": self.recent_length}

  def build(self, input_shape):
    # The profile mean reads the item table itself (`bag_mean`), before any layer call has
    # made it. Layer's build, not Model's: that one would call the tower on float placeholders.
    if not self.item_embedding.built:
      self.item_embedding.build(None)
    tf.keras.layers.Layer.build(self, input_shape)

  def call(self, inputs, training=False):
    history = inputs[HISTORY_XF]
    profile = bag_mean(self.item_embedding.embeddings, history)
    recent_present, recent_weights, recent_embeddings = _padded_embeddings(
        self.item_embedding, recent_items(history, self.recent_length))
    user = (inputs[USER_VECTOR] if USER_VECTOR in inputs
            else self.user_embedding(inputs[USER_XF]))
    hour = inputs[HOUR_OF_WEEK_XF]
    if training and self.context_dropout:
      hidden = tf.random.uniform(tf.shape(hour)) < self.context_dropout
      hour = tf.where(hidden, tf.constant(preprocessing.PADDING, tf.int64), hour)
    _, _, context = _padded_embeddings(self.hour_embedding, hour)
    return self.projection(tf.concat(
        [user, profile,
         self.encoder(recent_embeddings, recent_present, recent_weights), context], axis=1))


def recent_items(history: tf.Tensor, length: int) -> tf.Tensor:
  """The last `length` present items of left-aligned, PADDING-padded histories [batch, width],
  left-aligned in a [batch, length] tensor with PADDING after them (oldest first)."""
  lengths = tf.reduce_sum(tf.cast(tf.not_equal(history, preprocessing.PADDING), tf.int32),
                          axis=1, keepdims=True)
  # A history shorter than `length` is copied whole, its padding included; slots past its width
  # read one appended PADDING column, which also serves a width-0 history (allowed at serving).
  padded = tf.concat([history, tf.fill([tf.shape(history)[0], 1],
                                       tf.constant(preprocessing.PADDING, history.dtype))], 1)
  positions = tf.minimum(tf.maximum(lengths - length, 0) + tf.range(length)[None, :],
                         tf.shape(history)[1])
  return tf.gather(padded, positions, batch_dims=1)


class AttentionEncoder(tf.keras.layers.Layer):
  """SASRec-style: one self-attention layer over a sequence (recent items, a title's words),
  each element with an embedding of its place counted from the last one (for items, how recent
  it is), then the masked mean of the attended elements."""

  def __init__(self, embedding_dim: int, recent_length: int):
    super().__init__()
    # Recency 0 is the last element.
    self.recency_embedding = tf.keras.layers.Embedding(recent_length, embedding_dim)
    self.attention = tf.keras.layers.MultiHeadAttention(
        num_heads=_ATTENTION_HEADS, key_dim=embedding_dim // _ATTENTION_HEADS)
    self.attention_norm = tf.keras.layers.LayerNormalization()
    self.recent_length = recent_length

  def call(self, embeddings, present, weights):
    lengths = tf.reduce_sum(tf.cast(present, tf.int32), axis=1, keepdims=True)
    recency = tf.clip_by_value(lengths - 1 - tf.range(tf.shape(present)[1]), 0,
                               self.recent_length - 1)
    sequence = embeddings + self.recency_embedding(recency) * weights
    attended = self.attention_norm(sequence + self.attention(
        sequence, sequence, attention_mask=present[:, None, :]))
    return _masked_mean(attended * weights, weights)


class GRUEncoder(tf.keras.layers.Layer):
  """A GRU over the items, oldest first; its state after the latest present item (the mask makes
  it skip the padding after it). An empty history gives the zero initial state."""

  def __init__(self, embedding_dim: int):
    super().__init__()
    self.gru = tf.keras.layers.GRU(embedding_dim)

  def call(self, embeddings, present, weights):
    del weights  # the mask skips padded steps
    return self.gru(embeddings, mask=present)


class CNNEncoder(tf.keras.layers.Layer):
  """Causal 1-D convolutions over the items (Caser/NextItNet-style): each output reads an item
  and the ones just before it; the masked max over the present outputs. Causal padding means a
  present item's output never reads the padding after the sequence."""

  def __init__(self, embedding_dim: int, kernel_size: int = 3, layers: int = 2):
    super().__init__()
    self.convolutions = [
        tf.keras.layers.Conv1D(embedding_dim, kernel_size, padding="causal",
                               dilation_rate=2 ** layer, activation="relu")
        for layer in range(layers)]

  def call(self, embeddings, present, weights):
    outputs = embeddings
    for convolution in self.convolutions:
      outputs = convolution(outputs)
    # ReLU outputs are >= 0, so a zero where an item is absent never wins the max, and an empty
    # history gives zeros.
    return tf.reduce_max(outputs * weights, axis=1)


def _sequence_encoder(name: str, embedding_dim: int, recent_length: int) -> tf.keras.layers.Layer:
  if name == ATTENTION_ENCODER:
    return AttentionEncoder(embedding_dim, recent_length)
  if name == GRU_ENCODER:
    return GRUEncoder(embedding_dim)
  if name == CNN_ENCODER:
    return CNNEncoder(embedding_dim)
  raise ValueError(f"sequence_encoder must be one of {SEQUENCE_ENCODERS}, got {name!r}")


def _padded_embeddings(embedding: tf.keras.layers.Embedding, indices: tf.Tensor):
  """(present [...] bool, weights [..., 1], embeddings [..., dim]) of indices [...] with padding.

  Padding slots look up row 0 but are multiplied by a zero weight, so they never move anything.
  """
  present = tf.not_equal(indices, preprocessing.PADDING)
  weights = tf.cast(present, tf.float32)[..., None]
  return present, weights, embedding(tf.maximum(indices, 0)) * weights


def bag_mean(table: tf.Variable, indices: tf.Tensor) -> tf.Tensor:
  """[batch, dim]: the mean of `table`'s rows at each row's present indices [batch, width]
  (PADDING elsewhere); zeros for a row with none.

  Each distinct index's row is gathered once, and a sparse [batch, distinct] matrix of 1 / count
  weights times those rows is the mean. Gathering every slot, padding included, and summing
  made a per-slot gradient that Adam then merged row by row: 20 ms of a training step for 512
  histories of 200 items (80 % present) on 2 cores, 8 ms this way. The table itself is only
  gathered from, never read whole: TensorFlow copies a variable that is also gathered from (the
  recent items) on every whole read, 26 ms a request for 1M items. That rules out the sparse
  matrix times the whole table, and `tf.nn.embedding_lookup_sparse`'s unique-gather-segment
  mean, which grappler rewrites into a segment mean over the whole table.
  """
  present = tf.where(tf.not_equal(indices, preprocessing.PADDING))
  rows = present[:, 0]
  distinct, positions = tf.unique(tf.gather_nd(indices, present), out_idx=tf.int64)
  batch = tf.shape(indices, out_type=tf.int64)[0]
  counts = tf.math.unsorted_segment_sum(tf.ones_like(rows, table.dtype), rows, batch)
  weights = tf.sparse.SparseTensor(
      tf.stack([rows, positions], axis=1), tf.gather(1.0 / tf.maximum(counts, 1.0), rows),
      tf.stack([batch, tf.size(distinct, out_type=tf.int64)]))
  return tf.sparse.sparse_dense_matmul(weights, tf.gather(table, distinct))


def _masked_mean(values: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
  """Mean over axis 1 of the present slots; zeros for a history with none."""
  return tf.math.divide_no_nan(tf.reduce_sum(values, axis=1), tf.reduce_sum(weights, axis=1))


class CandidateTower(tf.keras.Model):
  """Item id, category, price bucket and title embeddings, projected to the shared space.

  Category, price and title words are shared by many items, so a rarely seen item still lands
  near items like it. The title (`title_encoder`, TITLE_ENCODERS) is by default a bag of words,
  the mean of its words' embeddings: titles are short, and which words they share ("Star Wars",
  a year, a franchise) matters more than order. ATTENTION_TITLE reads the words in order with
  one self-attention layer (`AttentionEncoder`), a transformer-style text encoder, so that a
  word can mean something else next to another ("The Return of the King" against "The King and
  I"). An item without a title has a zero title vector.
  """

  def __init__(self, item_embedding: tf.keras.layers.Embedding, num_categories: int,
               num_price_buckets: int, num_title_words: int, embedding_dim: int,
               title_encoder: str = BAG_OF_WORDS_TITLE):
    super().__init__()
    if title_encoder not in TITLE_ENCODERS:
      raise ValueError(f"title_encoder must be one of {TITLE_ENCODERS}, got {title_encoder!r}")
    self.item_embedding = item_embedding
    self.category_embedding = tf.keras.layers.Embedding(num_categories, embedding_dim)
    self.price_embedding = tf.keras.layers.Embedding(num_price_buckets, embedding_dim)
    self.title_embedding = tf.keras.layers.Embedding(num_title_words, embedding_dim)
    self.title_encoder = title_encoder
    self.title_attention = (AttentionEncoder(embedding_dim, contract.TITLE_LENGTH)
                            if title_encoder == ATTENTION_TITLE else None)
    self.projection = tf.keras.layers.Dense(embedding_dim)

  def get_config(self):
    """Its sizes and title encoder. The item embedding it shares with the query tower is not
    config: the two-tower model passes it in, and the towers are saved inside the serving graph,
    not from config."""
    return {"num_categories": self.category_embedding.input_dim,
            "num_price_buckets": self.price_embedding.input_dim,
            "num_title_words": self.title_embedding.input_dim,
            "embedding_dim": self.category_embedding.output_dim,
            "title_encoder": self.title_encoder}

  def build(self, input_shape):
    # The bag of words reads the word table itself (`bag_mean`); as QueryTower.build.
    if not self.title_embedding.built:
      self.title_embedding.build(None)
    tf.keras.layers.Layer.build(self, input_shape)

  def call(self, inputs):
    if self.title_attention is None:
      title = bag_mean(self.title_embedding.embeddings, inputs[TITLE_TOKENS_XF])
    else:
      present, weights, words = _padded_embeddings(self.title_embedding,
                                                   inputs[TITLE_TOKENS_XF])
      title = self.title_attention(words, present, weights)
    return self.projection(tf.concat(
        [self.item_embedding(inputs[ITEM_XF]), self.category_embedding(inputs[CATEGORY_XF]),
         self.price_embedding(inputs[PRICE_BUCKET_XF]), title], axis=1))


def mixed_negative_logits(queries: tf.Tensor, candidates: tf.Tensor, candidate_ids: tf.Tensor,
                          positive_ids: tf.Tensor, expected_counts: tf.Tensor,
                          temperature: float) -> tf.Tensor:
  """Logits of the mixed-negative softmax (Yang et al., 2020, "Mixed Negative Sampling"), whose
  label for row i is column i.

  Args:
    queries: [batch, dim] query embeddings.
    candidates: [batch + m, dim]: the batch's positives, in row order, then m catalog items
      drawn uniformly.
    candidate_ids: [batch + m] item index of each candidate.
    positive_ids: [batch] item index of each row's positive.
    expected_counts: [batch + m] how often each candidate's item is expected in such a pool,
      batch * p(item) + m / catalog size, p being the share of training engagements with it.

  Returns:
    [batch, batch + m]: query . candidate / temperature - log(expected count) (the log-Q term:
    a popular item is a negative often, and would be learnt as worse than it is), and -inf where
    a column other than the row's own holds the row's positive item (an accidental hit).
  """
  logits = tf.matmul(queries, candidates, transpose_b=True) / temperature - tf.math.log(
      expected_counts)[None, :]
  hits = tf.equal(positive_ids[:, None], candidate_ids[None, :])
  own = tf.cast(tf.eye(tf.shape(queries)[0], tf.shape(candidates)[0]), tf.bool)
  return tf.where(hits & ~own, tf.constant(-np.inf, logits.dtype), logits)


def resolve_negatives(negatives: str, catalog_size: Optional[int]) -> str:
  """FULL_SOFTMAX or MIXED_NEGATIVES: `negatives` itself, or for AUTO_NEGATIVES the full softmax
  when a catalog (of `catalog_size` items; None: none given) of at most FULL_SOFTMAX_MAX_ITEMS
  is there to score whole."""
  if negatives != AUTO_NEGATIVES:
    return negatives
  if catalog_size is not None and catalog_size <= FULL_SOFTMAX_MAX_ITEMS:
    return FULL_SOFTMAX
  return MIXED_NEGATIVES


class TwoTowerModel(tfrs.Model):
  """Query and candidate towers trained with a softmax over the catalog (FULL_SOFTMAX) or over
  the batch's items plus uniformly drawn catalog items (MIXED_NEGATIVES)."""

  def __init__(self, num_users: int, num_items: int, num_categories: int,
               num_price_buckets: int, num_title_words: int, config: ModelConfig,
               item_probability: Optional[np.ndarray] = None,
               catalog: Optional[Dict[str, np.ndarray]] = None):
    """item_probability: [num_items] share of training engagements with each item, for the
    log-Q terms; None assumes uniform. catalog: the candidate tower's inputs (ITEM_XF,
    CATEGORY_XF, PRICE_BUCKET_XF, TITLE_TOKENS_XF) of every recommendable item, the full
    softmax's classes and the pool uniform negatives are drawn from; needed by those only."""
    super().__init__()
    item_embedding = tf.keras.layers.Embedding(num_items, config.embedding_dim)
    self.query_tower = QueryTower(num_users, item_embedding, config.embedding_dim,
                                  config.context_dropout, config.sequence_encoder,
                                  config.recent_length)
    self.candidate_tower = CandidateTower(item_embedding, num_categories, num_price_buckets,
                                          num_title_words, config.embedding_dim,
                                          config.title_encoder)
    self.negatives = resolve_negatives(
        config.negatives, None if catalog is None else len(catalog[ITEM_XF]))
    if catalog is None and (self.negatives == FULL_SOFTMAX or config.mixed_negatives):
      raise ValueError(f"negatives={config.negatives!r} with {config.mixed_negatives} uniform "
                       "negatives needs the catalog")
    catalog = catalog or {ITEM_XF: np.zeros(0, np.int64)}
    self.catalog = {key: tf.constant(values) for key, values in catalog.items()}
    self.catalog_size = len(catalog[ITEM_XF])
    self.temperature = config.temperature
    self.mixed_negatives = config.mixed_negatives
    if item_probability is None:
      item_probability = np.full(num_items, 1.0 / num_items)
    self.item_probability = tf.constant(item_probability, tf.float32)

  def call(self, inputs, training=False):
    """Logits and labels of a batch of engagements under the configured softmax."""
    return self.logits(self.query_tower(inputs, training=training), inputs)

  def logits(self, queries: tf.Tensor, inputs: Dict[str, tf.Tensor]):
    """(logits, labels) of `queries` [batch, dim] whose positives are the items of `inputs`
    (their CANDIDATE_INPUTS) under the configured softmax."""
    positives = inputs[ITEM_XF]
    if self.negatives == FULL_SOFTMAX:
      logits = tf.matmul(queries, self.candidate_tower(self.catalog),
                         transpose_b=True) / self.temperature
      return logits, positives
    pool = {key: inputs[key] for key in CANDIDATE_INPUTS}
    uniform_share = 0.0
    if self.mixed_negatives:
      uniform = tf.random.uniform([self.mixed_negatives], maxval=self.catalog_size,
                                  dtype=tf.int64)
      pool = {key: tf.concat([pool[key], tf.gather(self.catalog[key], uniform)], axis=0)
              for key in CANDIDATE_INPUTS}
      uniform_share = self.mixed_negatives / self.catalog_size
    pool_ids = pool[ITEM_XF]
    batch = tf.cast(tf.shape(positives)[0], tf.float32)
    # Items never engaged with in training have p = 0; only uniform draws bring them in.
    expected_counts = tf.maximum(batch * tf.gather(self.item_probability, pool_ids)
                                 + uniform_share, 1e-12)
    logits = mixed_negative_logits(queries, self.candidate_tower(pool), pool_ids, positives,
                                   expected_counts, self.temperature)
    return logits, tf.range(tf.shape(positives)[0], dtype=tf.int64)

  # Keras traces the train step with AutoGraph, which rewrites from source each function the
  # step calls, Keras' own layer code included: 17 of the first step's 20 s on ml-latest-small.
  # Nothing in the step branches on a tensor, so it is traced as the Python it is (the losses
  # are the same, step for step).
  @tf.autograph.experimental.do_not_convert
  def train_step(self, inputs):
    """tfrs.Model's step, except that under the full softmax the candidate tower's gradients
    are applied dense.

    The full softmax embeds every catalog item each step, so each of the candidate tower's
    tables gets a gradient on every row, from the catalog and again from the batch's items and
    histories. Applied sparse, Adam first sums the rows of each index and then updates every
    row regardless: 17 ms more a step on ml-latest-small (86 ms against 69)."""
    with tf.GradientTape() as tape:
      loss = self.compute_loss(inputs, training=True)
      regularization_loss = sum(self.losses)
      total_loss = loss + regularization_loss
    variables = self.trainable_variables
    gradients = tape.gradient(total_loss, variables)
    if self.negatives == FULL_SOFTMAX:
      whole = {variable.ref() for variable in self.candidate_tower.trainable_variables}
      gradients = [tf.convert_to_tensor(gradient)
                   if variable.ref() in whole and isinstance(gradient, tf.IndexedSlices)
                   else gradient for gradient, variable in zip(gradients, variables)]
    self.optimizer.apply_gradients(zip(gradients, variables))
    metrics = {metric.name: metric.result() for metric in self.metrics}
    metrics.update(loss=loss, regularization_loss=regularization_loss, total_loss=total_loss)
    return metrics

  def compute_loss(self, inputs, training=False):
    logits, labels = self(inputs, training=training)
    return tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
