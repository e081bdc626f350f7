"""The two towers, the retrieval loss, and the exported serving graph."""
import collections
import logging

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_recommenders as tfrs
from tensorflow.python.autograph.core import ag_ctx

from components.models import cold_start
from components.models import export
from components.models import preprocessing
from components.models import ranker
from components.models import two_tower
from components.models.config import ATTENTION_TITLE
from components.models.config import AUTO_NEGATIVES
from components.models.config import FULL_SOFTMAX
from components.models.config import FULL_SOFTMAX_MAX_ITEMS
from components.models.config import MIXED_NEGATIVES
from components.models.config import ModelConfig
from components.models.config import RankerConfig
from components.models.config import SEQUENCE_ENCODERS
from schemas import contract

PAD = preprocessing.PADDING
CONFIG = ModelConfig(embedding_dim=8)
PRICE_BUCKETS = 3
TITLE_WORDS = 5


def _batch(users, items, categories, histories, price_buckets=None, titles=None, hours=None):
  return {
      two_tower.HOUR_OF_WEEK_XF: tf.constant(
          np.full(len(users), PAD) if hours is None else hours, tf.int64),
      two_tower.USER_XF: tf.constant(users, tf.int64),
      two_tower.ITEM_XF: tf.constant(items, tf.int64),
      two_tower.CATEGORY_XF: tf.constant(categories, tf.int64),
      two_tower.PRICE_BUCKET_XF: tf.constant(
          np.zeros(len(items)) if price_buckets is None else price_buckets, tf.int64),
      two_tower.TITLE_TOKENS_XF: tf.constant(
          np.full((len(items), 2), PAD) if titles is None else titles, tf.int64),
      two_tower.HISTORY_XF: tf.constant(histories, tf.int64),
  }


def _two_tower(num_users, num_items, num_categories, config=CONFIG):
  return two_tower.TwoTowerModel(num_users, num_items, num_categories, PRICE_BUCKETS,
                                 TITLE_WORDS, config)


def test_towers_embed_into_one_space():
  model = _two_tower(num_users=5, num_items=7, num_categories=3)
  batch = _batch([0, 4], [1, 6], [0, 2], [[1, 2, PAD], [PAD, PAD, PAD]])
  assert model.query_tower(batch).shape == (2, 8)
  assert model.candidate_tower(batch).shape == (2, 8)
  # The history reads the candidate tower's item table: one variable, not a copy.
  assert model.query_tower.item_embedding is model.candidate_tower.item_embedding


def test_padding_does_not_change_the_query():
  tower = _two_tower(3, 7, 2).query_tower
  short = tower(_batch([1], [0], [0], [[3, PAD, PAD, PAD]]))
  padded_differently = tower(_batch([1], [0], [0], [[3, PAD, PAD, PAD, PAD, PAD]]))
  other_item = tower(_batch([1], [0], [0], [[4, PAD, PAD, PAD]]))
  np.testing.assert_allclose(short.numpy(), padded_differently.numpy(), rtol=1e-6)
  assert not np.allclose(short.numpy(), other_item.numpy())


def test_the_order_of_the_history_matters():
  tower = _two_tower(3, 7, 2).query_tower
  forward = tower(_batch([1], [0], [0], [[3, 4, 5, PAD]]))
  backward = tower(_batch([1], [0], [0], [[5, 4, 3, PAD]]))
  assert not np.allclose(forward.numpy(), backward.numpy(), atol=1e-6)


def test_empty_history_is_finite():
  tower = _two_tower(3, 7, 2).query_tower
  assert np.isfinite(tower(_batch([0], [0], [0], [[PAD, PAD]])).numpy()).all()


def test_a_bag_mean_is_the_mean_of_the_present_rows_and_zero_without_any():
  table = tf.constant(np.arange(12, dtype=np.float32).reshape(4, 3))
  indices = tf.constant([[1, 3, PAD], [PAD, PAD, PAD], [2, 2, 0]], tf.int64)
  means = two_tower.bag_mean(table, indices)
  np.testing.assert_allclose(means.numpy(), [(table[1] + table[3]) / 2, np.zeros(3),
                                             (2 * table[2] + table[0]) / 3], rtol=1e-6)
  # A request may send a history of width 0.
  assert two_tower.bag_mean(table, tf.zeros([2, 0], tf.int64)).numpy().tolist() == [[0.0] * 3] * 2


def test_a_bag_mean_reads_each_distinct_present_row_once():
  """Only the rows it averages, each once: a whole-table read (a sparse matrix times the table)
  copies the table on every request once it is also gathered from, and a per-slot gather makes
  Adam merge one gradient row per slot."""
  table = tf.Variable(np.arange(12, dtype=np.float32).reshape(4, 3))
  with tf.GradientTape() as tape:
    means = two_tower.bag_mean(table, tf.constant([[3, 1, 3, PAD], [PAD, PAD, 1, PAD]], tf.int64))
  gradient = tape.gradient(means, table)
  assert isinstance(gradient, tf.IndexedSlices)
  assert sorted(gradient.indices.numpy().tolist()) == [1, 3]
  # d(sum of means)/d(row 1) is 1/3 + 1 per column, d/d(row 3) is 2/3.
  rows = dict(zip(gradient.indices.numpy().tolist(), gradient.values.numpy().tolist()))
  np.testing.assert_allclose(rows[1], [4 / 3] * 3, rtol=1e-6)
  np.testing.assert_allclose(rows[3], [2 / 3] * 3, rtol=1e-6)


