"""The one place Python ids become signature tensors (components/models/queries.py).

Batch jobs, evaluation, warmup requests and online clients all build their queries here, so a
wrong pad, width, dtype or order would reach every consumer of the model at once, and quietly:
the model answers padded or misordered queries just as readily as right ones.
"""
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from components.models import queries
from schemas import contract
from tests import fake_recommender

# Wide enough that a timestamp truncated to 32 bits would change.
LATE_TIME = 4_000_000_000


class EchoModel(tf.Module):
  """Returns each query's own inputs, so a test can see which query an answer belongs to.

  item_ids: [user, first history item or '']; scores: [timestamp, history items that are not
  padding]. The outputs have a fixed width, as the contract's [batch, top_k] do.
  """

  @tf.function(input_signature=queries.INPUT_SPECS)
  def serve(self, user_id, history, timestamp):
    first = tf.concat([history, tf.fill([tf.shape(history)[0], 1], "")], axis=1)[:, 0]
    lengths = tf.reduce_sum(tf.cast(tf.not_equal(history, ""), tf.float32), axis=1)
    return {contract.ITEM_IDS: tf.stack([user_id, first], axis=1),
            contract.SCORES: tf.stack([tf.cast(timestamp, tf.float32), lengths], axis=1)}


@pytest.fixture(scope="module")
def fake_model(tmp_path_factory) -> pathlib.Path:
  return fake_recommender.save(tmp_path_factory.mktemp("fake") / "1")


@pytest.fixture(scope="module")
def echo_model(tmp_path_factory) -> pathlib.Path:
  path = tmp_path_factory.mktemp("echo") / "1"
  module = EchoModel()
  tf.saved_model.save(module, str(path), signatures={
      contract.SERVING_SIGNATURE: module.serve.get_concrete_function()})
  return path


def _fake_top_items(user: int, history: list) -> list:
  """FakeRecommender's serving_default answer, worked out by hand from its docstring."""
  start = user + sum((column + 1) * item for column, item in enumerate(history))
  return [f"i{(start + rank) % fake_recommender.N_ITEMS:05d}"
          for rank in range(fake_recommender.TOP_K)]


def test_histories_are_padded_with_empty_strings_to_the_longest():
  histories = queries.padded_histories([["a"], ("b", "c", "d"), []])

  assert histories.dtype == tf.string
  assert histories.shape == (3, 3)
  assert histories.numpy().tolist() == [[b"a", b"", b""], [b"b", b"c", b"d"], [b"", b"", b""]]


def test_histories_are_padded_to_a_given_width():
  histories = queries.padded_histories([["a", "b"], []], width=4)

  assert histories.shape == (2, 4)
  assert histories.numpy().tolist() == [[b"a", b"b", b"", b""], [b"", b"", b"", b""]]


def test_a_history_exactly_as_long_as_the_width_fits():
  histories = queries.padded_histories([["a", "b", "c"]], width=3)

  assert histories.numpy().tolist() == [[b"a", b"b", b"c"]]


def test_a_history_longer_than_the_width_is_an_error_naming_the_width():
  with pytest.raises(ValueError, match="a history of 3 items does not fit the width 2"):
    queries.padded_histories([["a"], ["a", "b", "c"]], width=2)


@pytest.mark.parametrize("histories, width, shape", [
    ([[], []], None, (2, 0)),
    ([[]], 0, (1, 0)),
    ([], None, (0, 0)),
    ([], 3, (0, 3)),
])
def test_empty_histories_keep_their_batch_and_width(histories, width, shape):
  padded = queries.padded_histories(histories, width)

  assert padded.dtype == tf.string
  assert tuple(padded.shape) == shape


def test_query_times_default_to_unknown_time():
  times = queries.query_times(None, 3)

  assert times.dtype == tf.int64
  assert times.numpy().tolist() == [contract.UNKNOWN_TIME] * 3


def test_query_times_keep_each_timestamp_as_int64():
  times = queries.query_times([1_700_000_000, LATE_TIME, contract.UNKNOWN_TIME], 3)

  assert times.dtype == tf.int64
  assert times.shape == (3,)
  assert times.numpy().tolist() == [1_700_000_000, LATE_TIME, contract.UNKNOWN_TIME]


