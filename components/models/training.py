"""What the Trainer does between reading SessionBuilder's transitions and fitting the models.

The transitions are read once, transformed by the Transform graph (the same layer the serving
graph holds) and cached; the catalog's item features and the retrieval task's engagements come
out of them, and `train_retrieval` fits the two-tower model on those (components/models/trainer.py
runs it all).
"""
import collections
import logging as python_logging
from typing import Dict, List, Mapping, NamedTuple, Tuple

from absl import logging
import numpy as np
from scipy import sparse
import tensorflow as tf
from tensorflow_metadata.proto.v0 import schema_pb2
import tensorflow_transform as tft
from tfx.components.trainer import fn_args_utils
from tfx.utils import io_utils
from tfx_bsl.public import tfxio

from components.models import cold_start
from components.models import histories
from components.models import preprocessing
from components.models import ranker
from components.models import two_tower
from components.models.config import GRADIENT_COLD_START
from components.models.config import ModelConfig
from components.models.config import NO_COLD_START
from components.models.config import OBJECTIVES
from components.models.config import SAMPLED_HISTORY
from schemas import contract

# Raw fields the models read beside the transformed ones.
_RAW_FIELDS = (contract.USER_ID, contract.CLICK, contract.PURCHASE, contract.REVENUE,
               contract.DONE, contract.RETURNED, contract.STEP_ENGAGEMENTS, contract.EVENT,
               contract.TIMESTAMP)
_READ_BATCH = 1024
# The cut-off of the validation recall early stopping watches: the gate's recall@10.
VALIDATION_K = 10
# Transitions are read in file order, a user's together; this mixes users within a batch.
SHUFFLE_BUFFER = 50_000
_EPOCH_LOGGER = python_logging.getLogger(__name__)
_RETRIEVAL_INPUTS = (two_tower.USER_XF, two_tower.ITEM_XF, two_tower.CATEGORY_XF,
                     two_tower.PRICE_BUCKET_XF, two_tower.TITLE_TOKENS_XF, two_tower.HISTORY_XF,
                     two_tower.HOUR_OF_WEEK_XF, contract.EVENT, contract.TIMESTAMP)