def test_after_grappler_a_bag_mean_still_only_gathers_from_the_table():
  """Grappler rewrites a gather of distinct rows followed by a sparse segment mean (as
  `tf.nn.embedding_lookup_sparse` builds it) into a segment mean over the whole table, which
  reads it whole: a copy of the table on each request once it is also gathered from."""
  from tensorflow.core.protobuf import config_pb2
  from tensorflow.core.protobuf import meta_graph_pb2
  from tensorflow.python.grappler import tf_optimizer
  from tensorflow.python.training import saver

  graph = tf.Graph()
  with graph.as_default(), tf.device("/device:CPU:0"):
    table = tf.compat.v1.get_variable("table", [5, 3], use_resource=True)
    history = tf.compat.v1.placeholder(tf.int64, [None, None])
    # A consumer after the mean: grappler leaves the fetched node itself as it is.
    query = two_tower.bag_mean(table, history) * 2.0
  meta_graph = saver.export_meta_graph(graph_def=graph.as_graph_def(), graph=graph)
  meta_graph.collection_def["train_op"].CopyFrom(
      meta_graph_pb2.CollectionDef(node_list=meta_graph_pb2.CollectionDef.NodeList(
          value=[query.name])))
  optimized = tf_optimizer.OptimizeGraph(config_pb2.ConfigProto(), meta_graph)
  table_reads = {node.op for node in optimized.node if "table" in node.input}
  assert table_reads == {"ResourceGather"}


def test_title_words_are_a_bag_and_padding_does_not_count():
  tower = _two_tower(3, 7, 2).candidate_tower
  def embed(titles):
    return tower(_batch([0] * len(titles), [1] * len(titles), [0] * len(titles),
                        [[PAD]] * len(titles), titles=titles)).numpy()
  star_wars, reversed_padded, untitled, other = embed(
      [[1, 2, PAD, PAD], [2, 1, PAD, PAD], [PAD] * 4, [3, 4, PAD, PAD]])
  np.testing.assert_allclose(star_wars, reversed_padded, rtol=1e-6)
  assert not np.allclose(star_wars, untitled)
  assert not np.allclose(star_wars, other)
  # Without a title only the id, category and price speak.
  assert np.isfinite(untitled).all()


def test_the_attention_title_encoder_reads_words_in_order_and_ignores_padding():
  tower = _two_tower(3, 7, 2, ModelConfig(embedding_dim=8,
                                          title_encoder=ATTENTION_TITLE)).candidate_tower
  def embed(titles):
    return tower(_batch([0] * len(titles), [1] * len(titles), [0] * len(titles),
                        [[PAD]] * len(titles), titles=titles)).numpy()
  star_wars, wars_star, untitled = embed([[1, 2, PAD, PAD], [2, 1, PAD, PAD], [PAD] * 4])
  assert not np.allclose(star_wars, wars_star, atol=1e-6)
  np.testing.assert_allclose(
      star_wars, embed([[1, 2] + [PAD] * (contract.TITLE_LENGTH - 2)])[0], rtol=1e-5, atol=1e-6)
  assert np.isfinite(untitled).all() and not np.allclose(star_wars, untitled)


def test_shared_title_words_carry_what_one_item_learnt_to_another():
  # Users 0..1 take item 2 + u; items 2 and 4 share a title word, items 3 and 5 another. Items 4
  # and 5 are never trained on: only their titles can place them near the trained items.
  tf.keras.utils.set_random_seed(0)
  users = np.repeat(np.arange(2), 64)
  titles = np.array([[1, PAD], [2, PAD]])
  data = tf.data.Dataset.from_tensor_slices(
      _batch(users, users + 2, np.zeros_like(users), np.full((len(users), 2), PAD),
             titles=titles[users])).shuffle(128).batch(32)
  model = _two_tower(2, 6, 1)
  model.compile(optimizer=tf.keras.optimizers.Adagrad(0.2))
  model.fit(data, epochs=8, verbose=0)
  queries = model.query_tower(_batch(np.arange(2), np.zeros(2), np.zeros(2), np.full((2, 2), PAD)))
  unseen = model.candidate_tower(_batch(np.zeros(2), [4, 5], np.zeros(2), np.full((2, 2), PAD),
                                        titles=titles)).numpy()
  scores = tf.matmul(queries, unseen, transpose_b=True).numpy()
  # User 0 prefers item 4 (its item's word), user 1 item 5.
  assert scores[0, 0] > scores[0, 1] and scores[1, 1] > scores[1, 0]


def test_training_learns_user_item_affinity():
  # Users 0..3 each always take item u+4 (category u % 2): a retrieval model must rank it first.
  tf.keras.utils.set_random_seed(0)
  users = np.repeat(np.arange(4), 64)
  data = tf.data.Dataset.from_tensor_slices(
      _batch(users, users + 4, users % 2, np.full((len(users), 2), PAD))).shuffle(256).batch(32)
  model = _two_tower(4, 8, 2)
  model.compile(optimizer=tf.keras.optimizers.Adagrad(0.2))
  losses = model.fit(data, epochs=8, verbose=0).history["loss"]
  assert losses[-1] < losses[0]
  queries = model.query_tower(_batch(np.arange(4), np.zeros(4), np.zeros(4), np.full((4, 2), PAD)))
  candidates = model.candidate_tower(_batch(np.zeros(8), np.arange(8), np.arange(8) % 2,
                                            np.full((8, 2), PAD)))
  best = tf.argmax(tf.matmul(queries, candidates, transpose_b=True), axis=1).numpy()
  assert list(best) == [4, 5, 6, 7]


