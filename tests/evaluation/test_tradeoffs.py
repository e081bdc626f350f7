"""The trade-off search over a small SavedModel whose ranking its combiner weights decide."""
import dataclasses

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from components.data import sessions
from components.evaluation import model_evaluation
from components.evaluation import tradeoffs
from components.evaluation.config import KNEE
from components.evaluation.config import TradeoffConfig
from components.models import queries
from components.models import training
from components.models.config import OBJECTIVES
from components.simulation import simulator
from schemas import contract

N_ITEMS = 30
TOP_K = 15
N_USERS = 40
OFFLINE_METRICS = ("ndcg@10", "coverage@10", "category_diversity@10")
# The model's own weighting: click and purchase, as RewardConfig's defaults weigh them.
SERVED_WEIGHTS = (1.0, 1.0, 0.0, 0.0, 0.0)
REWARD_SCALES = (1.0, 0.2, 5.0, 0.5, 0.3)


class WeightedRanker(tf.Module):
  """Ranks the catalog by sum_i w_i v_i(item) plus a per-user term, with the ranking head's
  variables where the exported model has them (`q_network.objective_weights`, `reward_scales`).
  """

  def __init__(self, item_values: np.ndarray):
    super().__init__()
    self.q_network = tf.Module()
    self.q_network.objective_weights = tf.Variable(SERVED_WEIGHTS, dtype=tf.float32,
                                                   trainable=False)
    self.q_network.reward_scales = tf.Variable(REWARD_SCALES, dtype=tf.float32, trainable=False)
    self._item_values = tf.constant(item_values, tf.float32)
    self._catalog = tf.constant([f"i{n:05d}" for n in range(N_ITEMS)])

  @tf.function(input_signature=queries.INPUT_SPECS)
  def serve(self, user_id, history, timestamp):
    del history, timestamp
    users = tf.strings.to_number(tf.strings.substr(user_id, 1, 5), tf.float32)
    value = tf.linalg.matvec(self._item_values, self.q_network.objective_weights)
    personal = 0.3 * tf.sin(users[:, None] * tf.range(1.0, N_ITEMS + 1.0)[None, :])
    scores, items = tf.math.top_k(value[None, :] + personal, k=TOP_K)
    return {contract.ITEM_IDS: tf.gather(self._catalog, items), contract.SCORES: scores}


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> queries.RankingSignature:
  values = np.random.default_rng(3).uniform(size=(N_ITEMS, len(OBJECTIVES)))
  module = WeightedRanker(values)
  path = tmp_path_factory.mktemp("weighted") / "1"
  tf.saved_model.save(module, str(path),
                      signatures={contract.SERVING_SIGNATURE: module.serve.get_concrete_function()})
  return queries.RankingSignature(path)


def _engagements(seed: int) -> pd.DataFrame:
  """Six engagements per user, with histories, sessions and categories."""
  rng = np.random.default_rng(seed)
  rows = []
  for user in range(N_USERS):
    items = rng.choice(N_ITEMS, size=6, replace=False)
    for step, item in enumerate(items):
      rows.append({contract.USER_ID: f"u{user:05d}", contract.ITEM_ID: f"i{item:05d}",
                   contract.CATEGORY: f"c{item % 4}", contract.SESSION: f"u{user}-s0",
                   contract.TIMESTAMP: 1000 * user + step,
                   contract.HISTORY: tuple(f"i{i:05d}" for i in items[:step])})
  return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def validation() -> tradeoffs.ValidationSet:
  train, held_out = _engagements(0), _engagements(1)
  return tradeoffs.ValidationSet(data=model_evaluation.eval_data(train, held_out, train, None),
                                 world_users=np.empty(0, np.int64))


def _config(**overrides) -> TradeoffConfig:
  settings = dict(metrics=OFFLINE_METRICS, choice_weights=(1.0, 0.5, 0.5), trials=10,
                  population=4, seed=0)
  return TradeoffConfig(**{**settings, **overrides})


def test_assigning_the_weights_variable_changes_the_served_ranking(model, validation):
  weights = model.saved_model.q_network.objective_weights
  queries_ = validation.data.queries.head(5)
  before, _ = model.rank(queries_[contract.USER_ID].tolist(), queries_[contract.HISTORY].tolist())
  weights.assign([0.0, 0.0, 0.0, 1.0, 0.0])
  try:
    after, _ = model.rank(queries_[contract.USER_ID].tolist(),
                          queries_[contract.HISTORY].tolist())
  finally:
    weights.assign(SERVED_WEIGHTS)
  assert (before != after).any()


