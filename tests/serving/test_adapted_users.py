"""The offline cold-start job: new users' adapted vectors stored in a new model version."""
from click.testing import CliRunner
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from components.models import cold_start
from pipeline import cli
from schemas import contract
from serving import adapted_users
from serving import batch
from tests.models.test_model import export_tiny_model
from tests.models.test_model import ITEM_IDS

STEPS = 2


def _scores(model_dir, users):
  """{user: (item ids, scores)} of rank_catalog for these users with no history: what a request
  carrying only the user id gets."""
  rank = tf.saved_model.load(str(model_dir)).signatures[contract.RANK_CATALOG_SIGNATURE]
  out = rank(user_id=tf.constant(users), history=tf.zeros([len(users), 0], tf.string),
             timestamp=tf.zeros([len(users)], tf.int64))
  return dict(zip(users, zip(out[contract.ITEM_IDS].numpy().astype(str),
                             out[contract.SCORES].numpy())))


@pytest.fixture
def model(tmp_path):
  module = export_tiny_model(tmp_path / "1", ITEM_IDS, top_k=3, serve_candidates=4)
  (tmp_path / "1" / "assets.extra").mkdir()
  (tmp_path / "1" / "assets.extra" / "tf_serving_warmup_requests").write_bytes(b"warmup")
  return module, tmp_path / "1"


def test_new_users_are_served_by_id_from_their_adapted_vectors(model):
  module, model_dir = model
  output = model_dir.with_name("2")
  # "2" is unknown to the model (the OOV row); "1" is known.
  histories = {"2": ["4", "1", "5"], "1": ["0", "3"]}
  assert adapted_users.write_adapted_version(model_dir, output, histories, STEPS) == 1
  rows = module.query_tower.user_embedding.embeddings.numpy()
  adapted = cold_start.adapt_user_vectors(
      module.query_tower, module.catalog.embeddings, tf.constant(rows[[2]]),
      tf.constant([[4, 1, 5]], tf.int64), STEPS, module.adapt_learning_rate).numpy()
  module.set_adapted_users(tf.constant(["2"]), tf.constant(adapted))
  expected = module.rank_catalog(user_id=tf.constant(["2"]), history=tf.zeros([1, 0], tf.string),
                                 timestamp=tf.zeros([1], tf.int64))
  served = _scores(output, ["2", "1"])
  np.testing.assert_array_equal(served["2"][0], expected[contract.ITEM_IDS].numpy()[0].astype(str))
  np.testing.assert_allclose(served["2"][1], expected[contract.SCORES].numpy()[0], rtol=1e-5)
  before = _scores(model_dir, ["2", "1"])
  assert not np.allclose(served["2"][1], before["2"][1])
  # The known user is left as trained; the version keeps its warmup requests.
  np.testing.assert_allclose(served["1"][1], before["1"][1], rtol=1e-6)
  assert (output / "assets.extra" / "tf_serving_warmup_requests").read_bytes() == b"warmup"
  assert sorted(path.name for path in model_dir.parent.iterdir()) == ["1", "2"]


def test_an_existing_version_is_never_overwritten(model):
  _, model_dir = model
  with pytest.raises(FileExistsError, match="never overwritten"):
    adapted_users.write_adapted_version(model_dir, model_dir, {"2": ["1"]}, STEPS)


def test_the_cli_stores_new_users_and_batch_recommendations_can_adapt(model, tmp_path):
  _, model_dir = model
  interactions = tmp_path / "new_users.csv"
  pd.DataFrame({"user_id": ["2", "2"], "item_id": ["4", "1"], "timestamp": [1, 2],
                "event": ["click", "click"]}).to_csv(interactions, index=False)
  result = CliRunner().invoke(cli.main, [
      "adapt-users", "--model", str(model_dir), "--interactions", str(interactions),
      "--steps", str(STEPS), "--output", str(tmp_path / "2")])
  assert result.exit_code == 0, result.output
  assert "Stored adapted vectors of 1 new users (of 1)" in result.output
  again = CliRunner().invoke(cli.main, [
      "adapt-users", "--model", str(model_dir), "--interactions", str(interactions),
      "--output", str(tmp_path / "2")])
  assert again.exit_code != 0 and "never overwritten" in again.output
  # Batch mode with --adapt-steps ranks as the adapted signature does.
  users_file = tmp_path / "users.txt"
  users_file.write_text("2\n")
  output = tmp_path / "recommendations.csv"
  result = CliRunner().invoke(cli.main, [
      "recommend", "--model", str(model_dir), "--users", str(users_file), "--exclude-seen",
      str(interactions), "--output", str(output), "--k", "4", "--adapt-steps", str(STEPS)])
  assert result.exit_code == 0, result.output
  seen = {"2": ["4", "1"]}
  adapted = batch.recommend(model_dir, ["2"], seen, 4, adapt_steps=STEPS)
  assert list(pd.read_csv(output, dtype={"item_id": str})["item_id"]) == list(adapted["item_id"])
  plain = batch.recommend(model_dir, ["2"], seen, 4)
  assert not np.allclose(adapted["score"], plain["score"])
