"""The Trainer's helpers: the catalog read from the transitions and the distribution strategy."""
import numpy as np
import pytest
import tensorflow as tf

from components import features
from components import model as model_lib
from components import trainer


def test_catalog_reads_each_items_features_and_engagement_share():
  transitions = tf.data.Dataset.from_tensor_slices({
      model_lib.ITEM_XF: tf.constant([0, 2, 2, 1, 2], tf.int64),
      model_lib.CATEGORY_XF: tf.constant([1, 0, 0, 1, 0], tf.int64),
      model_lib.PRICE_BUCKET_XF: tf.constant([3, 5, 5, 4, 5], tf.int64),
      features.CLICK: tf.constant([1, 1, 0, 0, 1], tf.int64),
  })
  catalog = trainer.catalog(transitions, num_items=4)
  np.testing.assert_array_equal(catalog.categories, [1, 1, 0, 0])
  np.testing.assert_array_equal(catalog.price_buckets, [3, 4, 5, 0])
  # Three engagements: item 0 once, item 2 twice; item 1 was only shown.
  np.testing.assert_allclose(catalog.engagement_share, [1 / 3, 0.0, 2 / 3, 0.0])


@pytest.mark.skipif(bool(tf.config.list_logical_devices("GPU")), reason="a machine with GPUs")
def test_cpu_machines_train_with_the_default_strategy():
  strategy = trainer.distribution_strategy()
  assert not isinstance(strategy, tf.distribute.MirroredStrategy)
  assert strategy is tf.distribute.get_strategy()