@pytest.fixture(scope="module")
def result(model, validation) -> tradeoffs.SearchResult:
  return tradeoffs.search(model, validation, _config())


def test_the_search_is_reproducible_for_a_seed_and_varies_with_it(model, validation, result):
  again = tradeoffs.search(model, validation, _config())
  assert [trial.weights for trial in again.trials] == [trial.weights for trial in result.trials]
  assert [trial.metrics for trial in again.trials] == [trial.metrics for trial in result.trials]
  other = tradeoffs.search(model, validation, _config(seed=1))
  assert ([trial.weights for trial in other.trials[1:]]
          != [trial.weights for trial in result.trials[1:]])


def test_the_hand_set_weighting_is_tried_first_and_restored_after(model, result):
  assert len(result.trials) == 10
  handset = np.array([result.handset.weights[name] for name in OBJECTIVES])
  # The same ranking as the served weights: a positive multiple of them.
  np.testing.assert_allclose(handset / handset[0], SERVED_WEIGHTS, rtol=1e-6)
  np.testing.assert_allclose(model.saved_model.q_network.objective_weights.numpy(),
                             SERVED_WEIGHTS)
  assert result.reward_scales == pytest.approx(dict(zip(OBJECTIVES, REWARD_SCALES)))


def test_the_front_is_the_non_dominated_trials_and_holds_the_chosen_point(result):
  points = {trial.number: trial.metrics for trial in result.trials}
  for number, point in points.items():
    dominated = any(tradeoffs.dominates(other, point, result.metrics)
                    for other in points.values())
    assert (number in result.front) == (not dominated)
  assert result.chosen in result.front
  assert result.dominating == [number for number in result.front
                               if tradeoffs.dominates(points[number], result.handset.metrics,
                                                      result.metrics)]
  # The front holds the hand-set point or points dominating it, so it covers at least as much.
  assert result.hypervolume >= result.handset_hypervolume == pytest.approx(0.5 ** 3)


def test_the_weights_found_reproduce_their_metrics_when_assigned(model, validation, result):
  chosen = result.trial(result.chosen)
  weights = model.saved_model.q_network.objective_weights
  weights.assign([chosen.weights[name] for name in OBJECTIVES])
  try:
    measured = tradeoffs.measure(model, validation, result.metrics, seed=0, rollouts=1)
  finally:
    weights.assign(SERVED_WEIGHTS)
  assert measured == pytest.approx(chosen.metrics)


def test_fronts_compare_from_the_baseline_s_hand_set_point(result):
  assert tradeoffs.compared_hypervolumes(result, result) == pytest.approx(
      (result.hypervolume, result.hypervolume))
  # A candidate whose every weighting measures 10 % lower covers less.
  lower = dataclasses.replace(result, trials=[dataclasses.replace(
      trial, metrics={name: 0.9 * value for name, value in trial.metrics.items()})
                                              for trial in result.trials])
  candidate, baseline = tradeoffs.compared_hypervolumes(lower, result)
  assert candidate < baseline == pytest.approx(result.hypervolume)


def test_the_result_survives_its_json_record(result):
  assert tradeoffs.SearchResult.from_dict(result.to_dict()) == result


def test_hypervolume_of_hand_computed_points():
  reference = {"a": 1.0, "b": 2.0}
  # Relative to the reference: (2, 1) and (1, 2); the reference point is (0.5, 0.5).
  points = [{"a": 2.0, "b": 2.0}, {"a": 1.0, "b": 4.0}]
  assert tradeoffs.hypervolume(points[:1], reference, ["a", "b"], 0.5) == pytest.approx(0.75)
  assert tradeoffs.hypervolume(points, reference, ["a", "b"], 0.5) == pytest.approx(1.25)
  # A point below the reference point on one metric adds nothing.
  low = points + [{"a": 10.0, "b": 0.5}]
  assert tradeoffs.hypervolume(low, reference, ["a", "b"], 0.5) == pytest.approx(1.25)
  # A metric whose hand-set value is negative: the reference point lies half its size below it.
  assert tradeoffs.hypervolume([{"s": -2.0}], {"s": -2.0}, ["s"], 0.5) == pytest.approx(0.5)
  assert tradeoffs.hypervolume([{"s": 0.0}], {"s": -2.0}, ["s"], 0.5) == pytest.approx(1.5)


