"""The serving SavedModel: raw ids and the request time in, ranked item ids, scores and
propensities out, in one graph.

The graph holds the Transform layer (so clients send raw ids, exactly as logged), the query
tower, the catalog's frozen embeddings and features, and the DQN head. Its signatures
(schemas/contract.py):
  * `serving_default`: the retrieval top-`serve_candidates`, reranked by Q-value (greedily, or
    exploring with a temperature or ε-greedy), top_k out with each item's propensity;
  * `retrieve`: the two-tower top_k by retrieval score, the baseline reranking is judged against;
  * `rank_catalog`: every catalog item by retrieval score, for batch jobs that filter;
  * `rank_catalog_adapted`: the same after `adapt_steps` gradient steps on each user's vector
    from their latest history items (cold-start adaptation, components/models/cold_start.py),
    for `recsys recommend --adapt-steps`.
A user id is looked up among the stored adapted users first (`set_adapted_users`, written by
`recsys adapt-users`): such a user is served from their stored vector instead of the embedding
row (for a new user, the untrained OOV row). The store is a mutable hash table and a variable,
both saved with the graph. Retrieval is a dense matmul and top-k over the catalog, the same
function training sought candidates with (ranker.Catalog), with every k fixed at export so the
shapes survive save/load.
Stock TensorFlow ops only, so a stock TensorFlow Serving binary loads it.
"""
import numpy as np
import tensorflow as tf

from components.models import cold_start
from components.models import queries
from components.models import ranker
from components.models import two_tower
from components.models.config import ModelConfig
from schemas import contract

ADAPT_STEPS_SPEC = tf.TensorSpec([], tf.int32, name=contract.ADAPT_STEPS)