@pytest.mark.parametrize("timestamps, count", [([1, 2], 3), ([1, 2, 3], 2), ([], 1)])
def test_a_timestamp_count_that_is_not_the_query_count_is_an_error(timestamps, count):
  with pytest.raises(ValueError, match=f"got {count} queries but {len(timestamps)} timestamps"):
    queries.query_times(timestamps, count)


def test_predict_request_addresses_the_model_and_signature():
  default = queries.predict_request(["u1"], [[]])
  named = queries.predict_request(["u1"], [[]], model_name="ranker",
                                  signature_name=contract.RETRIEVE_SIGNATURE)

  assert default.model_spec.name == contract.DEFAULT_MODEL_NAME
  assert default.model_spec.signature_name == contract.SERVING_SIGNATURE
  assert not default.model_spec.HasField("version")  # the server picks the version
  assert named.model_spec.name == "ranker"
  assert named.model_spec.signature_name == contract.RETRIEVE_SIGNATURE


def test_predict_request_holds_the_queries_as_tensor_protos():
  request = queries.predict_request(["u1", "user22"], [["i3"], ["i7", "i8"]],
                                    history_width=contract.HISTORY_LENGTH,
                                    timestamps=[1_700_000_000, LATE_TIME])

  assert set(request.inputs) == {contract.USER_ID, contract.HISTORY, contract.TIMESTAMP}
  users = request.inputs[contract.USER_ID]
  histories = request.inputs[contract.HISTORY]
  times = request.inputs[contract.TIMESTAMP]
  assert [users.dtype, histories.dtype, times.dtype] == [
      tf.string.as_datatype_enum, tf.string.as_datatype_enum, tf.int64.as_datatype_enum]
  assert [dim.size for dim in users.tensor_shape.dim] == [2]
  assert [dim.size for dim in histories.tensor_shape.dim] == [2, contract.HISTORY_LENGTH]
  assert [dim.size for dim in times.tensor_shape.dim] == [2]
  assert tf.make_ndarray(users).tolist() == [b"u1", b"user22"]
  padding = [b""] * (contract.HISTORY_LENGTH - 2)
  assert tf.make_ndarray(histories).tolist() == [[b"i3", b""] + padding,
                                                 [b"i7", b"i8"] + padding]
  assert tf.make_ndarray(times).tolist() == [1_700_000_000, LATE_TIME]


def test_predict_request_without_width_or_times_pads_to_the_longest_and_sends_unknown_time():
  request = queries.predict_request(["u1", "u2"], [["i3", "i4", "i5"], []])

  assert tf.make_ndarray(request.inputs[contract.HISTORY]).tolist() == [
      [b"i3", b"i4", b"i5"], [b"", b"", b""]]
  times = request.inputs[contract.TIMESTAMP]
  assert times.dtype == tf.int64.as_datatype_enum
  assert tf.make_ndarray(times).tolist() == [contract.UNKNOWN_TIME] * 2


def test_predict_request_with_only_empty_histories_sends_a_width_zero_history():
  request = queries.predict_request(["u1"], [[]])

  history = request.inputs[contract.HISTORY]
  assert [dim.size for dim in history.tensor_shape.dim] == [1, 0]
  assert tf.make_ndarray(history).shape == (1, 0)


@pytest.mark.parametrize("arguments, message", [
    (dict(user_ids=["u1", "u2"], histories=[[]]), "got 2 user ids but 1 histories"),
    (dict(user_ids=["u1"], histories=[["a", "b"]], history_width=1),
     "a history of 2 items does not fit the width 1"),
    (dict(user_ids=["u1"], histories=[[]], timestamps=[1, 2]), "got 1 queries but 2 timestamps"),
])
def test_predict_request_rejects_queries_it_cannot_send(arguments, message):
  with pytest.raises(ValueError, match=message):
    queries.predict_request(**arguments)


def test_ranking_signature_answers_as_the_model_ranks(fake_model):
  signature = queries.RankingSignature(fake_model)

  outputs = signature(["u00003", "u00001"], [["i00002", "i00005"], []])

  assert set(outputs) == {contract.ITEM_IDS, contract.SCORES, contract.PROPENSITIES}
  assert all(isinstance(value, np.ndarray) for value in outputs.values())
  # Oldest first, padded at the end: the second column weighs twice the first, '' nothing.
  assert outputs[contract.ITEM_IDS].astype(str).tolist() == [
      _fake_top_items(3, [2, 5]), _fake_top_items(1, [])]


