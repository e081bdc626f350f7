"""The Trainer's helpers: the catalog and the retrieval inputs read from the transitions,
retrieval training, and the distribution strategy."""
import logging

import numpy as np
import pytest
import tensorflow as tf

from components.models import training
from components.models import two_tower
from components.models.config import ModelConfig
from components.models.config import NO_COLD_START
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
      contract.TIMESTAMP: np.arange(n, dtype=np.int64),
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
  # Without a catalog, so without cold-start meta-training (test_cold_start.py tests that).
  config = ModelConfig(embedding_dim=4, epochs=2, cold_start=NO_COLD_START)
  model = two_tower.TwoTowerModel(4, 10, 1, 1, 1, config)
  model.compile(optimizer=tf.keras.optimizers.Adagrad(0.1))
  seen, hours = [], []
  fit = model.fit
  def recording_fit(dataset, **kwargs):
    seen.append(np.concatenate([batch[two_tower.HISTORY_XF].numpy() for batch in dataset]))
    hours.append(np.concatenate([batch[two_tower.HOUR_OF_WEEK_XF].numpy() for batch in dataset]))
    return fit(dataset, **kwargs)
  monkeypatch.setattr(model, "fit", recording_fit)
  validated = []
  def recording_recall(_, epoch_inputs, rows, batch_size):
    validated.append(epoch_inputs[two_tower.HISTORY_XF][rows])
    return 0.5
  monkeypatch.setattr(training, "validation_recall", recording_recall)
  losses = training.train_retrieval(model, inputs, config)
  assert len(losses) == len(seen) == 2
  assert np.isfinite(losses).all()
  # A tenth of the rows is held out for validation; the fit sees the rest.
  assert [len(epoch_histories) for epoch_histories in seen] == [36, 36]
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
    # The validation rows keep their first draw: epochs are compared on the same queries.
    assert validated[0].tobytes() == validated[1].tobytes()
  else:
    assert (seen[0] == -1).all() and (seen[1] == -1).all()


def test_the_datasets_keras_fits_on_are_not_autotuned(monkeypatch):
  # Deleting an autotuned iterator waits for its tuning thread's next wake-up: up to 8 s after
  # each retrieval epoch on ml-latest-small.
  assert tf.data.Dataset.range(3).options().autotune.enabled is None  # TensorFlow's default: on
  config = ModelConfig(embedding_dim=4, epochs=2, cold_start=NO_COLD_START)
  model = two_tower.TwoTowerModel(4, 10, 1, 1, 1, config)
  model.compile(optimizer=tf.keras.optimizers.Adam(0.05))
  autotuned = []
  fit = model.fit
  def recording_fit(dataset, **kwargs):
    autotuned.append(dataset.options().autotune.enabled)
    return fit(dataset, **kwargs)
  monkeypatch.setattr(model, "fit", recording_fit)
  monkeypatch.setattr(training, "validation_recall", lambda *_: 0.5)
  training.train_retrieval(model, _engagement_inputs([b"click"] * 40), config)
  assert autotuned == [False, False]
  dqn_dataset = training.dqn_fit_dataset(tf.data.Dataset.range(10), 4)
  assert dqn_dataset.options().autotune.enabled is False
  batches = list(dqn_dataset.as_numpy_iterator())
  assert [len(batch) for batch in batches] == [4, 4, 2]
  assert sorted(np.concatenate(batches)) == list(range(10))


def test_impressions_without_an_engagement_are_what_the_dqn_head_learns_from():
  def transitions(clicks):
    return tf.data.Dataset.from_tensor_slices({contract.CLICK: tf.constant(clicks, tf.int64)})
  assert training.has_unengaged_impressions(transitions([1, 0, 1]))
  # Ratings data: every logged action was engaged with.
  assert not training.has_unengaged_impressions(transitions([1, 1, 1]))


