"""The two towers, the retrieval loss, and the exported serving graph."""
import numpy as np
import pytest
import tensorflow as tf

from components import export
from components import model as model_lib
from components import preprocessing

PAD = preprocessing.HISTORY_PADDING
CONFIG = model_lib.ModelConfig(embedding_dim=8)


def _batch(users, items, categories, histories):
  return {
      model_lib.USER_XF: tf.constant(users, tf.int64),
      model_lib.ITEM_XF: tf.constant(items, tf.int64),
      model_lib.CATEGORY_XF: tf.constant(categories, tf.int64),
      model_lib.HISTORY_XF: tf.constant(histories, tf.int64),
  }


def test_towers_embed_into_one_space():
  model = model_lib.TwoTowerModel(num_users=5, num_items=7, num_categories=3, config=CONFIG)
  batch = _batch([0, 4], [1, 6], [0, 2], [[1, 2, PAD], [PAD, PAD, PAD]])
  assert model.query_tower(batch).shape == (2, 8)
  assert model.candidate_tower(batch).shape == (2, 8)
  # The history reads the candidate tower's item table: one variable, not a copy.
  assert model.query_tower.item_embedding is model.candidate_tower.item_embedding


def test_padding_does_not_change_the_query():
  tower = model_lib.TwoTowerModel(3, 7, 2, CONFIG).query_tower
  short = tower(_batch([1], [0], [0], [[3, PAD, PAD, PAD]]))
  padded_differently = tower(_batch([1], [0], [0], [[3, PAD, PAD, PAD, PAD, PAD]]))
  other_item = tower(_batch([1], [0], [0], [[4, PAD, PAD, PAD]]))
  np.testing.assert_allclose(short.numpy(), padded_differently.numpy(), rtol=1e-6)
  assert not np.allclose(short.numpy(), other_item.numpy())


def test_empty_history_is_finite():
  tower = model_lib.TwoTowerModel(3, 7, 2, CONFIG).query_tower
  assert np.isfinite(tower(_batch([0], [0], [0], [[PAD, PAD]])).numpy()).all()


def test_training_learns_user_item_affinity():
  # Users 0..3 each always take item u+4 (category u % 2): a retrieval model must rank it first.
  tf.keras.utils.set_random_seed(0)
  users = np.repeat(np.arange(4), 64)
  data = tf.data.Dataset.from_tensor_slices(
      _batch(users, users + 4, users % 2, np.full((len(users), 2), PAD))).shuffle(256).batch(32)
  model = model_lib.TwoTowerModel(4, 8, 2, model_lib.ModelConfig(embedding_dim=8))
  model.compile(optimizer=tf.keras.optimizers.Adagrad(0.2))
  losses = model.fit(data, epochs=8, verbose=0).history["loss"]
  assert losses[-1] < losses[0]
  queries = model.query_tower(_batch(np.arange(4), np.zeros(4), np.zeros(4), np.full((4, 2), PAD)))
  candidates = model.candidate_tower(_batch(np.zeros(8), np.arange(8), np.arange(8) % 2,
                                            np.full((8, 2), PAD)))
  best = tf.argmax(tf.matmul(queries, candidates, transpose_b=True), axis=1).numpy()
  assert list(best) == [4, 5, 6, 7]


def _loss(model, batch):
  return float(model.compute_loss(batch))


def test_rows_with_the_same_item_are_not_negatives_of_each_other():
  model = model_lib.TwoTowerModel(4, 8, 2, CONFIG)
  same_item = _batch(np.arange(4), np.full(4, 5), np.zeros(4), np.full((4, 2), PAD))
  assert _loss(model, same_item) == pytest.approx(0.0, abs=1e-5)
  distinct = _batch(np.arange(4), np.arange(4), np.zeros(4), np.full((4, 2), PAD))
  assert _loss(model, distinct) > 0.1