def test_the_train_step_is_traced_without_autograph(autograph_statuses):
  # AutoGraph's rewriting of every function the step calls took 17 of the first step's 20 s on
  # ml-latest-small; the step needs none of it.
  statuses = autograph_statuses(two_tower.QueryTower, "call")
  users = np.arange(4)
  data = tf.data.Dataset.from_tensor_slices(
      _batch(users, users, users % 2, np.full((4, 2), PAD))).batch(2)
  model = _two_tower(4, 4, 2)
  model.compile(optimizer=tf.keras.optimizers.Adagrad(0.1))
  model.fit(data, epochs=1, verbose=0)
  assert statuses and set(statuses) == {ag_ctx.Status.DISABLED}


def _loss(model, batch):
  return float(model.compute_loss(batch))


def test_rows_with_the_same_item_are_not_negatives_of_each_other():
  model = _two_tower(4, 8, 2)
  same_item = _batch(np.arange(4), np.full(4, 5), np.zeros(4), np.full((4, 2), PAD))
  assert _loss(model, same_item) == pytest.approx(0.0, abs=1e-5)
  distinct = _batch(np.arange(4), np.arange(4), np.zeros(4), np.full((4, 2), PAD))
  assert _loss(model, distinct) > 0.1


def test_log_q_correction_depends_only_on_relative_sampling_probabilities():
  tf.keras.utils.set_random_seed(1)
  model = _two_tower(4, 8, 2)
  batch = _batch(np.arange(4), np.arange(4), np.zeros(4), np.full((4, 2), PAD))
  uncorrected = _loss(model, batch)
  model.item_probability = tf.constant(np.full(8, 0.3), tf.float32)  # uniform: a constant shift
  assert _loss(model, batch) == pytest.approx(uncorrected, rel=1e-5)
  model.item_probability = tf.constant([0.9, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.04],
                                       tf.float32)
  # Skewed probabilities move the items' logits against each other, so the loss changes.
  assert _loss(model, batch) != pytest.approx(uncorrected, rel=1e-3)


class _IdentityTransform(tf.keras.layers.Layer):
  """Stands in for the Transform layer: users and items are already small integers as strings;
  "2" is the last user row, the out-of-vocabulary one, and so is the empty id."""

  def call(self, inputs):
    user_id = tf.where(tf.equal(inputs["user_id"], ""), "2", inputs["user_id"])
    history = tf.sparse.to_dense(inputs["history"], default_value="-1")
    history = tf.pad(history, [[0, 0], [0, 3]], constant_values="-1")[:, :3]
    timestamp = inputs["timestamp"]
    return {two_tower.USER_XF: tf.strings.to_number(user_id, tf.int64),
            two_tower.HISTORY_XF: tf.strings.to_number(history, tf.int64),
            # Hours since the epoch, mod a week: enough to tell times apart.
            two_tower.HOUR_OF_WEEK_XF: tf.where(timestamp > 0, timestamp // 3600 % 168,
                                                tf.constant(PAD, tf.int64))}


def export_tiny_model(path, item_ids, top_k, serve_candidates=200, temperature=0.0,
                      epsilon=0.0):
  """An untrained serving graph over len(item_ids) items, for users "0".."2"; returns the module.

  History ids are item indices as strings (what _IdentityTransform reads).
  """
  model = _two_tower(3, len(item_ids), 2)
  items = np.arange(len(item_ids))
  categories, price_buckets = items % 2, items % PRICE_BUCKETS
  catalog = ranker.Catalog(
      model.candidate_tower(_batch([0] * len(items), items, categories, [[PAD]] * len(items),
                                   price_buckets)).numpy(),
      categories, price_buckets)
  q_network = ranker.QNetwork(len(item_ids), 2, PRICE_BUCKETS, hidden_units=(8,),
                              num_positions=10)
  q_network((tf.zeros([1, CONFIG.embedding_dim]), catalog.actions(tf.zeros([1, 1], tf.int64))))
  module = export.RecommenderModule(
      _IdentityTransform(), model.query_tower, q_network, catalog,
      np.array([str(item).encode() for item in item_ids], dtype=object), top_k,
      ModelConfig(embedding_dim=CONFIG.embedding_dim, ranker=RankerConfig(
          serve_candidates=serve_candidates, temperature=temperature, epsilon=epsilon)))
  export.save(module, str(path))
  return module


