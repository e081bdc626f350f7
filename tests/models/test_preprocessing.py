"""Transform's preprocessing_fn on Beam, against hand-computed vocabulary indices."""
import tempfile

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam
from tensorflow_transform.tf_metadata import dataset_metadata

from components.data import validation as data_validation
from components.models import preprocessing
import schemas
from schemas import contract

TUESDAY_22H = 1_700_000_000  # 2023-11-14 22:13:20 UTC


def _transition(user, item, history, category="c1", price=1.0, title=(), timestamp=TUESDAY_22H):
  return {
      contract.USER_ID: user, contract.ITEM_ID: item, contract.TIMESTAMP: timestamp,
      contract.EVENT: "view", contract.RATING: 0.0, contract.PRICE: price,
      contract.CATEGORY: category, contract.SESSION: f"{user}/0", contract.HISTORY: history,
      contract.CLICK: 1, contract.PURCHASE: 0, contract.REVENUE: 0.0,
      contract.NEXT_HISTORY: history + [item], contract.DONE: 0, contract.RETURNED: 0,
      contract.STEP_ENGAGEMENTS: 1,
      contract.POSITION: [], contract.PROPENSITY: [], contract.TITLE: list(title),
  }


@pytest.fixture(scope="module")
def transformed():
  raw = [
      _transition("u1", "a", [], price=1.0, title=["Star Wars: Episode IV (1977)"]),
      _transition("u1", "b", ["a"], price=100.0,
                  title=["Wars of the ÉPOQUE, a b c d e f g h (1977)"],
                  timestamp=TUESDAY_22H + 2 * 3600),  # Wednesday, 0h
      _transition("u2", "a", [], category="c2", price=1.0, title=["Star Wars: Episode IV (1977)"]),
      # Longer than HISTORY_LENGTH: keep the newest. No title.
      _transition("u2", "c", ["a"] + ["b"] * (contract.HISTORY_LENGTH + 2), price=100.0,
                  timestamp=0),
  ]
  metadata = dataset_metadata.DatasetMetadata(
      data_validation.load_schema(schemas.TRANSITIONS_SCHEMA_PATH))
  with tempfile.TemporaryDirectory() as temp_dir, tft_beam.Context(temp_dir=temp_dir):
    (data, _), transform_fn = (raw, metadata) | tft_beam.AnalyzeAndTransformDataset(
        preprocessing.preprocessing_fn, output_record_batches=False)
    output_dir = tempfile.mkdtemp()
    _ = transform_fn | tft_beam.WriteTransformFn(output_dir)
  return data, tft.TFTransformOutput(output_dir)


def test_vocabularies_order_ids_by_frequency(transformed):
  _, output = transformed
  # 'a' occurs twice, 'b' and 'c' once (ties broken by descending string order).
  assert output.vocabulary_by_name(contract.ITEM_ID) == [b"a", b"c", b"b"]
  assert preprocessing.vocabulary_size(output, contract.ITEM_ID) == 4  # + OOV bucket


def test_ids_become_vocabulary_indices(transformed):
  data, _ = transformed
  items = [row[contract.transformed_name(contract.ITEM_ID)] for row in data]
  assert items == [0, 2, 0, 1]


def test_history_is_padded_and_keeps_most_recent_items(transformed):
  data, _ = transformed
  history = np.array([row[contract.transformed_name(contract.HISTORY)] for row in data])
  pad = preprocessing.PADDING
  assert history.shape == (4, contract.HISTORY_LENGTH)
  assert list(history[0]) == [pad] * contract.HISTORY_LENGTH
  assert list(history[1]) == [0] + [pad] * (contract.HISTORY_LENGTH - 1)
  # HISTORY_LENGTH + 3 items in, the newest HISTORY_LENGTH out: the leading 'a' and two 'b's
  # are dropped.
  assert list(history[3]) == [2] * contract.HISTORY_LENGTH


def test_next_history_uses_the_same_vocabulary(transformed):
  data, _ = transformed
  next_history = np.array([row[contract.transformed_name(contract.NEXT_HISTORY)] for row in data])
  pad = preprocessing.PADDING
  assert list(next_history[1]) == [0, 2] + [pad] * (contract.HISTORY_LENGTH - 2)  # a, b
  # a, then b * (HISTORY_LENGTH + 2), then c: the newest are b's and the c.
  assert list(next_history[3]) == [2] * (contract.HISTORY_LENGTH - 1) + [1]


def test_prices_fall_into_ordered_buckets(transformed):
  data, _ = transformed
  buckets = [row[contract.transformed_name(contract.PRICE_BUCKET)] for row in data]
  assert all(0 <= bucket < preprocessing.NUM_PRICE_BUCKETS for bucket in buckets)
  assert buckets[0] == buckets[2] < buckets[1] == buckets[3]


def test_serving_layer_maps_unknown_ids_to_oov_and_needs_only_query_features(transformed):
  _, output = transformed
  layer = output.transform_features_layer()
  history = tf.sparse.from_dense(tf.constant([["zzz", "a"], ["", ""]]))
  result = layer({contract.USER_ID: tf.constant(["u2", "stranger"]), contract.HISTORY: history,
                  contract.TIMESTAMP: tf.constant([TUESDAY_22H, 0], tf.int64)})
  assert list(result[contract.transformed_name(contract.HOUR_OF_WEEK)].numpy()) == [
      46, preprocessing.PADDING]
  assert list(result[contract.transformed_name(contract.USER_ID)].numpy()) == [0, 2]
  history_xf = result[contract.transformed_name(contract.HISTORY)].numpy()
  assert list(history_xf[0][:2]) == [3, 0]  # unknown item -> OOV index 3
  assert (history_xf[1] == preprocessing.PADDING).all()


def test_titles_become_lower_cased_word_indices_padded_to_title_length(transformed):
  data, output = transformed
  vocabulary = [word.decode() for word in output.vocabulary_by_name(contract.TITLE_TOKENS)]
  # Words split at punctuation, lower-cased (non-ASCII too), counted per transition: 'wars' is
  # in three, the rest of the first title in two (the second title's year is cut), ties in
  # descending order.
  assert vocabulary[:5] == ["wars", "star", "iv", "episode", "1977"]
  assert "époque" in vocabulary and "(1977)" not in vocabulary
  index = {word: n for n, word in enumerate(vocabulary)}
  tokens = np.array([row[contract.transformed_name(contract.TITLE_TOKENS)] for row in data])
  pad = preprocessing.PADDING
  assert tokens.shape == (4, contract.TITLE_LENGTH)
  star_wars = [index[word] for word in ("star", "wars", "episode", "iv", "1977")]
  assert list(tokens[0]) == star_wars + [pad] * 3
  assert list(tokens[2]) == list(tokens[0])
  # Only the first TITLE_LENGTH words: the year at the end is cut.
  assert list(tokens[1]) == [index[w] for w in ("wars", "of", "the", "époque", "a", "b", "c", "d")]
  assert list(tokens[3]) == [pad] * contract.TITLE_LENGTH


def test_the_hour_of_the_week_counts_from_monday_and_zero_time_is_unknown(transformed):
  data, _ = transformed
  hours = [row[contract.transformed_name(contract.HOUR_OF_WEEK)] for row in data]
  # Tuesday 22h is hour 24 + 22; two hours later it is Wednesday 0h; timestamp 0 is unknown.
  assert hours == [46, 48, 46, preprocessing.PADDING]