def test_log_q_correction_depends_only_on_relative_sampling_probabilities():
  tf.keras.utils.set_random_seed(1)
  model = model_lib.TwoTowerModel(4, 8, 2, CONFIG)
  batch = _batch(np.arange(4), np.arange(4), np.zeros(4), np.full((4, 2), PAD))
  uncorrected = _loss(model, batch)
  model.item_probability = tf.constant(np.full(8, 0.3), tf.float32)  # uniform: a constant shift
  assert _loss(model, batch) == pytest.approx(uncorrected, rel=1e-5)
  model.item_probability = tf.constant([0.9, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.04],
                                       tf.float32)
  # Skewed probabilities move the items' logits against each other, so the loss changes.
  assert _loss(model, batch) != pytest.approx(uncorrected, rel=1e-3)


class _IdentityTransform(tf.keras.layers.Layer):
  """Stands in for the Transform layer: users and items are already small integers as strings."""

  def call(self, inputs):
    history = tf.sparse.to_dense(inputs["history"], default_value="-1")
    history = tf.pad(history, [[0, 0], [0, 3]], constant_values="-1")[:, :3]
    return {model_lib.USER_XF: tf.strings.to_number(inputs["user_id"], tf.int64),
            model_lib.HISTORY_XF: tf.strings.to_number(history, tf.int64)}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  model = model_lib.TwoTowerModel(3, 6, 2, CONFIG)
  candidates = model.candidate_tower(_batch([0] * 6, range(6), [0, 1] * 3, [[PAD]] * 6)).numpy()
  ids = np.array([f"item{i}".encode() for i in range(6)], dtype=object)
  module = export.RecommenderModule(_IdentityTransform(), model.query_tower, candidates, ids,
                                    top_k=100)
  path = str(tmp_path_factory.mktemp("export"))
  export.save(module, path)
  return module, path


def test_saved_model_round_trip_gives_the_same_answer(exported):
  module, path = exported
  user, history = tf.constant(["1", "2"]), tf.constant([["0", ""], ["", ""]])
  before = module.serve(user, history)
  after = tf.saved_model.load(path).signatures["serving_default"](user_id=user, history=history)
  np.testing.assert_array_equal(before["item_ids"].numpy(), after["item_ids"].numpy())
  np.testing.assert_allclose(before["scores"].numpy(), after["scores"].numpy(), rtol=1e-6)
  # k is clipped to the six-item catalog, and scores come best first.
  assert after["item_ids"].shape == (2, 6)
  assert (np.diff(after["scores"].numpy(), axis=1) <= 0).all()


def test_rank_catalog_ranks_every_item_like_the_top_k(tmp_path):
  model = model_lib.TwoTowerModel(3, 6, 2, CONFIG)
  candidates = model.candidate_tower(_batch([0] * 6, range(6), [0, 1] * 3, [[PAD]] * 6)).numpy()
  ids = np.array([f"item{i}".encode() for i in range(6)], dtype=object)
  export.save(export.RecommenderModule(_IdentityTransform(), model.query_tower, candidates, ids,
                                       top_k=2), str(tmp_path))
  loaded = tf.saved_model.load(str(tmp_path)).signatures
  inputs = dict(user_id=tf.constant(["1", "2"]), history=tf.constant([["0"], [""]]))
  top = loaded["serving_default"](**inputs)
  everything = loaded["rank_catalog"](**inputs)
  assert top["item_ids"].shape == (2, 2) and everything["item_ids"].shape == (2, 6)
  np.testing.assert_array_equal(everything["item_ids"].numpy()[:, :2], top["item_ids"].numpy())
  assert all(sorted(row) == sorted(ids) for row in everything["item_ids"].numpy())


def test_empty_history_input_is_accepted(exported):
  _, path = exported
  serve = tf.saved_model.load(path).signatures["serving_default"]
  out = serve(user_id=tf.constant(["0"]), history=tf.zeros([1, 0], tf.string))
  assert out["item_ids"].shape == (1, 6)


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
