"""The offline cold-start job: new users' adapted vectors stored in a new model version.

For users the model was not trained on, their first interactions adapt the unknown user's
vector by gradient steps (components/models/cold_start.py; the model's `adapt` function), and
the vectors are stored in the serving graph's adapted-user table (`set_adapted_users`). The
result is a new SavedModel version: TF Serving (or the local server) picks it up like any other,
and then serves those users from their adapted vectors with nothing but their id. Users the
model already knows are left as they are. The version is written to a temporary directory next
to the output and renamed into place, so a watching server never loads half a model.
"""
import os
import pathlib
import shutil
from typing import Dict, List, Sequence

import numpy as np
import tensorflow as tf

from components.models import queries
from schemas import contract

# Files of a SavedModel that tf.saved_model.save does not write: the warmup requests.
_EXTRA_ASSETS = "assets.extra"


def adapted_vectors(model, users: Sequence[str], histories: Sequence[Sequence[str]],
                    steps: int, batch_size: int = queries.DEFAULT_BATCH_SIZE):
  """(the unknown ones of `users`, their adapted vectors [n, dim]) from a loaded model."""
  kept, vectors = [], []
  for start in range(0, len(users), batch_size):
    batch = slice(start, start + batch_size)
    outputs = model.adapt(
        tf.constant(list(users[batch]), tf.string), queries.padded_histories(histories[batch]),
        queries.query_times(None, len(users[batch])), tf.constant(steps, tf.int32))
    unknown = ~outputs["known"].numpy()
    kept.extend(np.asarray(users[batch], dtype=object)[unknown])
    vectors.append(outputs["vectors"].numpy()[unknown])
  dimension = model.adapted_vectors.shape[1]
  return kept, (np.concatenate(vectors) if vectors else np.zeros((0, dimension), np.float32))


def write_adapted_version(model_dir: os.PathLike, output_dir: os.PathLike,
                          histories: Dict[str, List[str]], steps: int,
                          history_length: int = contract.HISTORY_LENGTH) -> int:
  """Writes `model_dir` with the adapted vectors of the unknown users of `histories` (user ->
  items in time order) to `output_dir`; how many users were stored.

  The stored users replace the model's earlier ones, so a job gives every new user of its input
  a vector and drops those no longer in it.
  """
  model_dir, output_dir = pathlib.Path(model_dir), pathlib.Path(output_dir)
  if output_dir.exists():
    raise FileExistsError(f"{output_dir} exists: a model version is never overwritten")
  if steps < 1:
    raise ValueError(f"steps must be at least 1, got {steps}")
  model = tf.saved_model.load(str(model_dir))
  if not hasattr(model, "set_adapted_users"):
    raise ValueError(f"the SavedModel at {model_dir} has no adapted-user table (exported before "
                     "cold-start adaptation)")
  users = sorted(histories)
  stored, vectors = adapted_vectors(model, users,
                                    [histories[user][-history_length:] for user in users], steps)
  model.set_adapted_users(tf.constant(stored, tf.string, shape=[len(stored)]),
                          tf.constant(vectors, tf.float32))
  partial = output_dir.with_name(f".{output_dir.name}.partial")
  shutil.rmtree(partial, ignore_errors=True)
  tf.saved_model.save(model, str(partial), signatures=dict(model.signatures))
  if (model_dir / _EXTRA_ASSETS).is_dir():
    shutil.copytree(model_dir / _EXTRA_ASSETS, partial / _EXTRA_ASSETS)
  partial.rename(output_dir)
  return len(stored)
