"""The Trainer's helpers: the catalog and the retrieval inputs read from the transitions,
retrieval training, and the distribution strategy."""
import numpy as np
import pytest
import tensorflow as tf

from components.models import training
from components.models import two_tower
from components.models.config import ModelConfig
from schemas import contract


def _title(*words):
  return list(words) + [-1] * (contract.TITLE_LENGTH - len(words))


def test_catalog_reads_each_items_features_and_engagement_share():
  transitions = tf.data.Dataset.from_tensor_slices({
      two_tower.ITEM_XF: tf.constant([0, 2, 2, 1, 2], tf.int64),
      two_tower.CATEGORY_XF: tf.constant([1, 0, 0, 1, 0], tf.int64),
      two_tower.PRICE_BUCKET_XF: tf.constant([3, 5, 5, 4, 5], tf.int64),
      two_tower.TITLE_TOKENS_XF: tf.constant(
          [_title(7, 8), _title(2), _title(2), _title(), _title(2)], tf.int64),
      contract.CLICK: tf.constant([1, 1, 0, 0, 1], tf.int64),
  })
  catalog = training.catalog(transitions, num_items=4)
  np.testing.assert_array_equal(catalog.categories, [1, 1, 0, 0])
  np.testing.assert_array_equal(catalog.price_buckets, [3, 4, 5, 0])
  # Item 1 has no title and item 3 never appears: both all padding, TITLE_LENGTH wide.
  np.testing.assert_array_equal(catalog.title_tokens, [_title(7, 8), _title(), _title(2), _title()])
  # Three engagements: item 0 once, item 2 twice; item 1 was only shown.
  np.testing.assert_allclose(catalog.engagement_share, [1 / 3, 0.0, 2 / 3, 0.0])


def _engagement_inputs(events):
  n = len(events)
  rng = np.random.default_rng(0)
  return {
      two_tower.USER_XF: np.repeat(np.arange(4), n // 4),
      two_tower.ITEM_XF: np.concatenate([rng.permutation(10)[:n // 4] for _ in range(4)]),
      two_tower.CATEGORY_XF: np.zeros(n, np.int64),
      two_tower.PRICE_BUCKET_XF: np.zeros(n, np.int64),
      two_tower.TITLE_TOKENS_XF: np.full((n, contract.TITLE_LENGTH), -1, np.int64),
      two_tower.HISTORY_XF: np.full((n, contract.HISTORY_LENGTH), -1, np.int64),
      two_tower.HOUR_OF_WEEK_XF: np.full(n, 5, np.int64),
      contract.EVENT: np.array(events, dtype=object),
  }


def test_engagements_keep_the_clicked_transitions_retrieval_reads():
  inputs = _engagement_inputs([b"click"] * 4)
  transitions = tf.data.Dataset.from_tensor_slices(
      dict(inputs, **{contract.CLICK: np.array([1, 0, 1, 0])}))
  kept = training.engagements(transitions)
  assert set(kept) == set(inputs)
  np.testing.assert_array_equal(kept[two_tower.ITEM_XF], inputs[two_tower.ITEM_XF][[0, 2]])
  np.testing.assert_array_equal(kept[contract.EVENT], [b"click", b"click"])


@pytest.mark.parametrize("events, sampled", [([b"rating"] * 40, True), ([b"click"] * 40, False)])
def test_retrieval_trains_on_sampled_histories_for_ratings_only(events, sampled, monkeypatch):
  inputs = _engagement_inputs(events)
  model = two_tower.TwoTowerModel(4, 10, 1, 1, 1, ModelConfig(embedding_dim=4, epochs=2))
  model.compile(optimizer=tf.keras.optimizers.Adagrad(0.1))
  seen, hours = [], []
  fit = model.fit
  def recording_fit(dataset, **kwargs):
    seen.append(np.concatenate([batch[two_tower.HISTORY_XF].numpy() for batch in dataset]))
    hours.append(np.concatenate([batch[two_tower.HOUR_OF_WEEK_XF].numpy() for batch in dataset]))
    return fit(dataset, **kwargs)
  monkeypatch.setattr(model, "fit", recording_fit)
  losses = training.train_retrieval(model, inputs, ModelConfig(epochs=2))
  assert len(losses) == len(seen) == 2
  assert all(np.isfinite(losses))
  assert (contract.EVENT in inputs)  # the caller's inputs are left as they were
  assert (inputs[two_tower.HOUR_OF_WEEK_XF] == 5).all()
  # A rating's time is no request context: sampled-history training hides the hour.
  assert all((epoch_hours == (-1 if sampled else 5)).all() for epoch_hours in hours)
  if sampled:
    # Every user engaged with 10 distinct items: each history holds the 9 others, in an order
    # drawn anew each epoch.
    for histories in seen:
      assert (histories[:, :9] != -1).all() and (histories[:, 9] == -1).all()
    assert sorted(map(tuple, seen[0])) != sorted(map(tuple, seen[1]))
  else:
    assert (seen[0] == -1).all() and (seen[1] == -1).all()


@pytest.mark.skipif(bool(tf.config.list_logical_devices("GPU")), reason="a machine with GPUs")
def test_cpu_machines_train_with_the_default_strategy():
  strategy = training.distribution_strategy()
  assert not isinstance(strategy, tf.distribute.MirroredStrategy)
  assert strategy is tf.distribute.get_strategy()