ITEM_IDS = [f"item{i}" for i in range(6)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  path = tmp_path_factory.mktemp("export")
  return export_tiny_model(path, ITEM_IDS, top_k=3, serve_candidates=4), str(path)


def test_the_serving_functions_are_traced_without_autograph(tmp_path, autograph_statuses):
  # AutoGraph's rewriting of the layers' code took 16 of the 23 s of this export.
  statuses = autograph_statuses(export.RecommenderModule, "_user_inputs")
  export_tiny_model(tmp_path, ITEM_IDS, top_k=3)
  assert statuses and set(statuses) == {ag_ctx.Status.DISABLED}


A_TIME = 1_700_000_000


def _inputs():
  return dict(user_id=tf.constant(["1", "2"]), history=tf.constant([["0", ""], ["", ""]]),
              timestamp=tf.constant([A_TIME, contract.UNKNOWN_TIME], tf.int64))


def _times(count):
  return tf.fill([count], tf.constant(A_TIME, tf.int64))


def test_saved_model_round_trip_gives_the_same_answer(exported):
  module, path = exported
  loaded = tf.saved_model.load(path).signatures
  for name, method in ((contract.SERVING_SIGNATURE, module.serve),
                       (contract.RETRIEVE_SIGNATURE, module.retrieve),
                       (contract.RANK_CATALOG_SIGNATURE, module.rank_catalog)):
    before, after = method(**_inputs()), loaded[name](**_inputs())
    assert set(before) == set(after)
    for key in before:
      if key == contract.ITEM_IDS:
        np.testing.assert_array_equal(before[key].numpy(), after[key].numpy())
      else:
        np.testing.assert_allclose(before[key].numpy(), after[key].numpy(), rtol=1e-5)


def test_the_saved_model_reads_the_whole_full_width_history(exported):
  """A HISTORY_LENGTH-wide request round-trips, and its oldest item, far outside the recent
  window, still moves the answer: the profile reads the whole history."""
  module, path = exported
  loaded = tf.saved_model.load(path).signatures[contract.RETRIEVE_SIGNATURE]
  recent = ["0"] * (contract.HISTORY_LENGTH - 1)
  inputs = dict(user_id=tf.constant(["1", "1"]),
                history=tf.constant([["1"] + recent, ["2"] + recent]), timestamp=_times(2))
  after = loaded(**inputs)
  before = module.retrieve(**inputs)
  np.testing.assert_allclose(before[contract.SCORES].numpy(), after[contract.SCORES].numpy(),
                             rtol=1e-5)
  scores = after[contract.SCORES].numpy()
  assert not np.allclose(scores[0], scores[1], atol=1e-6)


def test_serving_graph_reranks_the_retrieved_candidates_by_q_value(exported):
  module, path = exported
  loaded = tf.saved_model.load(path).signatures
  served = loaded[contract.SERVING_SIGNATURE](**_inputs())
  retrieved = loaded[contract.RETRIEVE_SIGNATURE](**_inputs())
  assert served[contract.ITEM_IDS].shape == retrieved[contract.ITEM_IDS].shape == (2, 3)
  rank_catalog = loaded[contract.RANK_CATALOG_SIGNATURE](**_inputs())[contract.ITEM_IDS]
  for row in range(2):
    # The served items come from the retrieval top-4, best Q first.
    assert set(served[contract.ITEM_IDS].numpy()[row]) <= set(rank_catalog.numpy()[row][:4])
  assert (np.diff(served[contract.SCORES].numpy(), axis=1) <= 0).all()
  assert (np.diff(retrieved[contract.SCORES].numpy(), axis=1) <= 0).all()
  # Greedy ranking: every propensity is 1.
  np.testing.assert_array_equal(served[contract.PROPENSITIES].numpy(), np.ones((2, 3)))
  # The Q-values are the QNetwork's for those items in the query's state.
  states = module._states(**_inputs())  # pylint: disable=protected-access
  indices = tf.constant([[ITEM_IDS.index(item.decode()) for item in row]
                         for row in served[contract.ITEM_IDS].numpy()], tf.int64)
  np.testing.assert_allclose(
      module.q_network((states, module.catalog.actions(indices))).numpy(),
      served[contract.SCORES].numpy(), rtol=1e-5)


def test_exploring_serving_graph_samples_slates_and_reports_their_propensities(tmp_path):
  # Also: k = 100 is clipped to the six-item catalog when exported, as tf.math.top_k would fail
  # at serving time if asked for more items than there are.
  export_tiny_model(tmp_path, ITEM_IDS, top_k=100, serve_candidates=4, temperature=0.5)
  loaded = tf.saved_model.load(str(tmp_path)).signatures
  assert loaded[contract.RETRIEVE_SIGNATURE](**_inputs())[contract.ITEM_IDS].shape == (2, 6)
  inputs = dict(user_id=tf.constant(["1"] * 400), history=tf.constant([["0"]] * 400),
                timestamp=_times(400))
  served = loaded[contract.SERVING_SIGNATURE](**inputs)
  assert served[contract.ITEM_IDS].shape == (400, 6)
  slates = {tuple(row) for row in served[contract.ITEM_IDS].numpy()}
  assert len(slates) > 1  # sampled, not one fixed ranking
  propensities = served[contract.PROPENSITIES].numpy()
  assert ((propensities > 0) & (propensities <= 1)).all()
  # The last position has one candidate left: it is certain.
  np.testing.assert_allclose(propensities[:, -1], 1.0, rtol=1e-5)
  # The first position's propensity is the softmax of Q / temperature over all six candidates.
  first = served[contract.ITEM_IDS].numpy()[:, 0]
  for item in set(first):
    share = np.mean(first == item)
    logged = propensities[first == item, 0]
    np.testing.assert_allclose(logged, logged[0], rtol=1e-5)  # the same for every request
    assert share == pytest.approx(logged[0], abs=0.08)


def test_epsilon_greedy_serving_graph_explores_outside_the_greedy_slate(tmp_path):
  export_tiny_model(tmp_path, ITEM_IDS, top_k=2, serve_candidates=6, epsilon=0.2)
  loaded = tf.saved_model.load(str(tmp_path)).signatures
  inputs = dict(user_id=tf.constant(["1"] * 2000), history=tf.constant([["0"]] * 2000),
                timestamp=_times(2000))
  served = loaded[contract.SERVING_SIGNATURE](**inputs)
  items = served[contract.ITEM_IDS].numpy().astype(str)
  propensities = served[contract.PROPENSITIES].numpy()
  # The greedy slate is the most common one; the other slots were explored.
  slates, counts = np.unique(items, axis=0, return_counts=True)
  greedy_slate = slates[np.argmax(counts)]
  kept = items == greedy_slate
  np.testing.assert_allclose(1.0 - kept.mean(axis=0), [0.2, 0.2], atol=0.04)
  np.testing.assert_allclose(propensities[kept], 0.8, rtol=1e-5)
  # Four candidates outside the greedy two: an explored first slot had 0.2 / 4.
  np.testing.assert_allclose(propensities[~kept[:, 0], 0], 0.05, rtol=1e-5)
  assert not set(items[~kept]) & set(greedy_slate)


def test_rank_catalog_ranks_every_item_like_retrieve(exported):
  _, path = exported
  loaded = tf.saved_model.load(path).signatures
  top = loaded[contract.RETRIEVE_SIGNATURE](**_inputs())
  everything = loaded[contract.RANK_CATALOG_SIGNATURE](**_inputs())
  assert top["item_ids"].shape == (2, 3) and everything["item_ids"].shape == (2, 6)
  np.testing.assert_array_equal(everything["item_ids"].numpy()[:, :3], top["item_ids"].numpy())
  assert all(sorted(row.astype(str)) == ITEM_IDS for row in everything["item_ids"].numpy())


def test_empty_history_input_is_accepted(exported):
  _, path = exported
  serve = tf.saved_model.load(path).signatures["serving_default"]
  out = serve(user_id=tf.constant(["0"]), history=tf.zeros([1, 0], tf.string),
              timestamp=_times(1))
  assert out["item_ids"].shape == (1, 3)


def test_the_request_time_reaches_the_query_and_unknown_time_is_served(exported):
  _, path = exported
  rank_catalog = tf.saved_model.load(path).signatures[contract.RANK_CATALOG_SIGNATURE]
  def scores(timestamp):
    return rank_catalog(user_id=tf.constant(["1"]), history=tf.constant([["0"]]),
                        timestamp=tf.constant([timestamp], tf.int64))[contract.SCORES].numpy()
  monday, monday_later, tuesday = A_TIME, A_TIME + 60, A_TIME + 24 * 3600
  np.testing.assert_allclose(scores(monday), scores(monday_later), rtol=1e-6)  # same hour
  assert not np.allclose(scores(monday), scores(tuesday))
  unknown = scores(contract.UNKNOWN_TIME)
  assert np.isfinite(unknown).all() and not np.allclose(unknown, scores(monday))
  # A negative time is unknown too.
  np.testing.assert_allclose(scores(-5), unknown, rtol=1e-6)


def test_context_dropout_hides_the_hour_in_training_only():
  tower = two_tower.QueryTower(3, tf.keras.layers.Embedding(7, 8), 8, context_dropout=0.5)
  batch = _batch([1] * 400, [0] * 400, [0] * 400, [[PAD]] * 400, hours=[5] * 400)
  unknown = tower(dict(batch, **{two_tower.HOUR_OF_WEEK_XF: tf.fill([400], tf.constant(PAD,
                                                                                      tf.int64))}))
  served = tower(batch).numpy()
  assert not np.allclose(served[0], unknown[0])
  np.testing.assert_allclose(served, served[:1].repeat(400, axis=0), rtol=1e-6)
  trained = tower(batch, training=True).numpy()
  hidden = np.isclose(trained, unknown.numpy()).all(axis=1)
  assert 0.4 < hidden.mean() < 0.6
  np.testing.assert_allclose(trained[~hidden], served[~hidden], rtol=1e-6)


def test_saved_model_uses_stock_ops_only(exported):
  from tensorflow.python.framework import op_def_registry
  from tensorflow.python.saved_model import loader_impl

  _, path = exported
  graph = loader_impl.parse_saved_model(path).meta_graphs[0].graph_def
  ops = {node.op for node in graph.node}
  for function in graph.library.function:
    ops |= {node.op for node in function.node_def}
  called_functions = {function.signature.name for function in graph.library.function}
  unknown = {op for op in ops - called_functions if op_def_registry.get(op) is None}
  assert not unknown
  assert not ops & {"PyFunc", "PyFuncStateless", "EagerPyFunc"}



def test_no_served_function_reads_whole_a_variable_it_gathers_from(exported):
  """A variable that is gathered from is copied whole on every later whole read (TensorFlow's
  copy-on-read mode for sparsely accessed variables): a history mean that read the item table
  whole took 26 ms a request for 1M items instead of 0.4 ms."""
  from tensorflow.python.saved_model import loader_impl

  _, path = exported
  graph = loader_impl.parse_saved_model(path).meta_graphs[0].graph_def
  both = []
  for function in graph.library.function:
    reads = collections.defaultdict(set)
    for node in function.node_def:
      if node.op in ("ReadVariableOp", "ResourceGather", "ResourceGatherNd"):
        reads[node.input[0].split(":")[0]].add(node.op)
    both += [(function.signature.name, variable) for variable, ops in reads.items()
             if "ReadVariableOp" in ops and len(ops) > 1]
  assert not both


def test_the_served_catalog_is_saved_in_variables(exported):
  """Variables are restored by C++ ops without Python's GIL, so a server loading a new version
  keeps answering requests (ranker.Catalog); the values are the trained catalog's."""
  module, path = exported
  loaded = tf.saved_model.load(path)
  arrays = {"item_ids": loaded.item_ids, "embeddings": loaded.catalog.embeddings,
            "embeddings_t": loaded.catalog.embeddings_t, "categories": loaded.catalog.categories,
            "price_buckets": loaded.catalog.price_buckets}
  for name, array in arrays.items():
    assert isinstance(array, tf.Variable) and not array.trainable, name
  np.testing.assert_array_equal(arrays["item_ids"].numpy().astype(str), ITEM_IDS)
  np.testing.assert_array_equal(arrays["embeddings_t"].numpy(),
                                module.catalog.embeddings.numpy().T)


def test_the_towers_say_their_config_so_saving_them_warns_of_nothing(tmp_path, caplog):
  model = _two_tower(3, 6, 2)
  assert model.query_tower.get_config() == {
      "num_users": 3, "embedding_dim": CONFIG.embedding_dim,
      "context_dropout": CONFIG.context_dropout, "sequence_encoder": CONFIG.sequence_encoder,
      "recent_length": CONFIG.recent_length}
  assert model.candidate_tower.get_config() == {
      "num_categories": 2, "num_price_buckets": PRICE_BUCKETS, "num_title_words": TITLE_WORDS,
      "embedding_dim": CONFIG.embedding_dim, "title_encoder": CONFIG.title_encoder}
  with caplog.at_level(logging.WARNING):
    export_tiny_model(tmp_path, ITEM_IDS, top_k=3, serve_candidates=4)
  assert "non-serializable" not in caplog.text


def test_recent_items_are_the_last_present_ones_left_aligned():
  history = tf.constant([[1, 2, 3, 4, 5], [6, 7, PAD, PAD, PAD], [PAD] * 5], tf.int64)
  np.testing.assert_array_equal(two_tower.recent_items(history, 3).numpy(),
                                [[3, 4, 5], [6, 7, PAD], [PAD, PAD, PAD]])
  # A history of width 0 (a client that sends none) has no recent items.
  np.testing.assert_array_equal(
      two_tower.recent_items(tf.zeros([2, 0], tf.int64), 3).numpy(), np.full((2, 3), PAD))


@pytest.mark.parametrize("encoder", SEQUENCE_ENCODERS)
def test_padding_never_changes_the_query(encoder):
  """More padding slots, or a narrower recent window than the padded width, leave the query as
  it was: every encoder masks what is not an item."""
  tower = two_tower.QueryTower(3, tf.keras.layers.Embedding(9, 8), 8, sequence_encoder=encoder,
                               recent_length=4)
  def query(history):
    return tower({two_tower.USER_XF: tf.constant([1, 2], tf.int64),
                  two_tower.HOUR_OF_WEEK_XF: tf.constant([PAD, 7], tf.int64),
                  two_tower.HISTORY_XF: tf.constant(history, tf.int64)}).numpy()
  narrow = query([[1, 2, 3], [4, PAD, PAD]])
  np.testing.assert_allclose(query([[1, 2, 3, PAD, PAD, PAD], [4, PAD, PAD, PAD, PAD, PAD]]),
                             narrow, rtol=1e-5, atol=1e-6)
  # Order matters to the encoder: it reads a sequence, not a set.
  assert not np.allclose(query([[3, 2, 1], [4, PAD, PAD]])[0], narrow[0], atol=1e-6)


@pytest.mark.parametrize("encoder", SEQUENCE_ENCODERS)
def test_each_encoder_reads_only_the_recent_items_in_order(encoder):
  """Items older than the recent window reach the query only through the profile mean, which
  is blind to order; swapping two of them changes nothing."""
  tower = two_tower.QueryTower(3, tf.keras.layers.Embedding(9, 8), 8, sequence_encoder=encoder,
                               recent_length=2)
  def query(history):
    return tower({two_tower.USER_XF: tf.constant([1], tf.int64),
                  two_tower.HOUR_OF_WEEK_XF: tf.constant([PAD], tf.int64),
                  two_tower.HISTORY_XF: tf.constant([history], tf.int64)}).numpy()
  np.testing.assert_allclose(query([1, 2, 3, 4]), query([2, 1, 3, 4]), rtol=1e-5, atol=1e-6)
  assert not np.allclose(query([1, 2, 3, 4]), query([1, 2, 4, 3]), atol=1e-6)


def test_an_unknown_encoder_is_refused_by_name():
  with pytest.raises(ValueError, match="sequence_encoder must be one of .*'lstm'"):
    ModelConfig(sequence_encoder="lstm")
  with pytest.raises(ValueError, match="recent_length must be in"):
    ModelConfig(recent_length=contract.HISTORY_LENGTH + 1)
  with pytest.raises(ValueError, match="negatives must be one of"):
    ModelConfig(negatives="sampled")
  with pytest.raises(ValueError, match="title_encoder must be one of .*'cnn'"):
    ModelConfig(title_encoder="cnn")
  with pytest.raises(ValueError, match="needs the catalog"):
    two_tower.TwoTowerModel(3, 6, 2, PRICE_BUCKETS, TITLE_WORDS,
                            ModelConfig(embedding_dim=8, negatives=FULL_SOFTMAX))
  for field, value in [("epochs", 0), ("early_stopping_patience", 0),
                       ("validation_fraction", 1.0)]:
    with pytest.raises(ValueError, match=f"{field} must be .*got {value}"):
      ModelConfig(**{field: value})


def test_auto_negatives_score_a_catalog_that_fits_whole():
  assert two_tower.resolve_negatives(AUTO_NEGATIVES, 9_742) == FULL_SOFTMAX
  assert two_tower.resolve_negatives(AUTO_NEGATIVES, FULL_SOFTMAX_MAX_ITEMS) == FULL_SOFTMAX
  assert two_tower.resolve_negatives(AUTO_NEGATIVES, FULL_SOFTMAX_MAX_ITEMS + 1) == MIXED_NEGATIVES
  # Without a catalog to score, only the batch's items are there.
  assert two_tower.resolve_negatives(AUTO_NEGATIVES, None) == MIXED_NEGATIVES
  assert two_tower.resolve_negatives(MIXED_NEGATIVES, 10) == MIXED_NEGATIVES


def test_mixed_negative_logits_by_hand():
  """Two rows (positives items 0 and 1), one uniform draw of item 0, catalog of 4 items."""
  queries = tf.constant([[1.0, 0.0], [0.0, 2.0]])
  candidates = tf.constant([[1.0, 1.0], [0.5, 1.0], [3.0, 0.0]])
  p = np.array([0.75, 0.25])  # engagement shares of items 0 and 1
  expected_counts = tf.constant([2 * p[0] + 1 / 4, 2 * p[1] + 1 / 4, 2 * p[0] + 1 / 4],
                                tf.float32)
  logits = two_tower.mixed_negative_logits(queries, candidates, tf.constant([0, 1, 0], tf.int64),
                                           tf.constant([0, 1], tf.int64), expected_counts,
                                           temperature=0.5).numpy()
  dots = np.array([[1.0, 0.5, 3.0], [2.0, 2.0, 0.0]])
  log_q = np.log([1.75, 0.75, 1.75])
  # Row 0's positive is item 0: the uniform draw of item 0 is an accidental hit, not a negative.
  np.testing.assert_allclose(logits[0, :2], dots[0, :2] / 0.5 - log_q[:2], rtol=1e-6)
  assert logits[0, 2] == -np.inf
  np.testing.assert_allclose(logits[1], dots[1] / 0.5 - log_q, rtol=1e-6)


def _catalog_model(num_users, num_items, negatives, uniform=0):
  """A model over a catalog of `num_items` items of one category, and that catalog."""
  config = ModelConfig(embedding_dim=8, negatives=negatives, mixed_negatives=uniform)
  catalog = {two_tower.ITEM_XF: np.arange(num_items),
             two_tower.CATEGORY_XF: np.zeros(num_items, np.int64),
             two_tower.PRICE_BUCKET_XF: np.zeros(num_items, np.int64),
             two_tower.TITLE_TOKENS_XF: np.full((num_items, 2), PAD)}
  model = two_tower.TwoTowerModel(num_users, num_items, 1, PRICE_BUCKETS, TITLE_WORDS, config,
                                  item_probability=np.full(num_items, 1 / num_items),
                                  catalog=catalog)
  return model, catalog


@pytest.mark.parametrize("negatives", [FULL_SOFTMAX, MIXED_NEGATIVES])
def test_the_full_softmax_updates_the_candidate_tower_dense_to_the_same_weights(negatives):
  """Every catalog row has a gradient under the full softmax: a sparse update would sum the
  rows of each index, then update every row anyway. Adam's result is the same either way."""
  users = np.arange(4)
  batch = _batch(users, 2 * users, np.zeros(4), np.array([[1, PAD], [3, 5], [PAD, PAD], [7, 1]]))
  models = []
  for _ in range(2):
    tf.keras.utils.set_random_seed(0)
    model, _ = _catalog_model(4, 8, negatives)
    model.compile(optimizer=tf.keras.optimizers.Adam(0.1))
    model(batch)
    models.append(model)
  applied = []
  apply_gradients = models[0].optimizer.apply_gradients

  def recording(pairs):
    applied.extend(pairs)
    return apply_gradients(applied)

  models[0].optimizer.apply_gradients = recording
  models[0].train_step(batch)
  tfrs.Model.train_step(models[1], batch)  # the library's step, every gradient as it comes
  kinds = {variable.name: type(gradient) for gradient, variable in applied}
  item_table = models[0].candidate_tower.item_embedding.embeddings.name
  user_table = models[0].query_tower.user_embedding.embeddings.name
  assert kinds[user_table] is tf.IndexedSlices
  if negatives == FULL_SOFTMAX:
    assert not {kinds[v.name] for v in models[0].candidate_tower.trainable_variables} & {
        tf.IndexedSlices}
  else:
    assert kinds[item_table] is tf.IndexedSlices
  for ours, library in zip(models[0].trainable_variables, models[1].trainable_variables):
    np.testing.assert_allclose(ours.numpy(), library.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("negatives, uniform", [(FULL_SOFTMAX, 0), (MIXED_NEGATIVES, 4),
                                                (MIXED_NEGATIVES, 0)])
def test_each_softmax_learns_the_engagements(negatives, uniform):
  """Users 0..3 each engage with item 2u; after training, each user's own item ranks first."""
  num_items = 8
  model, catalog = _catalog_model(4, num_items, negatives, uniform)
  model.compile(optimizer=tf.keras.optimizers.Adagrad(0.5))
  users = np.repeat(np.arange(4), 8)
  batch = _batch(users, 2 * users, np.zeros_like(users), np.full((len(users), 1), PAD))
  logits, labels = model(batch, training=True)
  assert logits.shape == (len(users), num_items if negatives == FULL_SOFTMAX
                          else len(users) + uniform)
  model.fit(tf.data.Dataset.from_tensor_slices(batch).shuffle(32, seed=0).batch(16), epochs=30,
            verbose=0)
  scores = tf.matmul(model.query_tower(_batch(np.arange(4), np.zeros(4), np.zeros(4),
                                              np.full((4, 1), PAD))),
                     model.candidate_tower({k: tf.constant(v) for k, v in catalog.items()}),
                     transpose_b=True).numpy()
  np.testing.assert_array_equal(scores.argmax(axis=1), 2 * np.arange(4))


def _rank_catalog_scores(rank, users, histories, **extra):
  """{user: {item id: score}} of a rank_catalog-like signature."""
  out = rank(user_id=tf.constant(users), history=tf.constant(histories),
             timestamp=tf.fill([len(users)], tf.constant(contract.UNKNOWN_TIME, tf.int64)),
             **extra)
  return [dict(zip(items.astype(str), scores)) for items, scores in
          zip(out[contract.ITEM_IDS].numpy(), out[contract.SCORES].numpy())]


def _expected_scores(module, vectors, histories):
  """By hand: the query tower on these user vectors and item-index histories, against the
  catalog's embeddings."""
  queries = module.query_tower(cold_start.new_user_inputs(
      tf.constant(histories, tf.int64), tf.constant(vectors, tf.float32)))
  scores = tf.matmul(queries, module.catalog.embeddings, transpose_b=True).numpy()
  return [dict(zip(ITEM_IDS, row)) for row in scores]


def _assert_same_scores(actual, expected):
  for got, want in zip(actual, expected):
    assert set(got) == set(want)
    np.testing.assert_allclose([got[item] for item in want], list(want.values()), rtol=1e-5,
                               atol=1e-6)


def test_a_request_without_a_user_id_is_served_from_the_unknown_user_and_its_history(exported):
  """The amortised cold-start path: an empty id gets the OOV row, and its short history moves
  the answer."""
  module, path = exported
  rank = tf.saved_model.load(path).signatures[contract.RANK_CATALOG_SIGNATURE]
  served = _rank_catalog_scores(rank, ["", ""], [["3", "1"], ["", ""]])
  oov = module.query_tower.user_embedding.embeddings.numpy()[-1]
  _assert_same_scores(served, _expected_scores(module, [oov, oov], [[3, 1], [PAD, PAD]]))
  assert served[0] != served[1]


def test_stored_adapted_users_are_served_from_their_vectors(tmp_path):
  module = export_tiny_model(tmp_path / "before", ITEM_IDS, top_k=3, serve_candidates=4)
  rows = module.query_tower.user_embedding.embeddings.numpy()
  stored = np.array([[0.3, -0.2, 0.1, 0.0, 0.5, 0.4, -0.1, 0.2]], np.float32)
  module.set_adapted_users(tf.constant(["2"]), tf.constant(stored))
  export.save(module, str(tmp_path / "after"))
  rank = tf.saved_model.load(str(tmp_path / "after")).signatures[
      contract.RANK_CATALOG_SIGNATURE]
  # User "2" (unknown to the model) is looked up; user "1" keeps its trained row.
  _assert_same_scores(_rank_catalog_scores(rank, ["2", "1"], [["0"], ["0"]]),
                      _expected_scores(module, [stored[0], rows[1]], [[0], [0]]))
  # A new set replaces the old: "2" is back to the OOV row, "0" is stored.
  module.set_adapted_users(tf.constant(["0"]), tf.constant(stored * 2))
  _assert_same_scores(
      _rank_catalog_scores(module.rank_catalog, ["2", "0"], [["0"], ["0"]]),
      _expected_scores(module, [rows[2], stored[0] * 2], [[0], [0]]))


def test_rank_catalog_adapted_takes_the_adaptation_steps_on_the_latest_history(exported):
  module, path = exported
  rank = tf.saved_model.load(path).signatures[contract.ADAPTED_RANK_SIGNATURE]
  rows = module.query_tower.user_embedding.embeddings.numpy()
  histories = [["4", "1", "5"], ["", "", ""]]
  served = _rank_catalog_scores(rank, ["2", "1"], histories,
                                adapt_steps=tf.constant(2, tf.int32))
  adapted = cold_start.adapt_user_vectors(
      module.query_tower, module.catalog.embeddings, tf.constant(rows[[2, 1]]),
      tf.constant([[4, 1, 5], [PAD, PAD, PAD]], tf.int64), 2, CONFIG.adapt_learning_rate)
  _assert_same_scores(served, _expected_scores(module, adapted.numpy(),
                                               [[4, 1, 5], [PAD, PAD, PAD]]))
  assert not np.allclose(adapted.numpy()[0], rows[2])  # the steps moved the unknown user
  np.testing.assert_allclose(adapted.numpy()[1], rows[1])  # no history: nothing to adapt to
  # 0 steps is rank_catalog.
  _assert_same_scores(
      _rank_catalog_scores(rank, ["2"], [["4"]], adapt_steps=tf.constant(0, tf.int32)),
      _rank_catalog_scores(module.rank_catalog, ["2"], [["4"]]))
