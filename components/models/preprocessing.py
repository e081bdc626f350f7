"""tf.Transform preprocessing: id vocabularies, price buckets, title words, the hour of the week and
fixed-length histories.

Transform runs this once over the training split of the session transitions on Beam (every item
shown, not only the engaged ones, so every item shown is recommendable) to compute the
vocabularies and price quantiles, and the same graph is embedded in the serving SavedModel, so
training and serving map ids identically.
"""
import tensorflow as tf
import tensorflow_transform as tft

from schemas import contract

# Ids unseen in training map to one shared out-of-vocabulary index, right after the vocabulary.
NUM_OOV_BUCKETS = 1
# Index written into history slots that hold no item and title slots that hold no word.
PADDING = -1
# Title words kept: ample for a catalog's titles, and bounds the candidate tower's word table.
MAX_TITLE_WORDS = 50_000
# Quantile buckets of price: about as many as shoppers tell apart (budget ... premium).
NUM_PRICE_BUCKETS = 10


def vocabulary_size(tf_transform_output: tft.TFTransformOutput, key: str) -> int:
  """Number of embedding rows an id feature needs: its vocabulary plus the OOV bucket."""
  return tf_transform_output.vocabulary_size_by_name(key) + NUM_OOV_BUCKETS


def _last_items(history: tf.SparseTensor, length: int) -> tf.Tensor:
  """The `length` most recent items of each history, left-aligned and padded with ''.

  Callers may send longer histories than training used; the most recent items are the ones that
  predict the next item, so the oldest are dropped.
  """
  ragged = tf.RaggedTensor.from_sparse(history)
  return ragged[:, -length:].to_tensor(default_value="", shape=[None, length])


def _title_words(title: tf.SparseTensor) -> tf.RaggedTensor:
  """Each title's first TITLE_LENGTH words: lower-cased runs of letters and digits.

  Punctuation splits words, so "Star Wars: Episode IV (1977)" gives star, wars, episode, iv,
  1977, and the year alone ties films of one era together. An item without a title has none.
  """
  # [batch, 0 or 1] -> [batch]: '' where the transition has no title.
  text = tf.strings.reduce_join(tf.sparse.to_dense(title, default_value=""), axis=1)
  text = tf.strings.regex_replace(tf.strings.lower(text, encoding="utf-8"), r"[^\pL\pN]+", " ")
  return tf.strings.split(text)[:, :contract.TITLE_LENGTH]


def _hour_of_week(timestamp: tf.Tensor) -> tf.Tensor:
  """contract.HOUR_OF_WEEK of Unix timestamps; PADDING where the time is unknown (<= 0)."""
  return tf.where(timestamp > 0, contract.hour_of_week(timestamp),
                  tf.constant(PADDING, tf.int64))


def _indices(values: tf.Tensor, vocabulary) -> tf.Tensor:
  """Vocabulary indices of a padded string tensor, PADDING where the string is ''."""
  indices = tft.apply_vocabulary(values, vocabulary, num_oov_buckets=NUM_OOV_BUCKETS)
  return tf.where(tf.equal(values, ""), tf.constant(PADDING, tf.int64), indices)


def preprocessing_fn(inputs):
  """Maps raw transitions to vocabulary indices and buckets.

  Args:
    inputs: raw features; scalars as [batch] tensors, `history`, `next_history` and the optional
      `title` as [batch, None] SparseTensors. At serving time only `user_id`, `history` and
      `timestamp` (the request's time) are given, and Transform prunes the outputs that need the
      rest.

  Returns:
    `user_id_xf`, `item_id_xf`, `category_xf`, `price_bucket_xf` (in [0, NUM_PRICE_BUCKETS)),
    `hour_of_week_xf` (in [0, HOURS_PER_WEEK) or PADDING) as int64 [batch]; `history_xf` and
    `next_history_xf` as int64 [batch, HISTORY_LENGTH] and `title_tokens_xf` as int64
    [batch, TITLE_LENGTH], with PADDING in empty slots.
  """
  item_vocabulary = tft.vocabulary(inputs[contract.ITEM_ID], vocab_filename=contract.ITEM_ID)

  outputs = {
      contract.transformed_name(contract.USER_ID): tft.compute_and_apply_vocabulary(
          inputs[contract.USER_ID], vocab_filename=contract.USER_ID,
          num_oov_buckets=NUM_OOV_BUCKETS),
      contract.transformed_name(contract.CATEGORY): tft.compute_and_apply_vocabulary(
          inputs[contract.CATEGORY], vocab_filename=contract.CATEGORY,
          num_oov_buckets=NUM_OOV_BUCKETS),
      contract.transformed_name(contract.ITEM_ID): tft.apply_vocabulary(
          inputs[contract.ITEM_ID], item_vocabulary, num_oov_buckets=NUM_OOV_BUCKETS),
      contract.transformed_name(contract.PRICE_BUCKET): tft.bucketize(
          inputs[contract.PRICE], NUM_PRICE_BUCKETS),
      contract.transformed_name(contract.HOUR_OF_WEEK): _hour_of_week(
          inputs[contract.TIMESTAMP]),
  }
  for key in (contract.HISTORY, contract.NEXT_HISTORY):
    outputs[contract.transformed_name(key)] = _indices(
        _last_items(inputs[key], contract.HISTORY_LENGTH), item_vocabulary)
  words = _title_words(inputs[contract.TITLE])
  outputs[contract.transformed_name(contract.TITLE_TOKENS)] = _indices(
      words.to_tensor(default_value="", shape=[None, contract.TITLE_LENGTH]),
      tft.vocabulary(words, top_k=MAX_TITLE_WORDS, vocab_filename=contract.TITLE_TOKENS))
  return outputs