def test_validation_rows_are_a_random_held_out_share():
  fit_rows, validation_rows = training.split_validation(100, 0.1, np.random.default_rng(0))
  assert len(validation_rows) == 10 and len(fit_rows) == 90
  assert sorted(np.concatenate([fit_rows, validation_rows])) == list(range(100))
  assert list(validation_rows) != list(range(90, 100))  # drawn, not the last rows
  # A tiny dataset still gets one validation row and keeps one to fit on; 0 holds none out.
  assert [len(rows) for rows in training.split_validation(2, 0.1, np.random.default_rng(0))
          ] == [1, 1]
  assert len(training.split_validation(50, 0.0, np.random.default_rng(0))[1]) == 0


def test_the_dqn_head_is_validated_on_held_out_users_whole():
  users = np.repeat(np.arange(400), 3)
  transitions = tf.data.Dataset.from_tensor_slices({
      contract.USER_ID: np.char.add("u", users.astype(str)), "step": np.arange(len(users))})
  fit, validation = (np.array([t["step"] for t in split.as_numpy_iterator()])
                     for split in training.split_users(transitions, 0.2))
  assert sorted(np.concatenate([fit, validation])) == list(range(len(users)))
  # Every transition of a held-out user is held out, none of a fitted one.
  assert not set(users[fit]) & set(users[validation])
  assert 0.12 < len(set(users[validation])) / 400 < 0.28
  # A hash, not the first or the last users; and the same users each time.
  held_out_users = sorted(set(users[validation]))
  assert held_out_users != list(range(len(held_out_users)))
  assert held_out_users != list(range(400 - len(held_out_users), 400))
  again = [t["step"] for t in training.split_users(transitions, 0.2)[1].as_numpy_iterator()]
  assert list(validation) == again
  assert not list(training.split_users(transitions, 0.0)[1].as_numpy_iterator())
  # The same users are found from their raw ids alone, outside the Trainer.
  held_out = training.is_validation_user(tf.constant([f"u{user}" for user in range(400)]), 0.2)
  assert set(np.flatnonzero(held_out.numpy())) == set(users[validation])


def _recording_fits(model, monkeypatch, validation_recalls):
  """Makes the validation recall follow `validation_recalls` and records the weights after each
  epoch's fit."""
  weights = []
  fit = model.fit
  def recording_fit(dataset, **kwargs):
    history = fit(dataset, **kwargs)
    weights.append(model.get_weights())
    return history
  monkeypatch.setattr(model, "fit", recording_fit)
  recalls = iter(validation_recalls)
  monkeypatch.setattr(training, "validation_recall", lambda *_: next(recalls))
  return weights


def test_retrieval_stops_when_validation_recall_stalls_and_keeps_the_best_epoch(monkeypatch):
  inputs = _engagement_inputs([b"click"] * 40)
  config = ModelConfig(embedding_dim=4, epochs=10, early_stopping_patience=2,
                       cold_start=NO_COLD_START)
  model = two_tower.TwoTowerModel(4, 10, 1, 1, 1, config)
  model.compile(optimizer=tf.keras.optimizers.Adam(0.05))
  weights = _recording_fits(model, monkeypatch, [0.1, 0.3, 0.2, 0.3, 0.9])
  progress = training.train_retrieval(model, inputs, config)
  # Epochs 3 and 4 do not beat epoch 2 (a tie is no improvement): training stops after 4.
  assert [recall for _, recall in progress] == [0.1, 0.3, 0.2, 0.3]
  assert len(weights) == 4
  for kept, best in zip(model.get_weights(), weights[1]):
    np.testing.assert_array_equal(kept, best)
  assert any(not np.array_equal(kept, last) for kept, last in zip(model.get_weights(),
                                                                   weights[3]))


