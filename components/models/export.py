"""The serving SavedModel: raw ids and the request time in, ranked item ids, scores and
propensities out, in one graph.

The graph holds the Transform layer (so clients send raw ids, exactly as logged), the query
tower, the catalog's frozen embeddings and features, and the DQN head. Its signatures
(schemas/contract.py):
  * `serving_default`: the retrieval top-`serve_candidates`, reranked by Q-value (greedily, or
    exploring with a temperature or ε-greedy), top_k out with each item's propensity;
  * `retrieve`: the two-tower top_k by retrieval score, the baseline reranking is judged against;
  * `rank_catalog`: every catalog item by retrieval score, for batch jobs that filter.
Retrieval is a dense matmul and top-k over the catalog, the same function training sought
candidates with (ranker.Catalog), with every k fixed at export so the shapes survive save/load.
Stock TensorFlow ops only, so a stock TensorFlow Serving binary loads it.
"""
import numpy as np
import tensorflow as tf

from components.models import queries
from components.models import ranker
from components.models.config import RankerConfig
from schemas import contract


class RecommenderModule(tf.Module):
  """What the Pusher ships: the serving signatures and everything they need."""

  def __init__(self, tft_layer: tf.keras.layers.Layer, query_tower: tf.keras.Model,
               q_network: tf.keras.Model, catalog: ranker.Catalog, item_ids: np.ndarray,
               top_k: int, config: RankerConfig):
    super().__init__()
    self.tft_layer = tft_layer
    self.query_tower = query_tower
    self.q_network = q_network
    self.catalog = catalog
    self.item_ids = tf.constant(item_ids)
    catalog_size = len(item_ids)
    # tf.math.top_k fails at serving time when asked for more items than there are.
    self.top_k = min(top_k, catalog_size)
    self.candidates = min(max(config.serve_candidates, self.top_k), catalog_size)
    self.catalog_size = catalog_size
    self.temperature = config.temperature
    self.epsilon = config.epsilon

  def _states(self, user_id, history, timestamp):
    # Clients pad histories of different lengths with ''; Transform wants them as a ragged list.
    compact_history = tf.ragged.boolean_mask(history, tf.not_equal(history, "")).to_sparse()
    return self.query_tower(self.tft_layer({
        contract.USER_ID: user_id, contract.HISTORY: compact_history,
        contract.TIMESTAMP: timestamp}))

  def _retrieved(self, user_id, history, timestamp, k: int):
    scores, items = self.catalog.top_candidates(self._states(user_id, history, timestamp), k)
    return {contract.ITEM_IDS: tf.gather(self.item_ids, items), contract.SCORES: scores}

  @tf.function(input_signature=queries.INPUT_SPECS)
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

  @tf.function(input_signature=queries.INPUT_SPECS)
  def retrieve(self, user_id, history, timestamp):
    return self._retrieved(user_id, history, timestamp, self.top_k)

  @tf.function(input_signature=queries.INPUT_SPECS)
  def rank_catalog(self, user_id, history, timestamp):
    return self._retrieved(user_id, history, timestamp, self.catalog_size)


def save(module: RecommenderModule, export_dir: str) -> None:
  tf.saved_model.save(module, export_dir, signatures={
      contract.SERVING_SIGNATURE: module.serve.get_concrete_function(),
      contract.RETRIEVE_SIGNATURE: module.retrieve.get_concrete_function(),
      contract.RANK_CATALOG_SIGNATURE: module.rank_catalog.get_concrete_function()})
