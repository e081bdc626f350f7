"""Queries to the ranking signatures: many (user, history, time) queries at once, in process or
over gRPC.

Offline users of a SavedModel (batch recommendations, evaluation) ask the same questions as the
online service, many at a time. This module is the one place that turns Python ids into the
signature's [batch] user, [batch, width] history and [batch] timestamp tensors: histories are
oldest first and padded with '' at the end, as serving clients send them and the model was
trained on; a query without a time gets contract.UNKNOWN_TIME.
"""
import os
from typing import Dict, Iterator, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

from schemas import contract

# Every signature's input_signature, in the contract's order (schemas/contract.py).
INPUT_SPECS = tuple(tf.TensorSpec(shape, tf.dtypes.as_dtype(dtype), name=name)
                    for name, dtype, shape in contract.SIGNATURE_INPUTS)
# Queries per call: bounds the [batch, top_k] outputs (and the catalog-wide ones of rank_catalog)
# held at once.
DEFAULT_BATCH_SIZE = 256


def padded_histories(histories: Sequence[Sequence[str]],
                     width: Optional[int] = None) -> tf.Tensor:
  """[len(histories), width] string tensor, each history padded with '' at the end.

  `width` defaults to the longest history's length; a history longer than `width` is an error.
  """
  lists = [list(history) for history in histories]
  longest = max(map(len, lists), default=0)
  if width is None:
    width = longest
  elif longest > width:
    raise ValueError(f"a history of {longest} items does not fit the width {width}")
  return tf.constant([history + [""] * (width - len(history)) for history in lists], tf.string,
                     shape=[len(lists), width])


def query_times(timestamps: Optional[Sequence[int]], count: int) -> tf.Tensor:
  """[count] int64 timestamps; all contract.UNKNOWN_TIME when `timestamps` is None."""
  if timestamps is None:
    return tf.fill([count], tf.constant(contract.UNKNOWN_TIME, tf.int64))
  if len(timestamps) != count:
    raise ValueError(f"got {count} queries but {len(timestamps)} timestamps")
  return tf.constant(np.asarray(timestamps, dtype=np.int64), shape=[count])


def predict_request(user_ids: Sequence[str], histories: Sequence[Sequence[str]],
                    model_name: str = contract.DEFAULT_MODEL_NAME,
                    signature_name: str = contract.SERVING_SIGNATURE,
                    history_width: Optional[int] = None,
                    timestamps: Optional[Sequence[int]] = None) -> predict_pb2.PredictRequest:
  """The same queries as one TF Serving Predict request, as clients send them over gRPC.

  Online clients pass `history_width` (contract.HISTORY_LENGTH): TF Serving's batching merges
  concurrent requests only if their inputs have the same shape beyond the batch dimension.
  `timestamps` (seconds since the epoch) say when each query is asked; None sends
  contract.UNKNOWN_TIME.
  """
  if len(user_ids) != len(histories):
    raise ValueError(f"got {len(user_ids)} user ids but {len(histories)} histories")
  request = predict_pb2.PredictRequest()
  request.model_spec.name = model_name
  request.model_spec.signature_name = signature_name
  request.inputs[contract.USER_ID].CopyFrom(
      tf.make_tensor_proto(list(user_ids), dtype=tf.string, shape=[len(user_ids)]))
  request.inputs[contract.HISTORY].CopyFrom(
      tf.make_tensor_proto(padded_histories(histories, history_width)))
  request.inputs[contract.TIMESTAMP].CopyFrom(
      tf.make_tensor_proto(query_times(timestamps, len(user_ids))))
  return request


class RankingSignature:
  """One ranking signature of a SavedModel, called in batches with raw ids."""

  def __init__(self, model_dir: os.PathLike, signature_name: str = contract.SERVING_SIGNATURE,
               batch_size: int = DEFAULT_BATCH_SIZE,
               extra_inputs: Optional[Dict[str, tf.Tensor]] = None):
    """`extra_inputs`: the signature's inputs beyond the contract's three, the same for every
    call (e.g. ADAPTED_RANK_SIGNATURE's contract.ADAPT_STEPS)."""
    self.model_dir = os.fspath(model_dir)
    self._extra_inputs = dict(extra_inputs or {})
    # The loaded object owns the variables the signature reads: keep it alive with it.
    self._model = tf.saved_model.load(self.model_dir)
    if signature_name not in self._model.signatures:
      raise ValueError(f"the SavedModel at {self.model_dir} has no signature {signature_name!r}; "
                       f"it has {sorted(self._model.signatures.keys())}")
    self._signature = self._model.signatures[signature_name]
    self.signature_name = signature_name
    self._batch_size = batch_size

  @property
  def saved_model(self):
    """The loaded SavedModel: its variables are the signature's, so assigning one (e.g. the
    ranking head's `q_network.objective_weights`) changes what the signature answers."""
    return self._model

  def __call__(self, users: Sequence[str], histories: Sequence[Sequence[str]],
               timestamps: Optional[Sequence[int]] = None) -> Dict[str, np.ndarray]:
    """The signature's outputs as arrays for one batch of (user, history, time) queries.

    `timestamps`: when each query is asked; None for unknown (contract.UNKNOWN_TIME).
    """
    if len(users) != len(histories):
      raise ValueError(f"{len(users)} users but {len(histories)} histories")
    outputs = self._signature(**{
        contract.USER_ID: tf.constant(list(users), tf.string, shape=[len(users)]),
        contract.HISTORY: padded_histories(histories),
        contract.TIMESTAMP: query_times(timestamps, len(users)), **self._extra_inputs})
    return {name: value.numpy() for name, value in outputs.items()}

  def rank_batches(self, users: Sequence[str], histories: Sequence[Sequence[str]],
                   timestamps: Optional[Sequence[int]] = None
                   ) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """Per batch of queries in order: (item ids [batch, returned] str, scores [batch, returned]).

    For signatures that return the whole catalog: only one batch's outputs are held at once.
    """
    if len(users) != len(histories):
      raise ValueError(f"{len(users)} users but {len(histories)} histories")
    for start in range(0, len(users), self._batch_size):
      batch = slice(start, start + self._batch_size)
      outputs = self(users[batch], histories[batch],
                     None if timestamps is None else timestamps[batch])
      yield outputs[contract.ITEM_IDS].astype(str), outputs[contract.SCORES]

  def rank(self, users: Sequence[str], histories: Sequence[Sequence[str]],
           timestamps: Optional[Sequence[int]] = None) -> Tuple[np.ndarray, np.ndarray]:
    """(item ids [n, returned] str, scores [n, returned]) for each (user, history, time) query."""
    batches = list(self.rank_batches(users, histories, timestamps))
    if not batches:
      return np.empty((0, 0), str), np.empty((0, 0), np.float32)
    item_ids, scores = zip(*batches)
    return np.concatenate(item_ids), np.concatenate(scores)