def test_retrieval_without_a_validation_split_runs_every_epoch(monkeypatch):
  inputs = _engagement_inputs([b"click"] * 40)
  config = ModelConfig(embedding_dim=4, epochs=3, validation_fraction=0.0,
                       cold_start=NO_COLD_START)
  model = two_tower.TwoTowerModel(4, 10, 1, 1, 1, config)
  model.compile(optimizer=tf.keras.optimizers.Adam(0.05))
  weights = _recording_fits(model, monkeypatch, [])
  progress = training.train_retrieval(model, inputs, config)
  assert len(weights) == len(progress) == 3
  assert all(np.isnan(recall) for _, recall in progress)
  for kept, last in zip(model.get_weights(), weights[-1]):
    np.testing.assert_array_equal(kept, last)


def test_validation_recall_ranks_each_row_among_the_engaged_items_without_the_users_others():
  rng = np.random.default_rng(1)
  n_users, per_user, n_items = 8, 5, 40
  n = n_users * per_user
  items = np.concatenate([rng.permutation(n_items)[:per_user] for _ in range(n_users)])
  inputs = {
      two_tower.USER_XF: np.repeat(np.arange(n_users), per_user),
      two_tower.ITEM_XF: items,
      # An item's features are its own: the category is the item's index mod 3.
      two_tower.CATEGORY_XF: items % 3,
      two_tower.PRICE_BUCKET_XF: np.zeros(n, np.int64),
      two_tower.TITLE_TOKENS_XF: np.full((n, contract.TITLE_LENGTH), -1, np.int64),
      two_tower.HISTORY_XF: rng.integers(-1, n_items, (n, contract.HISTORY_LENGTH)),
      two_tower.HOUR_OF_WEEK_XF: np.full(n, 5, np.int64),
  }
  model = two_tower.TwoTowerModel(n_users, n_items, 3, 1, 1, ModelConfig(embedding_dim=4))
  rows = np.arange(0, n, 3)
  # By hand: every engaged item scored for each row's query, the user's other items removed.
  engaged = np.unique(items)
  catalog = model.candidate_tower({
      two_tower.ITEM_XF: tf.constant(engaged), two_tower.CATEGORY_XF: tf.constant(engaged % 3),
      two_tower.PRICE_BUCKET_XF: tf.zeros(len(engaged), tf.int64),
      two_tower.TITLE_TOKENS_XF: tf.fill([len(engaged), contract.TITLE_LENGTH],
                                         tf.constant(-1, tf.int64))}).numpy()
  hits = []
  for row in rows:
    query = model.query_tower({key: tf.constant(inputs[key][[row]])
                               for key in two_tower.QUERY_INPUTS}).numpy()[0]
    scores = dict(zip(engaged, catalog @ query))
    user, own = inputs[two_tower.USER_XF][row], items[row]
    others = set(items[inputs[two_tower.USER_XF] == user]) - {own}
    rank = sum(score > scores[own] for item, score in scores.items() if item not in others)
    hits.append(rank < training.VALIDATION_K)
  # Not trivially all or nothing: an untrained model ranks some rows in the top 10 of ~30.
  assert 0 < np.mean(hits) < 1
  for batch_size in (len(rows), 4):
    assert training.validation_recall(model, inputs, rows, batch_size) == pytest.approx(
        np.mean(hits))


def test_the_devices_and_the_strategy_used_are_logged(caplog):
  with caplog.at_level(logging.INFO, logger="absl"):
    strategy = training.distribution_strategy()
  (message,) = [record.getMessage() for record in caplog.records
                if "training with" in record.getMessage()]
  for device in tf.config.list_physical_devices():
    assert device.name in message
  gpus = tf.config.list_logical_devices("GPU")
  if gpus:  # one replica per GPU
    assert isinstance(strategy, tf.distribute.MirroredStrategy)
    assert f"training with MirroredStrategy over {len(gpus)} replica(s)" in message
  else:
    assert strategy is tf.distribute.get_strategy()
    assert f"training with {type(strategy).__name__} over 1 replica(s)" in message
    assert "/physical_device:CPU:0" in message
