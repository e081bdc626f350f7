"""TFX Trainer entry point: `run_fn` trains the two-tower model, then the DQN ranking head on its
towers, and exports both as one serving graph."""
import dataclasses
import hashlib
import pathlib
from typing import Dict, List, NamedTuple

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
from absl import logging
from tensorflow_metadata.proto.v0 import schema_pb2
from tfx import v1 as tfx
from tfx.utils import io_utils
from tfx_bsl.public import tfxio

from components import export
from components import features
from components import histories
from components import model as model_lib
from components import preprocessing
from components import ranker
from serving import warmup

MODEL_CONFIG_KEY = "model_config"
CODE_VERSION_KEY = "code_version"
# Raw fields the models read beside the transformed ones.
_RAW_FIELDS = (features.CLICK, features.PURCHASE, features.REVENUE, features.DONE, features.EVENT)
_READ_BATCH = 1024
# Transitions are read in file order, a user's together; this mixes users within a batch.
_SHUFFLE_BUFFER = 50_000
# Ids the warmup requests use: the most frequent users and items (vocabularies are by frequency).
_WARMUP_USERS = 8
_WARMUP_ITEMS = 10
_MODEL_CODE_PACKAGES = ("components", "serving")
_RETRIEVAL_INPUTS = (model_lib.USER_XF, model_lib.ITEM_XF, model_lib.CATEGORY_XF,
                     model_lib.PRICE_BUCKET_XF, model_lib.TITLE_TOKENS_XF, model_lib.HISTORY_XF,
                     model_lib.HOUR_OF_WEEK_XF, features.EVENT)


class CatalogFeatures(NamedTuple):
  """Per item index (vocabulary plus OOV), what the training transitions say about it."""
  categories: np.ndarray  # int64 category index
  price_buckets: np.ndarray  # int64 price bucket
  title_tokens: np.ndarray  # int64 [items, TITLE_LENGTH] title word indices, PADDING-padded
  engagement_share: np.ndarray  # float, sums to 1 over the items engaged with


def code_version() -> str:
  """Hash of the model code, passed in custom_config so that editing it defeats the cache.

  Transform and Trainer name their code by module path, which TFX does not fingerprint. The
  export also writes the serving contract and warmup requests (serving/), so that counts too.
  """
  digest = hashlib.sha256()
  repo_root = pathlib.Path(__file__).resolve().parent.parent
  for package in _MODEL_CODE_PACKAGES:
    for path in sorted((repo_root / package).rglob("*.py")):
      digest.update(path.relative_to(repo_root).as_posix().encode())
      digest.update(path.read_bytes())
  return digest.hexdigest()[:16]


def custom_config(config: model_lib.ModelConfig) -> dict:
  return {MODEL_CONFIG_KEY: dataclasses.asdict(config), CODE_VERSION_KEY: code_version()}


def distribution_strategy() -> tf.distribute.Strategy:
  """MirroredStrategy over the visible GPUs when there are any, else the default strategy."""
  if tf.config.list_logical_devices("GPU"):
    return tf.distribute.MirroredStrategy()
  return tf.distribute.get_strategy()


