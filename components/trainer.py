"""TFX Trainer entry point: `run_fn` trains the two-tower model and exports the serving graph."""
import dataclasses
import hashlib
import pathlib
from typing import Tuple

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
from absl import logging
from tfx import v1 as tfx
from tfx_bsl.public import tfxio

from components import export
from components import features
from components import model as model_lib
from components import preprocessing

MODEL_CONFIG_KEY = "model_config"
CODE_VERSION_KEY = "code_version"


def code_version() -> str:
  """Hash of this package's source, passed in custom_config so that editing it defeats the cache.

  Transform and Trainer name their code by module path, which TFX does not fingerprint.
  """
  digest = hashlib.sha256()
  package_dir = pathlib.Path(__file__).resolve().parent
  for path in sorted(package_dir.rglob("*.py")):
    digest.update(path.relative_to(package_dir).as_posix().encode())
    digest.update(path.read_bytes())
  return digest.hexdigest()[:16]


def custom_config(config: model_lib.ModelConfig) -> dict:
  return {MODEL_CONFIG_KEY: dataclasses.asdict(config), CODE_VERSION_KEY: code_version()}


def _dataset(fn_args: tfx.components.FnArgs, files, schema, batch_size: int,
             num_epochs=None) -> tf.data.Dataset:
  return fn_args.data_accessor.tf_dataset_factory(
      files, tfxio.TensorFlowDatasetOptions(batch_size=batch_size, num_epochs=num_epochs),
      schema)


def catalog(dataset: tf.data.Dataset, num_items: int) -> Tuple[np.ndarray, np.ndarray]:
  """Each item index's category and share of the examples in `dataset` (one pass).

  The candidate tower needs an item's features to embed it, and the training events carry them;
  the shares are the in-batch sampling probabilities the loss corrects for.
  """
  categories = np.zeros(num_items, dtype=np.int64)
  counts = np.zeros(num_items)
  for batch in dataset:
    items = batch[model_lib.ITEM_XF].numpy()
    categories[items] = batch[model_lib.CATEGORY_XF].numpy()
    counts += np.bincount(items, minlength=num_items)
  return categories, counts / max(counts.sum(), 1.0)


def run_fn(fn_args: tfx.components.FnArgs) -> None:
  config = model_lib.ModelConfig(**fn_args.custom_config[MODEL_CONFIG_KEY])
  tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
  schema = tf_transform_output.transformed_metadata.schema
  # In-vocabulary items only: the OOV bucket is not a recommendable item.
  item_ids = np.array(tf_transform_output.vocabulary_by_name(features.ITEM_ID), dtype=object)

  train = _dataset(fn_args, fn_args.train_files, schema, config.batch_size, num_epochs=1).cache()
  num_items = preprocessing.vocabulary_size(tf_transform_output, features.ITEM_ID)
  categories, item_probability = catalog(train, num_items)
  model = model_lib.TwoTowerModel(
      num_users=preprocessing.vocabulary_size(tf_transform_output, features.USER_ID),
      num_items=num_items,
      num_categories=preprocessing.vocabulary_size(tf_transform_output, features.CATEGORY),
      config=config, item_probability=item_probability)
  model.compile(optimizer=tf.keras.optimizers.Adagrad(config.learning_rate))
  history = model.fit(train, epochs=config.epochs, verbose=2)
  logging.info("Training loss per epoch: %s", history.history["loss"])

  candidate_embeddings = model.candidate_tower({
      model_lib.ITEM_XF: tf.range(len(item_ids), dtype=tf.int64),
      model_lib.CATEGORY_XF: tf.constant(categories[:len(item_ids)]),
  }).numpy()
  module = export.RecommenderModule(
      tf_transform_output.transform_features_layer(), model.query_tower, candidate_embeddings,
      item_ids.astype(bytes), config.top_k)
  export.save(module, fn_args.serving_model_dir)
  logging.info("Exported the serving model to %s", fn_args.serving_model_dir)