def without_autotuning(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """`dataset` with tf.data's autotuning off: for the datasets Keras fits on, which it iterates
  anew each epoch.

  An autotuned iterator runs an optimisation thread that sleeps between rounds for doubling
  periods, and deleting the iterator waits for that thread (py-spy: the main thread in
  `RootDataset::Iterator`'s destructor). On ml-latest-small the retrieval model's epochs of
  11-15 s ended exactly 20.5 s after they began (the sleeps from 10 ms doubled ten times, summed)
  in four to nine of ten epochs, 33-52 s of a training. `num_parallel_calls=AUTOTUNE` still
  works without it, as one call per core.
  """
  options = tf.data.Options()
  options.autotune.enabled = False
  return dataset.with_options(options)


def dqn_fit_dataset(transitions: tf.data.Dataset, batch_size: int) -> tf.data.Dataset:
  """What the DQN head is fitted on, from its transitions with states (`DQNRanker.with_states`):
  cached, so that the states and the user filter are computed in the first epoch only, and
  shuffled across users."""
  return without_autotuning(transitions.cache().shuffle(SHUFFLE_BUFFER).batch(batch_size))


class EpochLog(tf.keras.callbacks.Callback):
  """Logs each finished epoch as one record whose `model`, `epoch`, `epochs` and `loss`
  attributes say where training is: the command line shows them as a progress bar
  (pipeline/run_output.py), and any other orchestrator keeps them in its logs."""

  def __init__(self, model_name: str, epochs: int, loss_key: str = "loss"):
    super().__init__()
    self._model_name = model_name
    self._epochs = epochs
    self._loss_key = loss_key

  def on_epoch_end(self, epoch, logs=None):
    loss = float((logs or {}).get(self._loss_key, float("nan")))
    _EPOCH_LOGGER.info("%s epoch %d/%d, %s %.4f", self._model_name, epoch + 1, self._epochs,
                       self._loss_key, loss, extra={"model": self._model_name,
                                                    "epoch": epoch + 1, "epochs": self._epochs,
                                                    "loss": loss})


# Written into the Trainer's model run directory: the DQN head's losses on held-out transitions.
HEAD_EVALUATION_FILE = "head_evaluation.json"


def held_out_losses(heads: Mapping[str, ranker.DQNRanker], transitions: tf.data.Dataset,
                    targets_from: ranker.DQNRanker) -> Dict[str, Dict[str, float]]:
  """How well each of `heads` fits held-out transitions, by name; one pass over them.

  `click_loss`: the click model's cross-entropy over every transition. On the clicked ones,
  whose consumed value the head learns, against the Bellman targets of `targets_from`, its
  target network valuing the next states as in its training loss: `td_error`, the mean squared
  residual (target - Q)^2, and `relative_td_error`, that divided by the targets' variance, 1 or
  more for a head that predicts no better than a constant. Judged on one head's targets, a
  trained head and an untrained one answer the same question; each on its own, the trained
  head's targets carry the future's variance and the untrained head's a constant's.
  `bellman_residual`: the mean squared residual against the head's own targets, its online
  network valuing the next states, whatever its target network lags. Q and the targets are the
  combined ones (sum_i w_i Q_i, each head's weights), what ranks; `agent_td_errors` is each
  agent's td_error on its own reward.
  """
  # Traced once for batches of any size: each trace of the heads' graphs takes seconds.
  @tf.function(input_signature=[transitions.element_spec])
  def batch_terms(batch):
    judged = {name: head.transition_terms(batch, bootstrap=True) for name, head in heads.items()}
    return targets_from.transition_terms(batch)["targets"], {
        name: {key: terms[key] for key in ("clicked", "click_logits", "targets", "values")}
        for name, terms in judged.items()}

  targets, columns = [], {name: collections.defaultdict(list) for name in heads}
  for batch in transitions:
    batch_targets, judged = batch_terms(batch)
    targets.append(batch_targets.numpy())
    for name, terms in judged.items():
      for key, values in terms.items():
        columns[name][key].append(values.numpy())
  targets = np.concatenate(targets) if targets else np.zeros((0, len(OBJECTIVES)))
  return {name: _losses(heads[name].q_network.objective_weights.numpy(), targets,
                        columns[name]) for name in heads}


def _losses(weights: np.ndarray, targets: np.ndarray,
            columns: Mapping[str, List[np.ndarray]]) -> Dict[str, float]:
  """`held_out_losses`' figures of one head from its per-batch terms."""
  def column(key, empty_shape):
    return np.concatenate(columns[key]) if columns[key] else np.zeros(empty_shape)

  clicked, logits = column("clicked", 0), column("click_logits", 0)
  own_targets, values = (column(key, (0, len(OBJECTIVES))) for key in ("targets", "values"))
  engaged = clicked > 0
  agents_targets, agents_values = targets[engaged], values[engaged]
  # The combined value, what ranks, against the combined target: the weighted reward's.
  targets, own_targets, values = (array[engaged] @ weights
                                  for array in (targets, own_targets, values))
  # NaN where there is nothing to average (no transitions, or none clicked), not a made-up 0.
  def mean(values_):
    return float(np.mean(values_)) if len(values_) else float("nan")
  click_loss = mean(tf.nn.sigmoid_cross_entropy_with_logits(clicked, logits).numpy())
  td_error = mean((targets - values) ** 2)
  return {"click_loss": click_loss, "td_error": td_error,
          "relative_td_error": td_error / max(mean((targets - mean(targets)) ** 2), 1e-12),
          "bellman_residual": mean((own_targets - values) ** 2),
          "agent_td_errors": {name: mean((agents_targets[:, i] - agents_values[:, i]) ** 2)
                              for i, name in enumerate(OBJECTIVES)},
          "clicked_transitions": int(engaged.sum())}


def is_validation_user(user_ids: tf.Tensor, fraction: float) -> tf.Tensor:
  """Whether each raw user id is among the about `fraction` of users the ranking head is not
  fitted to, by a hash of the id: the Trainer holds their transitions out (`split_users`), and
  a later stage can find the same users from the raw examples alone."""
  return ranker.hashed_user_share(user_ids, fraction)


def split_users(transitions: tf.data.Dataset,
                fraction: float) -> Tuple[tf.data.Dataset, tf.data.Dataset]:
  """(fit, validation): the transitions of the validation users (`is_validation_user`) held
  out of the fit.

  By user, not by transition: a user's transitions chain into each other (one's next state is
  the next one's state), so a random share of transitions would judge the head on states whose
  neighbours it was fitted to.
  """
  def held_out(transition):
    return is_validation_user(transition[contract.USER_ID], fraction)

  return (transitions.filter(lambda transition: tf.logical_not(held_out(transition))),
          transitions.filter(held_out))


class CatalogFeatures(NamedTuple):
  """Per item index (vocabulary plus OOV), what the training transitions say about it."""
  categories: np.ndarray  # int64 category index
  price_buckets: np.ndarray  # int64 price bucket
  title_tokens: np.ndarray  # int64 [items, TITLE_LENGTH] title word indices, PADDING-padded
  engagement_share: np.ndarray  # float, sums to 1 over the items engaged with


def distribution_strategy() -> tf.distribute.Strategy:
  """MirroredStrategy over the visible GPUs when there are any, else the default strategy.

  Logs the devices TensorFlow sees and the strategy chosen with its replicas: a GPU pod whose
  CUDA libraries did not load trains on the CPU without an error, and only this line says so.
  """
  if tf.config.list_logical_devices("GPU"):
    strategy = tf.distribute.MirroredStrategy()
    replicas = list(strategy.extended.worker_devices)
  else:
    strategy = tf.distribute.get_strategy()
    replicas = ["the default device"]
  logging.info("Physical devices: %s; training with %s over %d replica(s): %s",
               [device.name for device in tf.config.list_physical_devices()],
               type(strategy).__name__, strategy.num_replicas_in_sync, replicas)
  return strategy


def transitions_dataset(fn_args: fn_args_utils.FnArgs, files,
                        tf_transform_output: tft.TFTransformOutput) -> tf.data.Dataset:
  """The transitions in `files`, transformed, one at a time, with their reward fields and event
  type.

  The Trainer reads SessionBuilder's raw transitions and applies the Transform graph itself (the
  same layer the serving graph holds): both models learn from this one dataset, the two-tower
  model from its engagements, the DQN head from all of it.
  """
  raw_schema = io_utils.parse_pbtxt_file(fn_args.schema_path, schema_pb2.Schema())
  raw = fn_args.data_accessor.tf_dataset_factory(
      files, tfxio.TensorFlowDatasetOptions(batch_size=_READ_BATCH, num_epochs=1), raw_schema)
  tft_layer = tf_transform_output.transform_features_layer()

  def transform(raw_batch):
    transformed = tft_layer(raw_batch)
    transformed.update({key: raw_batch[key] for key in _RAW_FIELDS})
    # The slot is optional (logs without slates have none): 0, the top slot, where missing.
    transformed[contract.POSITION] = tf.sparse.reduce_sum(raw_batch[contract.POSITION], axis=1)
    return transformed

  return raw.map(transform, num_parallel_calls=tf.data.AUTOTUNE).unbatch()


def catalog(transitions: tf.data.Dataset, num_items: int) -> CatalogFeatures:
  """Each item index's category, price bucket, title words and share of the engagements (one
  pass).

  The candidate tower and the DQN head need an item's features to score it, and the logged
  transitions carry them; the engagement shares are the in-batch sampling probabilities the
  retrieval loss corrects for.
  """
  categories = np.zeros(num_items, dtype=np.int64)
  price_buckets = np.zeros(num_items, dtype=np.int64)
  title_tokens = np.full((num_items, contract.TITLE_LENGTH), preprocessing.PADDING, np.int64)
  engagements = np.zeros(num_items)
  for batch in transitions.batch(_READ_BATCH):
    items = batch[two_tower.ITEM_XF].numpy()
    categories[items] = batch[two_tower.CATEGORY_XF].numpy()
    price_buckets[items] = batch[two_tower.PRICE_BUCKET_XF].numpy()
    title_tokens[items] = batch[two_tower.TITLE_TOKENS_XF].numpy()
    engagements += np.bincount(items, weights=batch[contract.CLICK].numpy(), minlength=num_items)
  return CatalogFeatures(categories, price_buckets, title_tokens,
                         engagements / max(engagements.sum(), 1.0))


def has_unengaged_impressions(transitions: tf.data.Dataset) -> bool:
  """Whether any transition shows an item the user did not engage with: without one, every
  reward the DQN head could learn from is the same."""
  unengaged = transitions.filter(lambda transition: transition[contract.CLICK] == 0)
  return any(True for _ in unengaged.take(1))


def engagements(transitions: tf.data.Dataset) -> Dict[str, np.ndarray]:
  """The retrieval task's inputs, one row per engaged transition, as arrays (one pass).

  In memory because each epoch draws new sampled histories for them
  (components/models/histories.py).
  """
  columns = {key: [] for key in _RETRIEVAL_INPUTS}
  for batch in transitions.filter(lambda transition: transition[contract.CLICK] > 0).batch(
      _READ_BATCH):
    for key in _RETRIEVAL_INPUTS:
      columns[key].append(batch[key].numpy())
  return {key: np.concatenate(values) for key, values in columns.items()}


def split_validation(num_rows: int, fraction: float,
                     rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
  """(fit rows, validation rows): a random `fraction` of the rows held out, at least one row
  and never all of them when fraction > 0; none when it is 0."""
  held_out = int(round(num_rows * fraction))
  if fraction > 0.0:
    held_out = min(max(held_out, 1), num_rows - 1)
  order = rng.permutation(num_rows)
  return np.sort(order[held_out:]), np.sort(order[:held_out])


def validation_recall(retrieval: two_tower.TwoTowerModel, inputs: Dict[str, np.ndarray],
                      rows: np.ndarray, batch_size: int) -> float:
  """Recall@VALIDATION_K of the engagements `rows` of `inputs`: the share whose item is among
  the top VALIDATION_K of every engaged item for its query, the user's other engaged items
  removed, as the evaluator removes seen items.

  What early stopping watches. The loss is not it: on ml-latest-small the full softmax's
  validation loss bottoms out at about epoch 5 while the ranking keeps improving to about 10
  (README, Validation).
  """
  items, first = np.unique(inputs[two_tower.ITEM_XF], return_index=True)
  candidates = retrieval.candidate_tower(
      {key: tf.constant(inputs[key][first]) for key in two_tower.CANDIDATE_INPUTS}).numpy()
  columns = np.searchsorted(items, inputs[two_tower.ITEM_XF])
  users = inputs[two_tower.USER_XF]
  engaged = sparse.csr_matrix((np.ones(len(users), bool), (users, columns)),
                              shape=(users.max() + 1, len(items)))
  hits = 0
  for start in range(0, len(rows), batch_size):
    batch = rows[start:start + batch_size]
    queries = retrieval.query_tower({key: tf.constant(inputs[key][batch])
                                     for key in two_tower.QUERY_INPUTS}).numpy()
    scores = queries @ candidates.T
    own = scores[np.arange(len(batch)), columns[batch]]
    others = engaged[users[batch]].toarray()
    others[np.arange(len(batch)), columns[batch]] = False
    scores[others] = -np.inf
    hits += int(((scores > own[:, None]).sum(axis=1) < VALIDATION_K).sum())
  return hits / max(len(rows), 1)


def train_retrieval(retrieval: two_tower.TwoTowerModel, inputs: Dict[str, np.ndarray],
                    config: ModelConfig) -> List[Tuple[float, float]]:
  """Fits the two-tower model (with new sampled histories each epoch when sampled), stopping
  early on the validation recall (`validation_recall`) and keeping the best epoch's weights;
  (training loss, validation recall) per epoch run (recall NaN without a validation split).

  After each epoch's fit, unless `config.cold_start` is off, one pass of cold-start
  meta-training over new episodes of the fit rows' users (components/models/cold_start.py).
  """
  inputs = dict(inputs)
  mode = histories.resolve_mode(config.retrieval_history, inputs.pop(contract.EVENT))
  timestamps = inputs.pop(contract.TIMESTAMP)
  logging.info("Retrieval examples train with %s histories, a %s softmax", mode,
               retrieval.negatives)
  rng = np.random.default_rng(config.seed)
  if mode == SAMPLED_HISTORY:
    # A sampled history has no "before", and a rating's time is when the user filled in ratings,
    # not when they asked for a recommendation: no request context. Learnt anyway, the hour
    # singles out a user's rating sessions (nDCG@10 on MovieLens 0.307 -> 0.289).
    inputs[two_tower.HOUR_OF_WEEK_XF] = np.full_like(inputs[two_tower.HOUR_OF_WEEK_XF],
                                                     preprocessing.PADDING)
  fit_rows, validation_rows = split_validation(len(inputs[two_tower.ITEM_XF]),
                                               config.validation_fraction, rng)
  meta_learner = None
  if config.cold_start != NO_COLD_START:
    if not retrieval.catalog_size:
      raise ValueError(f"cold_start={config.cold_start!r} needs the two-tower model's catalog")
    meta_learner = cold_start.MetaLearner(
        retrieval, config.adapt_steps if config.cold_start == GRADIENT_COLD_START else 0,
        config.adapt_learning_rate)
    # Items outside the catalog (the OOV bucket) cannot be ranked, so they are no query target.
    episode_rows = fit_rows[inputs[two_tower.ITEM_XF][fit_rows] < retrieval.catalog_size]
  progress = []
  best_recall, best_weights, stale_epochs = -np.inf, None, 0
  validation_histories = None
  for epoch in range(config.epochs):
    epoch_inputs = dict(inputs)
    if mode == SAMPLED_HISTORY:
      # Drawn from all the user's engagements, the held-out ones too: a validation row's history
      # is the user's other items, as it would be at serving time. The validation rows keep
      # their first draw, so that epochs are compared on the same queries.
      epoch_histories = histories.sampled_user_histories(
          inputs[two_tower.USER_XF], inputs[two_tower.ITEM_XF], contract.HISTORY_LENGTH, rng)
      if validation_histories is None:
        validation_histories = epoch_histories[validation_rows]
      epoch_histories[validation_rows] = validation_histories
      epoch_inputs[two_tower.HISTORY_XF] = epoch_histories
    fit_dataset = without_autotuning(tf.data.Dataset.from_tensor_slices(
        {key: values[fit_rows] for key, values in epoch_inputs.items()}).shuffle(
            SHUFFLE_BUFFER, seed=config.seed + epoch).batch(config.batch_size))
    history = retrieval.fit(fit_dataset, initial_epoch=epoch, epochs=epoch + 1, verbose=0,
                            callbacks=[EpochLog("retrieval", config.epochs)])
    if meta_learner is not None:
      episodes = cold_start.user_episodes(
          inputs[two_tower.USER_XF][episode_rows], inputs[two_tower.ITEM_XF][episode_rows],
          timestamps[episode_rows], config.cold_start_episodes, rng)
      logging.info("Cold-start epoch %d: query loss %.4f per episode", epoch + 1,
                   meta_learner.train(episodes, rng))
    recall = np.nan
    if len(validation_rows):
      recall = validation_recall(retrieval, epoch_inputs, validation_rows, config.batch_size)
    progress.append((history.history["loss"][0], recall))
    logging.info("Retrieval epoch %d: loss %.4f, validation recall@%d %.4f", epoch + 1,
                 progress[-1][0], VALIDATION_K, recall)
    if not len(validation_rows):
      continue
    if recall > best_recall:
      best_recall, best_weights, stale_epochs = recall, retrieval.get_weights(), 0
      continue
    stale_epochs += 1
    if stale_epochs >= config.early_stopping_patience:
      logging.info("Validation recall has not improved for %d epochs: stopping", stale_epochs)
      break
  if best_weights is not None:
    retrieval.set_weights(best_weights)
  return progress
