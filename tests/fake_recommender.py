"""A tiny SavedModel that follows the serving contract (schemas/contract.py), ranking by rules.

Tests of code that runs exported models use it instead of training one: it saves in a second.
"""
import pathlib

import tensorflow as tf

from components.models import queries
from schemas import contract

N_ITEMS = 20
TOP_K = 12  # more than the default slate size, fewer than the catalog
BROKEN_SIGNATURE = "broken"


class FakeRecommender(tf.Module):
  """Ranks by rules a test can recompute by hand, instead of by learned scores.

  `retrieve` ranks items user, user + 1, ... (mod N_ITEMS) first. `serving_default` starts
  instead at user + sum over history columns c of (c + 1) * item number, so the result depends on
  every history item and its column; its propensity at position j is 1 / (j + 1). `broken`
  returns ids outside the catalog. The time is taken, as the contract requires, and not used.
  """

  def __init__(self):
    super().__init__()
    self._catalog = tf.constant([f"i{n:05d}" for n in range(N_ITEMS)])

  def _top(self, start):
    items = (start[:, None] + tf.range(TOP_K)[None, :]) % N_ITEMS
    scores = -tf.cast(tf.broadcast_to(tf.range(TOP_K), tf.shape(items)), tf.float32)
    return tf.gather(self._catalog, items), scores

  @tf.function(input_signature=queries.INPUT_SPECS)
  def retrieve(self, user_id, history, timestamp):
    del history, timestamp
    item_ids, scores = self._top(_numbers(user_id))
    return {contract.ITEM_IDS: item_ids, contract.SCORES: scores}

  @tf.function(input_signature=queries.INPUT_SPECS)
  def serve(self, user_id, history, timestamp):
    del timestamp
    columns = tf.range(1, tf.shape(history)[1] + 1)
    start = _numbers(user_id) + tf.reduce_sum(_numbers(history) * columns[None, :], axis=1)
    item_ids, scores = self._top(start)
    propensities = tf.broadcast_to(1.0 / tf.range(1.0, TOP_K + 1.0), tf.shape(scores))
    return {contract.ITEM_IDS: item_ids, contract.SCORES: scores,
            contract.PROPENSITIES: propensities}

  @tf.function(input_signature=queries.INPUT_SPECS)
  def broken(self, user_id, history, timestamp):
    del history, timestamp
    item_ids = tf.fill([tf.shape(user_id)[0], TOP_K], "i99999")
    return {contract.ITEM_IDS: item_ids, contract.SCORES: tf.zeros(tf.shape(item_ids))}


def _numbers(ids):
  """42 for "u00042" or "i00042", 0 for the '' padding."""
  return tf.strings.to_number(tf.strings.regex_replace(ids, "^[ui]?", "0"), tf.int32)


def save(path: pathlib.Path) -> pathlib.Path:
  """Saves a FakeRecommender with its three signatures to path, a SavedModel version dir."""
  module = FakeRecommender()
  tf.saved_model.save(module, str(path), signatures={
      contract.SERVING_SIGNATURE: module.serve.get_concrete_function(),
      contract.RETRIEVE_SIGNATURE: module.retrieve.get_concrete_function(),
      BROKEN_SIGNATURE: module.broken.get_concrete_function()})
  return path