class RecommenderModule(tf.Module):
  """What the Pusher ships: the serving signatures and everything they need.

  Its functions are traced without AutoGraph: nothing in them branches on a tensor, and
  rewriting the Keras layers' code they call took 16 of the 23 s a small model's export took.
  """

  def __init__(self, tft_layer: tf.keras.layers.Layer, query_tower: tf.keras.Model,
               q_network: tf.keras.Model, catalog: ranker.Catalog, item_ids: np.ndarray,
               top_k: int, config: ModelConfig):
    super().__init__()
    self.tft_layer = tft_layer
    self.query_tower = query_tower
    self.q_network = q_network
    # Variables, not constants: a server loads them without holding Python's GIL (ranker.Catalog).
    self.catalog = catalog.as_variables()
    self.item_ids = tf.Variable(item_ids, trainable=False, dtype=tf.string)
    catalog_size = len(item_ids)
    # tf.math.top_k fails at serving time when asked for more items than there are.
    self.top_k = min(top_k, catalog_size)
    self.candidates = min(max(config.ranker.serve_candidates, self.top_k), catalog_size)
    self.catalog_size = catalog_size
    self.temperature = config.ranker.temperature
    self.epsilon = config.ranker.epsilon
    self.adapt_learning_rate = config.adapt_learning_rate
    self.retrieval_temperature = config.temperature
    dimension = query_tower.user_embedding.output_dim
    # Stored adapted users: id -> row of `adapted_vectors`, whose row 0 is unused so that the
    # table's default, 0, is "not stored" and every lookup's gather has a row to read.
    self.adapted_users = tf.lookup.experimental.MutableHashTable(tf.string, tf.int64, 0)
    self.adapted_vectors = tf.Variable(tf.zeros([1, dimension]), trainable=False,
                                       shape=tf.TensorShape([None, dimension]))

  def _user_inputs(self, user_id, history, timestamp, adapt_steps=None):
    """The query tower's inputs, USER_VECTOR included, and whether each user id is in the
    training vocabulary. `adapt_steps` None (the online signatures) leaves the adaptation loop
    out of the graph."""
    # Clients pad histories of different lengths with ''; Transform wants them as a ragged list.
    compact_history = tf.ragged.boolean_mask(history, tf.not_equal(history, "")).to_sparse()
    inputs = self.tft_layer({
        contract.USER_ID: user_id, contract.HISTORY: compact_history,
        contract.TIMESTAMP: timestamp})
    embedding = self.query_tower.user_embedding
    # The table's lookup has no static shape; the tower's layers need the vectors' width.
    stored = tf.ensure_shape(self.adapted_users.lookup(user_id), [None])
    vectors = tf.where((stored > 0)[:, None], tf.gather(self.adapted_vectors, stored),
                       embedding(inputs[two_tower.USER_XF]))
    if adapt_steps is not None:
      vectors = cold_start.adapt_user_vectors(
          self.query_tower, self.catalog.embeddings, vectors,
          two_tower.recent_items(inputs[two_tower.HISTORY_XF], cold_start.MAX_SUPPORT),
          adapt_steps, self.adapt_learning_rate, self.retrieval_temperature)
    inputs[two_tower.USER_VECTOR] = vectors
    return inputs, inputs[two_tower.USER_XF] < embedding.input_dim - 1

  def _states(self, user_id, history, timestamp, adapt_steps=None):
    return self.query_tower(self._user_inputs(user_id, history, timestamp, adapt_steps)[0])

  def _retrieved(self, user_id, history, timestamp, k: int, adapt_steps=None):
    scores, items = self.catalog.top_candidates(
        self._states(user_id, history, timestamp, adapt_steps), k)
    return {contract.ITEM_IDS: tf.gather(self.item_ids, items), contract.SCORES: scores}

  @tf.function(input_signature=queries.INPUT_SPECS, autograph=False)
  def serve(self, user_id, history, timestamp):
    states = self._states(user_id, history, timestamp)
    _, candidates = self.catalog.top_candidates(states, self.candidates)
    q_values = self.q_network((states, self.catalog.actions(candidates)))
    order, propensities = ranker.rerank(q_values, self.top_k, self.temperature, self.epsilon)
    return {
        contract.ITEM_IDS: tf.gather(self.item_ids,
                                      tf.gather(candidates, order, batch_dims=1)),
        contract.SCORES: tf.gather(q_values, order, batch_dims=1),
        contract.PROPENSITIES: propensities,
    }

  @tf.function(input_signature=queries.INPUT_SPECS, autograph=False)
  def retrieve(self, user_id, history, timestamp):
    return self._retrieved(user_id, history, timestamp, self.top_k)

  @tf.function(input_signature=queries.INPUT_SPECS, autograph=False)
  def rank_catalog(self, user_id, history, timestamp):
    return self._retrieved(user_id, history, timestamp, self.catalog_size)

  @tf.function(input_signature=(*queries.INPUT_SPECS, ADAPT_STEPS_SPEC), autograph=False)
  def rank_catalog_adapted(self, user_id, history, timestamp, adapt_steps):
    return self._retrieved(user_id, history, timestamp, self.catalog_size, adapt_steps)

  @tf.function(input_signature=(*queries.INPUT_SPECS, ADAPT_STEPS_SPEC), autograph=False)
  def adapt(self, user_id, history, timestamp, adapt_steps):
    """Each user's vector after `adapt_steps` steps on their latest history items, and whether
    the user id is in the training vocabulary (`known`)."""
    inputs, known = self._user_inputs(user_id, history, timestamp, adapt_steps)
    return {"vectors": inputs[two_tower.USER_VECTOR], "known": known}

  @tf.function(input_signature=(tf.TensorSpec([None], tf.string),
                                tf.TensorSpec([None, None], tf.float32)), autograph=False)
  def set_adapted_users(self, user_ids, vectors):
    """Replaces the stored adapted users by `user_ids` [n] with `vectors` [n, dim]."""
    self.adapted_users.remove(self.adapted_users.export()[0])
    self.adapted_users.insert(user_ids, tf.range(1, tf.size(user_ids, tf.int64) + 1))
    self.adapted_vectors.assign(tf.concat([tf.zeros_like(self.adapted_vectors[:1]), vectors], 0))
    return tf.size(user_ids)


def save(module: RecommenderModule, export_dir: str) -> None:
  tf.saved_model.save(module, export_dir, signatures={
      contract.SERVING_SIGNATURE: module.serve.get_concrete_function(),
      contract.RETRIEVE_SIGNATURE: module.retrieve.get_concrete_function(),
      contract.RANK_CATALOG_SIGNATURE: module.rank_catalog.get_concrete_function(),
      contract.ADAPTED_RANK_SIGNATURE: module.rank_catalog_adapted.get_concrete_function()})
