"""Calling an exported ranking signature for many (user, history) queries at once.

Offline users of a SavedModel (batch recommendations, evaluation) ask the same questions as the
online service, many at a time. This module is the one place that turns Python ids into the
signature's [batch] user and [batch, width] history tensors: histories are oldest first and
padded with '' at the end, as serving clients send them and the model was trained on.
"""
import os
from typing import Dict, Iterator, Sequence, Tuple

import numpy as np
import tensorflow as tf

from serving import signature

# Queries per call: bounds the [batch, top_k] outputs (and the catalog-wide ones of rank_catalog)
# held at once.
DEFAULT_BATCH_SIZE = 256


def padded_histories(histories: Sequence[Sequence[str]]) -> tf.Tensor:
  """[len(histories), longest] string tensor, each history padded with '' at the end."""
  lists = [list(history) for history in histories]
  width = max(map(len, lists), default=0)
  return tf.constant([history + [""] * (width - len(history)) for history in lists], tf.string,
                     shape=[len(lists), width])


class RankingSignature:
  """One ranking signature of a SavedModel, called in batches with raw ids."""

  def __init__(self, model_dir: os.PathLike, signature_name: str = signature.SERVING_SIGNATURE,
               batch_size: int = DEFAULT_BATCH_SIZE):
    self.model_dir = os.fspath(model_dir)
    # The loaded object owns the variables the signature reads: keep it alive with it.
    self._model = tf.saved_model.load(self.model_dir)
    if signature_name not in self._model.signatures:
      raise ValueError(f"the SavedModel at {self.model_dir} has no signature {signature_name!r}; "
                       f"it has {sorted(self._model.signatures.keys())}")
    self._signature = self._model.signatures[signature_name]
    self.signature_name = signature_name
    self._batch_size = batch_size

  def __call__(self, users: Sequence[str],
               histories: Sequence[Sequence[str]]) -> Dict[str, np.ndarray]:
    """The signature's outputs as arrays for one batch of (user, history) queries."""
    if len(users) != len(histories):
      raise ValueError(f"{len(users)} users but {len(histories)} histories")
    outputs = self._signature(**{
        signature.USER_ID: tf.constant(list(users), tf.string, shape=[len(users)]),
        signature.HISTORY: padded_histories(histories)})
    return {name: value.numpy() for name, value in outputs.items()}

  def rank_batches(self, users: Sequence[str], histories: Sequence[Sequence[str]]
                   ) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """Per batch of queries in order: (item ids [batch, returned] str, scores [batch, returned]).

    For signatures that return the whole catalog: only one batch's outputs are held at once.
    """
    if len(users) != len(histories):
      raise ValueError(f"{len(users)} users but {len(histories)} histories")
    for start in range(0, len(users), self._batch_size):
      batch = slice(start, start + self._batch_size)
      outputs = self(users[batch], histories[batch])
      yield outputs[signature.ITEM_IDS].astype(str), outputs[signature.SCORES]

  def rank(self, users: Sequence[str],
           histories: Sequence[Sequence[str]]) -> Tuple[np.ndarray, np.ndarray]:
    """(item ids [n, returned] str, scores [n, returned]) for each (user, history) pair."""
    batches = list(self.rank_batches(users, histories))
    if not batches:
      return np.empty((0, 0), str), np.empty((0, 0), np.float32)
    item_ids, scores = zip(*batches)
    return np.concatenate(item_ids), np.concatenate(scores)