def test_ranking_signature_calls_the_signature_it_is_given(fake_model):
  retrieve = queries.RankingSignature(fake_model, contract.RETRIEVE_SIGNATURE)

  item_ids, _ = retrieve.rank(["u00003"], [["i00002", "i00005"]])

  assert retrieve.signature_name == contract.RETRIEVE_SIGNATURE
  assert item_ids.tolist() == [_fake_top_items(3, [])]  # retrieve ignores the history


def test_ranking_signature_names_the_signatures_a_model_has_when_one_is_missing(fake_model):
  with pytest.raises(ValueError, match=r"has no signature 'nope'; it has \['broken', 'retrieve', "
                                       r"'serving_default'\]"):
    queries.RankingSignature(fake_model, "nope")


def test_rank_in_batches_gives_the_answers_of_one_call_in_query_order(fake_model):
  users = [f"u{user:05d}" for user in range(7)]
  # Different lengths, so each batch is padded to its own width.
  histories = [[f"i{item:05d}" for item in range(user % 4)] for user in range(7)]
  batched = queries.RankingSignature(fake_model, batch_size=3)

  batches = list(batched.rank_batches(users, histories))
  item_ids, scores = batched.rank(users, histories)
  one_call = queries.RankingSignature(fake_model, batch_size=100)(users, histories)

  assert [len(batch_ids) for batch_ids, _ in batches] == [3, 3, 1]
  assert item_ids.dtype.kind == "U"
  np.testing.assert_array_equal(item_ids, one_call[contract.ITEM_IDS].astype(str))
  np.testing.assert_array_equal(scores, one_call[contract.SCORES])
  assert item_ids.tolist() == [
      _fake_top_items(user, list(range(user % 4))) for user in range(7)]


def test_rank_in_batches_gives_each_query_its_own_timestamp(echo_model):
  users = [f"u{user}" for user in range(5)]
  histories = [["i0"], [], ["i2", "i2"], ["i3"], []]
  timestamps = [100 + user for user in range(5)]
  signature = queries.RankingSignature(echo_model, batch_size=2)

  item_ids, scores = signature.rank(users, histories, timestamps)
  _, unknown_time_scores = signature.rank(users, histories)

  assert item_ids.tolist() == [["u0", "i0"], ["u1", ""], ["u2", "i2"], ["u3", "i3"], ["u4", ""]]
  assert scores.tolist() == [[100, 1], [101, 0], [102, 2], [103, 1], [104, 0]]
  assert unknown_time_scores[:, 0].tolist() == [contract.UNKNOWN_TIME] * 5


def test_rank_without_queries_gives_empty_arrays(fake_model):
  item_ids, scores = queries.RankingSignature(fake_model).rank([], [])

  assert item_ids.shape == (0, 0) and item_ids.dtype.kind == "U"
  assert scores.shape == (0, 0) and scores.dtype == np.float32


@pytest.mark.parametrize("method", ["__call__", "rank"])
def test_ranking_signature_rejects_as_many_histories_as_users_only(fake_model, method):
  signature = queries.RankingSignature(fake_model)

  with pytest.raises(ValueError, match="2 users but 1 histories"):
    getattr(signature, method)(["u00001", "u00002"], [[]])


def test_input_specs_are_the_contract_s_signature_inputs():
  specs = [(spec.name, spec.dtype, tuple(spec.shape.as_list())) for spec in queries.INPUT_SPECS]

  assert specs == [(name, tf.dtypes.as_dtype(dtype), shape)
                   for name, dtype, shape in contract.SIGNATURE_INPUTS]
  assert [name for name, _, _ in specs] == [contract.USER_ID, contract.HISTORY,
                                           contract.TIMESTAMP]


def test_a_signature_traced_with_the_input_specs_takes_the_contract_s_inputs(fake_model):
  signature = tf.saved_model.load(str(fake_model)).signatures[contract.SERVING_SIGNATURE]

  _, inputs = signature.structured_input_signature
  assert {name: (spec.dtype, tuple(spec.shape.as_list())) for name, spec in inputs.items()} == {
      name: (tf.dtypes.as_dtype(dtype), shape) for name, dtype, shape in contract.SIGNATURE_INPUTS}