def transitions_dataset(fn_args: tfx.components.FnArgs, files,
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
  title_tokens = np.full((num_items, features.TITLE_LENGTH), preprocessing.PADDING, np.int64)
  engagements = np.zeros(num_items)
  for batch in transitions.batch(_READ_BATCH):
    items = batch[model_lib.ITEM_XF].numpy()
    categories[items] = batch[model_lib.CATEGORY_XF].numpy()
    price_buckets[items] = batch[model_lib.PRICE_BUCKET_XF].numpy()
    title_tokens[items] = batch[model_lib.TITLE_TOKENS_XF].numpy()
    engagements += np.bincount(items, weights=batch[features.CLICK].numpy(), minlength=num_items)
  return CatalogFeatures(categories, price_buckets, title_tokens,
                         engagements / max(engagements.sum(), 1.0))


def engagements(transitions: tf.data.Dataset) -> Dict[str, np.ndarray]:
  """The retrieval task's inputs, one row per engaged transition, as arrays (one pass).

  In memory because each epoch draws new sampled histories for them (components/histories.py).
  """
  columns = {key: [] for key in _RETRIEVAL_INPUTS}
  for batch in transitions.filter(lambda transition: transition[features.CLICK] > 0).batch(
      _READ_BATCH):
    for key in _RETRIEVAL_INPUTS:
      columns[key].append(batch[key].numpy())
  return {key: np.concatenate(values) for key, values in columns.items()}


def train_retrieval(retrieval: model_lib.TwoTowerModel, inputs: Dict[str, np.ndarray],
                    config: model_lib.ModelConfig) -> List[float]:
  """Fits the two-tower model (with new sampled histories each epoch when sampled); the losses."""
  inputs = dict(inputs)
  mode = histories.resolve_mode(config.retrieval_history, inputs.pop(features.EVENT))
  logging.info("Retrieval examples train with %s histories", mode)
  rng = np.random.default_rng(config.seed)
  if mode == histories.SAMPLED:
    # A sampled history has no "before", and a rating's time is when the user filled in ratings,
    # not when they asked for a recommendation: no request context. Learnt anyway, the hour
    # singles out a user's rating sessions (nDCG@10 on MovieLens 0.307 -> 0.289).
    inputs[model_lib.HOUR_OF_WEEK_XF] = np.full_like(inputs[model_lib.HOUR_OF_WEEK_XF],
                                                     preprocessing.PADDING)
  losses = []
  for epoch in range(config.epochs):
    epoch_inputs = dict(inputs)
    if mode == histories.SAMPLED:
      epoch_inputs[model_lib.HISTORY_XF] = histories.sampled_user_histories(
          inputs[model_lib.USER_XF], inputs[model_lib.ITEM_XF], features.HISTORY_LENGTH, rng)
    dataset = tf.data.Dataset.from_tensor_slices(epoch_inputs).shuffle(
        _SHUFFLE_BUFFER, seed=config.seed + epoch).batch(config.batch_size)
    history = retrieval.fit(dataset, initial_epoch=epoch, epochs=epoch + 1, verbose=2)
    losses += history.history["loss"]
  return losses


def run_fn(fn_args: tfx.components.FnArgs) -> None:
  config = model_lib.ModelConfig.from_dict(fn_args.custom_config[MODEL_CONFIG_KEY])
  tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
  # In-vocabulary items only: the OOV bucket is not a recommendable item.
  item_ids = np.array(tf_transform_output.vocabulary_by_name(features.ITEM_ID), dtype=object)
  num_items = preprocessing.vocabulary_size(tf_transform_output, features.ITEM_ID)
  num_categories = preprocessing.vocabulary_size(tf_transform_output, features.CATEGORY)

  transitions = transitions_dataset(fn_args, fn_args.train_files, tf_transform_output).cache()
  items = catalog(transitions, num_items)
  strategy = distribution_strategy()
  logging.info("Training with %s", type(strategy).__name__)

  with strategy.scope():
    retrieval = model_lib.TwoTowerModel(
        num_users=preprocessing.vocabulary_size(tf_transform_output, features.USER_ID),
        num_items=num_items, num_categories=num_categories,
        num_price_buckets=preprocessing.NUM_PRICE_BUCKETS,
        num_title_words=preprocessing.vocabulary_size(tf_transform_output, features.TITLE_TOKENS),
        config=config,
        item_probability=items.engagement_share)
    retrieval.compile(optimizer=tf.keras.optimizers.Adagrad(config.learning_rate))
  logging.info("Retrieval loss per epoch: %s",
               train_retrieval(retrieval, engagements(transitions), config))

  in_vocabulary = np.arange(len(item_ids))
  catalog_actions = ranker.Catalog(
      retrieval.candidate_tower({
          model_lib.ITEM_XF: tf.constant(in_vocabulary),
          model_lib.CATEGORY_XF: tf.constant(items.categories[in_vocabulary]),
          model_lib.PRICE_BUCKET_XF: tf.constant(items.price_buckets[in_vocabulary]),
          model_lib.TITLE_TOKENS_XF: tf.constant(items.title_tokens[in_vocabulary]),
      }).numpy(),
      items.categories[in_vocabulary], items.price_buckets[in_vocabulary])
  with strategy.scope():
    dqn = ranker.DQNRanker(retrieval.query_tower, catalog_actions,
                           ranker.item_novelty(items.engagement_share), num_categories,
                           preprocessing.NUM_PRICE_BUCKETS, config.ranker)
    dqn.build_networks(config.embedding_dim)
    dqn.compile(optimizer=tf.keras.optimizers.Adam(config.ranker.learning_rate))
  history = dqn.fit(transitions.shuffle(_SHUFFLE_BUFFER).batch(config.ranker.batch_size),
                    epochs=config.ranker.epochs, verbose=2)
  logging.info("DQN TD loss per epoch: %s, CQL penalty: %s", history.history["td_loss"],
               history.history["cql_penalty"])

  module = export.RecommenderModule(
      tf_transform_output.transform_features_layer(), retrieval.query_tower, dqn.q_network,
      catalog_actions, item_ids.astype(bytes), config.top_k, config.ranker)
  export.save(module, fn_args.serving_model_dir)
  # Replayed by TF Serving (and the local server) on load, and sent by infra validation.
  users = tf_transform_output.vocabulary_by_name(features.USER_ID)[:_WARMUP_USERS]
  warmup.write(fn_args.serving_model_dir, warmup.representative_requests(
      [user.decode() for user in users], [item.decode() for item in item_ids[:_WARMUP_ITEMS]]))
  logging.info("Exported the serving model to %s", fn_args.serving_model_dir)