def test_the_choice_rules():
  handset = {"a": 1.0, "b": 1.0}
  front = [{"a": 3.0, "b": 1.0}, {"a": 2.2, "b": 2.2}, {"a": 1.0, "b": 2.5}]
  config = TradeoffConfig(metrics=("a", "b"), choice_weights=(1.0, 0.1))
  assert tradeoffs.choose(front, handset, ["a", "b"], config) == 0
  assert tradeoffs.choose(front, handset, ["a", "b"],
                          dataclasses.replace(config, choice_weights=(0.1, 1.0))) == 2
  # The knee: nearest the ideal (3, 2.5) with each metric scaled to the front's range.
  assert tradeoffs.choose(front, handset, ["a", "b"],
                          dataclasses.replace(config, choice=KNEE)) == 1


def test_metrics_the_search_cannot_measure_are_named(validation):
  with pytest.raises(ValueError, match="ope_ctr"):
    tradeoffs.searchable_metrics(_config(metrics=("ope_ctr",), choice_weights=(1.0,)),
                                 validation)
  config = _config(metrics=("ndcg@10", "simulator_ctr"), choice_weights=(1.0, 1.0))
  assert tradeoffs.searchable_metrics(config, validation) == ["ndcg@10"]
  with pytest.raises(ValueError, match="simulator"):
    tradeoffs.searchable_metrics(dataclasses.replace(
        config, metrics=("simulator_ctr",), choice_weights=(1.0,)), validation)


def test_rollouts_score_each_weighting_with_the_same_draws(model, validation):
  world = simulator.World.sample(np.random.default_rng(0), n_users=30, n_items=N_ITEMS,
                                 n_categories=4)
  simulated = dataclasses.replace(validation, world=world, world_users=np.arange(12))
  names = ["simulator_ctr", "simulator_revenue_per_user", "simulator_satisfaction"]
  first = tradeoffs.measure(model, simulated, names, seed=5, rollouts=2)
  assert first == tradeoffs.measure(model, simulated, names, seed=5, rollouts=2)
  assert set(first) == set(names) and 0 < first["simulator_ctr"] < 1
  result = tradeoffs.search(model, simulated, _config(
      metrics=tuple(names), choice_weights=(1.0, 1.0, 1.0), trials=4, rollouts=1))
  assert result.metrics == names and result.chosen in result.front


def _write_split(uri: str, engagements: pd.DataFrame) -> None:
  """The engagements as SessionBuilder's training split of tf.Examples."""
  split_dir = sessions.split_dir(uri, sessions.TRAIN_SPLIT)
  tf.io.gfile.makedirs(split_dir)
  with tf.io.TFRecordWriter(f"{split_dir}/data.gz", options="GZIP") as writer:
    for row in engagements.itertuples(index=False):
      row = row._asdict()
      features = {name: tf.train.Feature(bytes_list=tf.train.BytesList(value=[
          row[name].encode()])) for name in (contract.USER_ID, contract.ITEM_ID,
                                              contract.CATEGORY, contract.SESSION)}
      features[contract.TIMESTAMP] = tf.train.Feature(
          int64_list=tf.train.Int64List(value=[row[contract.TIMESTAMP]]))
      features[contract.HISTORY] = tf.train.Feature(bytes_list=tf.train.BytesList(
          value=[item.encode() for item in row[contract.HISTORY]]))
      writer.write(tf.train.Example(
          features=tf.train.Features(feature=features)).SerializeToString())


def test_the_validation_set_is_the_held_out_users_engagements(tmp_path):
  engagements = _engagements(2)
  examples, transitions = str(tmp_path / "examples"), str(tmp_path / "transitions")
  _write_split(examples, engagements)
  # An item shown but never engaged with is in the catalog too.
  never_engaged = engagements.head(1).assign(**{contract.ITEM_ID: "i00099"})
  _write_split(transitions, pd.concat([engagements, never_engaged]))
  config = _config(max_queries=1000)
  validation_set = tradeoffs.load_validation_set(examples, transitions, 0.3, config,
                                                 simulated=False)
  assert "i00099" in validation_set.data.catalog
  users = engagements[contract.USER_ID].unique()
  held_out = set(users[training.is_validation_user(tf.constant(users), 0.3).numpy()])
  assert 0 < len(held_out) < len(users)
  assert set(validation_set.data.queries[contract.USER_ID]) == held_out
  assert set(validation_set.data.train_engagements[contract.USER_ID]).isdisjoint(held_out)
  assert len(validation_set.world_users) == 0
  capped = tradeoffs.load_validation_set(examples, transitions, 0.3, _config(max_queries=5),
                                         simulated=False)
  assert len(capped.data.queries) == 5
  with pytest.raises(ValueError, match="no validation users"):
    tradeoffs.load_validation_set(examples, transitions, 0.0, config, simulated=False)
