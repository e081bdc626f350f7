"""An exported SavedModel as a simulator policy, to judge its ranking on-policy.

`SavedModelPolicy` runs one signature of the serving contract (schemas/contract.py) on every
batch of slates the simulator (components/simulation/simulator.py) asks for. The simulator numbers
users and items; the model speaks the default dataset's ids ("u00042", "i00017", written by
components/simulation/generator.py), so the policy translates both ways: the context's user and
cross-session history go in as ids, and the first `slate_size` returned items come back as
numbers, with the signature's propensities, or 1.0 for a signature without them (a deterministic
ranking such as `retrieve`). The time goes in as unknown: the simulated world has no clock.
"""
import os
from typing import List, Union

import numpy as np
import pandas as pd

from components.models import queries
from components.simulation import generator
from components.simulation import simulator
from schemas import contract

# How many of the unknown ids an error lists: enough to recognise the problem.
_SHOWN_UNKNOWN_IDS = 5


class SavedModelPolicy:
  """Shows the top `slate_size` items of a SavedModel signature, best first.

  The model's own randomness, if it samples, is not drawn from the simulator's `rng`: runs with
  the same seed are reproducible only for a model that ranks deterministically.
  """

  def __init__(self, model: Union[os.PathLike, queries.RankingSignature],
               signature_name: str = contract.SERVING_SIGNATURE,
               n_items: int = generator.DEFAULT_ITEMS):
    """Loads the signature.

    Args:
      model: A SavedModel directory, e.g. a pushed version such as serving/recommender/1, or a
        signature already loaded (whose variables a caller may assign between rollouts).
      signature_name: The signature that ranks, e.g. `contract.SERVING_SIGNATURE` or
        `contract.RETRIEVE_SIGNATURE`; ignored when `model` is a loaded signature.
      n_items: The simulated world's catalog size; items are "i00000" onward. An id the model
        returns outside this catalog is an error rather than an item the simulator cannot show.
    """
    self._signature = (model if isinstance(model, queries.RankingSignature)
                       else queries.RankingSignature(model, signature_name))
    self._item_ids = generator.ids(generator.ITEM_PREFIX, np.arange(n_items))
    self._item_numbers = pd.Index(self._item_ids)

  def slate(self, context: simulator.SlateContext, rng: np.random.Generator) -> simulator.Slate:
    del rng  # The ranking is the model's; see the class docstring.
    outputs = self._signature(
        generator.ids(generator.USER_PREFIX, context.users).astype(str).tolist(),
        self._history_ids(context.history))
    returned = outputs[contract.ITEM_IDS]
    if returned.shape[1] < context.slate_size:
      raise ValueError(f"signature {self._signature.signature_name!r} returned "
                       f"{returned.shape[1]} items per user, fewer than the slate size "
                       f"{context.slate_size}")
    shown = returned[:, :context.slate_size].astype(str)
    items = self._item_numbers.get_indexer(shown.ravel()).reshape(shown.shape)
    if (items < 0).any():
      unknown = pd.unique(shown[items < 0])[:_SHOWN_UNKNOWN_IDS].tolist()
      raise ValueError(f"signature {self._signature.signature_name!r} returned ids outside the "
                       f"simulated catalog of {len(self._item_ids)} items, e.g. {unknown}")
    if contract.PROPENSITIES in outputs:
      propensities = outputs[contract.PROPENSITIES][:, :context.slate_size]
    else:
      propensities = np.ones(items.shape)
    return simulator.Slate(items=items, propensities=propensities.astype(np.float64))

  def _history_ids(self, history: np.ndarray) -> List[List[str]]:
    """The history as item ids, oldest first (the simulator pads in front with NO_ITEM)."""
    return [self._item_ids[row[row != simulator.NO_ITEM]].astype(str).tolist() for row in history]
