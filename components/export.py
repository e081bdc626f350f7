"""The serving SavedModel: raw ids in, top-K item ids and scores out, in one graph.

The graph holds the Transform layer (so clients send raw ids, exactly as logged), the query tower
and brute-force indexes over the catalog embeddings: top-K for `serving_default`, the whole
catalog for `rank_catalog`. It uses stock TensorFlow ops only, so a stock TensorFlow Serving binary
loads it.
"""
import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from components import features
from serving import signature


_INPUTS = [
    tf.TensorSpec([None], tf.string, name=signature.USER_ID),
    tf.TensorSpec([None, None], tf.string, name=signature.HISTORY),
]


class RecommenderModule(tf.Module):
  """What the Pusher ships: the serving signatures and everything they need."""

  def __init__(self, tft_layer: tf.keras.layers.Layer, query_tower: tf.keras.Model,
               candidate_embeddings: np.ndarray, item_ids: np.ndarray, top_k: int):
    super().__init__()
    self.tft_layer = tft_layer
    self.query_tower = query_tower
    self.index = build_index(candidate_embeddings, item_ids, top_k)
    self.catalog_index = build_index(candidate_embeddings, item_ids, len(item_ids))

  def _queries(self, user_id, history):
    # Clients pad histories of different lengths with ''; Transform wants them as a ragged list.
    compact_history = tf.ragged.boolean_mask(history, tf.not_equal(history, "")).to_sparse()
    return self.query_tower(
        self.tft_layer({features.USER_ID: user_id, features.HISTORY: compact_history}))

  @tf.function(input_signature=_INPUTS)
  def serve(self, user_id, history):
    scores, item_ids = self.index(self._queries(user_id, history))
    return {signature.ITEM_IDS: item_ids, signature.SCORES: scores}

  @tf.function(input_signature=_INPUTS)
  def rank_catalog(self, user_id, history):
    scores, item_ids = self.catalog_index(self._queries(user_id, history))
    return {signature.ITEM_IDS: item_ids, signature.SCORES: scores}


def build_index(candidate_embeddings: np.ndarray, item_ids: np.ndarray,
                top_k: int) -> tfrs.layers.factorized_top_k.BruteForce:
  """A brute-force index over the whole catalog.

  `k` is fixed when the index is built and clipped to the catalog size, because `tf.math.top_k`
  fails at serving time when asked for more items than there are.
  """
  index = tfrs.layers.factorized_top_k.BruteForce(k=min(top_k, len(item_ids)))
  index.index(tf.constant(candidate_embeddings), tf.constant(item_ids))
  return index


def save(module: RecommenderModule, export_dir: str) -> None:
  tf.saved_model.save(module, export_dir, signatures={
      signature.SERVING_SIGNATURE: module.serve.get_concrete_function(),
      signature.RANK_CATALOG_SIGNATURE: module.rank_catalog.get_concrete_function()})
