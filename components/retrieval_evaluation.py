"""Offline evaluation of the serving model: next-item recall@K on held-out events.

The evaluation calls the exported `serving_default` signature with raw ids, so what is measured is
exactly what TF Serving will answer, Transform graph included.
"""
import dataclasses
import glob
import os
from typing import Iterator

import numpy as np
import tensorflow as tf

from components import features
from serving import signature

_EVAL_FEATURES = {
    features.USER_ID: tf.io.FixedLenFeature([], tf.string),
    features.ITEM_ID: tf.io.FixedLenFeature([], tf.string),
    features.HISTORY: tf.io.VarLenFeature(tf.string),
}


def read_events(split_dir: str, batch_size: int = 1024) -> Iterator[dict]:
  """Batches of (user_id, padded history, item_id) from an ExampleGen split directory."""
  files = sorted(glob.glob(os.path.join(split_dir, "*.gz")))
  if not files:
    raise FileNotFoundError(f"No example files (*.gz) in {split_dir}")
  dataset = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(batch_size).map(
      lambda records: tf.io.parse_example(records, _EVAL_FEATURES))
  for batch in dataset:
    yield {
        features.USER_ID: batch[features.USER_ID],
        features.ITEM_ID: batch[features.ITEM_ID],
        features.HISTORY: tf.sparse.to_dense(batch[features.HISTORY], default_value=""),
    }


def recall_at_k(serving_model_dir: str, events: Iterator[dict], k: int) -> dict:
  """Share of events whose item is among the model's top-k for the user and history before it.

  With one held-out item per event this is also the hit rate. Returns the metric and the event
  count, which a reader needs to judge it.
  """
  serve = tf.saved_model.load(serving_model_dir).signatures[signature.SERVING_SIGNATURE]
  hits, count = 0, 0
  for batch in events:
    top = serve(user_id=batch[features.USER_ID], history=batch[features.HISTORY])
    if top[signature.ITEM_IDS].shape[1] < k:
      raise ValueError(f"The model returns {top[signature.ITEM_IDS].shape[1]} items; "
                       f"recall@{k} needs at least {k}")
    top_k = top[signature.ITEM_IDS][:, :k].numpy()
    hits += int(np.sum(np.any(top_k == batch[features.ITEM_ID].numpy()[:, None], axis=1)))
    count += top_k.shape[0]
  if count == 0:
    raise ValueError("The evaluation split holds no events")
  return {f"recall@{k}": hits / count, "num_events": count}


@dataclasses.dataclass(frozen=True)
class Verdict:
  blessed: bool
  reason: str


def judge_recall(metrics: dict, k: int, floor: float) -> Verdict:
  """Blesses a model whose recall@k reaches the floor, and says why in one line either way."""
  recall = metrics[f"recall@{k}"]
  if recall >= floor:
    return Verdict(True, f"recall@{k} = {recall:.4f} meets the floor {floor:.4f}")
  return Verdict(False, f"recall@{k} = {recall:.4f} is below the floor {floor:.4f} "
                        f"by {floor - recall:.4f}")
