"""The evaluator on SavedModels whose rankings are known: metrics, slices, OPE, gate, report."""
import base64
import html
import re

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from components.evaluation import candidate_evaluation
from components.evaluation import model_evaluation
from components.evaluation import ranking_metrics
from components.evaluation import release_gate
from components.models import queries
from components.simulation import generator
from components.simulation import model_policy
from components.simulation import simulator
from schemas import contract
from tests import fake_recommender

N_ITEMS = 1000  # random top-10s hit 1 % of the time
N_LAST_ITEMS = 100  # users' last items are among the first 100: popularity is a real baseline
TOP_K = 30
N_USERS = 300


def _item(number: int) -> str:
  return f"i{number:04d}"


def _rule_ranking(kind: str, user_id, history):
  """Ranks from the number n of the history's last item.

  "next": n+1, n+2, ... (neighbours share a category: ten items per category).
  "diverse": n+1, then every 37th item after it, across categories.
  "random": a fresh random permutation per request.
  """
  # Clients pad shorter histories with '' at the end.
  length = tf.reduce_sum(tf.cast(tf.not_equal(history, ""), tf.int32), axis=1)
  last_item = tf.gather(history, length - 1, batch_dims=1)
  last = tf.strings.to_number(tf.strings.substr(last_item, 1, 4), tf.int32)
  if kind == "random":
    items = tf.argsort(tf.random.uniform([tf.shape(user_id)[0], N_ITEMS]))[:, :TOP_K]
  else:
    step = 1 if kind == "next" else 37
    offsets = tf.concat([[1], 1 + step * tf.range(1, TOP_K)], axis=0)
    items = (last[:, None] + offsets[None, :]) % N_ITEMS
  ids = tf.strings.join(["i", tf.strings.as_string(items, width=4, fill="0")])
  scores = -tf.cast(tf.broadcast_to(tf.range(TOP_K), tf.shape(items)), tf.float32)
  return {contract.ITEM_IDS: ids, contract.SCORES: scores}


class _RuleRanker(tf.Module):
  """`serving_default` ranks by its kind's rule (`_rule_ranking`); `retrieve` by "next", as a
  retrieval stage that fits the data would, so that "diverse" and "random" rerank it for less
  accuracy."""

  def __init__(self, kind: str):
    super().__init__()
    self._kind = kind

  @tf.function(input_signature=queries.INPUT_SPECS)
  def serve(self, user_id, history, timestamp):
    del timestamp
    return _rule_ranking(self._kind, user_id, history)

  @tf.function(input_signature=queries.INPUT_SPECS)
  def retrieve(self, user_id, history, timestamp):
    del timestamp
    return _rule_ranking("next", user_id, history)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  paths = {}
  for kind in ("next", "diverse", "random"):
    path = str(tmp_path_factory.mktemp(kind))
    module = _RuleRanker(kind)
    tf.saved_model.save(module, path, signatures={
        contract.SERVING_SIGNATURE: module.serve.get_concrete_function(),
        contract.RETRIEVE_SIGNATURE: module.retrieve.get_concrete_function()})
    paths[kind] = path
  return paths


def _category(number: int) -> str:
  return f"c{number // 10 % 20}"


def _frame(users, items, histories, sessions, timestamps):
  return pd.DataFrame({
      contract.USER_ID: users, contract.ITEM_ID: [_item(n) for n in items],
      contract.CATEGORY: [_category(n) for n in items], contract.SESSION: sessions,
      contract.TIMESTAMP: timestamps,
      contract.HISTORY: [tuple(_item(n) for n in history) for history in histories]})


@pytest.fixture(scope="module")
def data() -> model_evaluation.EvalData:
  """Each user's eval engagement is the item after their last one, 90 % of the time. The last
  items, which are also the training engagements, are among the first N_LAST_ITEMS, so the most
  popular ones are often the next item of another user."""
  rng = np.random.default_rng(0)
  users = [f"u{user:03d}" for user in range(N_USERS)]
  last = rng.integers(0, N_LAST_ITEMS, N_USERS)
  follows = rng.random(N_USERS) < 0.9
  relevant = np.where(follows, last + 1, last + 2) % N_ITEMS
  # Users 0..199 also engaged in training (returning); the rest are new.
  train = _frame(users[:200], last[:200], [()] * 200, [f"{u}/0" for u in users[:200]],
                 np.arange(200))
  eval_examples = _frame(users, relevant, [(n,) for n in last],
                         [f"{u}/1" for u in users], 1000 + np.arange(N_USERS))
  shown = pd.DataFrame({contract.ITEM_ID: [_item(n) for n in range(N_ITEMS)],
                        contract.CATEGORY: [_category(n) for n in range(N_ITEMS)]})
  impressions = eval_examples.assign(**{contract.POSITION: -1, contract.PROPENSITY: -1.0,
                                        contract.CLICK: 1, contract.PURCHASE: 0,
                                        contract.REVENUE: 0.0})
  return model_evaluation.eval_data(train, eval_examples, shown, impressions)


CONFIG = model_evaluation.EvaluationConfig(ks=(1, 10), list_ks=(10,))


def test_metrics_of_a_known_ranking(models, data):
  vectors = model_evaluation.item_factors(data.train_engagements, data.catalog, 4)
  report = model_evaluation.evaluate(models["next"], data, vectors, CONFIG)
  follows = (data.queries[contract.ITEM_ID].str[1:].astype(int)
             == (data.queries[contract.HISTORY].str[0].str[1:].astype(int) + 1) % N_ITEMS)
  # The item after the last is ranked first; otherwise the one after that is second.
  assert report.metrics["recall@1"] == pytest.approx(follows.mean())
  assert report.metrics["recall@10"] == 1.0
  assert report.metrics["mrr@10"] == pytest.approx(follows.mean() + (1 - follows.mean()) / 2)
  assert report.metrics["precision@10"] == pytest.approx(0.1)
  # Ten consecutive items span at most two categories of ten: at least 2 x C(5, 2) of their 45
  # pairs share one.
  assert report.metrics["category_diversity@10"] <= 1 - 20 / 45 + 1e-9
  assert 0 < report.metrics["coverage@10"] <= 1
  assert report.off_policy == {}  # no propensities logged
  assert (report.queries, report.repeat_queries) == (N_USERS, 0)
  assert set(report.slices) == {"user", "item_category", "session_length"}
  assert report.slices["user"]["returning"]["queries"] == 200
  assert report.slices["user"]["new"]["queries"] == 100
  assert report.slices["session_length"] == {"1": {
      "recall@10": 1.0, "ndcg@10": report.metrics["ndcg@10"], "queries": N_USERS}}


def test_a_list_with_fewer_unseen_items_than_k_is_shorter_not_an_error(models, data):
  # The rule returns the TOP_K items after the last one (8..37); 9 is seen, so TOP_K - 1 remain,
  # fewer than k.
  eval_queries = data.queries.head(1).assign(**{contract.HISTORY: [(_item(9), _item(7))]})
  lists = model_evaluation.recommendation_lists(
      queries.RankingSignature(models["next"]), eval_queries, TOP_K + 5)
  assert lists[ranking_metrics.ITEM_ID].tolist() == [
      _item(n) for n in range(8, 8 + TOP_K) if n != 9]
  assert lists[ranking_metrics.RANK].tolist() == list(range(1, TOP_K))


def test_seen_items_are_removed_from_the_lists(models, data):
  eval_queries = data.queries.head(3).assign(**{contract.HISTORY: [
      (_item(5), _item(6)), (_item(7),), (_item(998), _item(999))]})
  lists = model_evaluation.recommendation_lists(
      queries.RankingSignature(models["next"]), eval_queries, 3)
  # The rule ranks from the last history item; its neighbours in the history are skipped.
  assert lists.groupby(model_evaluation.QUERY)[contract.ITEM_ID].agg(list).tolist() == [
      [_item(7), _item(8), _item(9)], [_item(8), _item(9), _item(10)],
      [_item(0), _item(1), _item(2)]]


def test_a_random_model_is_refused_naming_the_metric(models, data):
  gate = release_gate.GateConfig.load()
  result = candidate_evaluation.evaluate_candidate(
      models["random"], models["next"], data, gate, CONFIG)
  assert not result.verdict.blessed
  failed = {(failure.rule, failure.metric) for failure in result.verdict.failures}
  assert ("popularity", "recall@10") in failed and ("regression", "recall@10") in failed
  popularity = result.popularity.metrics["recall@10"]
  assert result.popularity.metrics["recall@10"] > 0.05 > result.candidate.metrics["recall@10"]
  assert re.search(r"recall@10 = 0\.0\d+ does not beat the most-popular ranking's "
                   rf"{popularity:.4f} by 5% of it", result.verdict.reason)
  # On its own, as a first model, it fails the popularity margins just the same, while the
  # rule-based model that knows the data is blessed.
  alone = candidate_evaluation.evaluate_candidate(models["random"], None, data, gate, CONFIG)
  assert not alone.verdict.blessed and "recall@10" in alone.verdict.reason
  assert candidate_evaluation.evaluate_candidate(models["next"], None, data, gate,
                                                 CONFIG).verdict.blessed


def test_a_reranker_worse_than_its_own_retrieval_stage_is_refused(models, data):
  gate = release_gate.GateConfig.from_yaml(
      "metrics:\n  recall@10: {max_rerank_loss: {relative: 0.02}}\n")
  result = candidate_evaluation.evaluate_candidate(models["random"], None, data, gate, CONFIG)
  # Its retrieval stage is its `retrieve` signature, the "next" rule, on the same data.
  vectors = model_evaluation.item_factors(data.train_engagements, data.catalog,
                                          CONFIG.item_factors)
  assert result.retrieval_stage == model_evaluation.evaluate(models["next"], data, vectors,
                                                             CONFIG)
  served = result.candidate.metrics["recall@10"]
  retrieved = result.retrieval_stage.metrics["recall@10"]
  assert [(failure.rule, failure.metric) for failure in result.verdict.failures] == [
      ("rerank", "recall@10")]
  assert (f"recall@10 = {served:.4f} after reranking falls behind its retrieval stage's "
          f"{retrieved:.4f} by {retrieved - served:.4f}, more than the allowed 2% of it"
          ) in result.verdict.reason
  # The "next" model serves its retrieval stage's ranking as it is: nothing lost.
  kept = candidate_evaluation.evaluate_candidate(models["next"], None, data, gate, CONFIG)
  assert kept.verdict.blessed, kept.verdict.reason


def test_popularity_lists_rank_the_training_favourites_without_the_seen_ones(data):
  lists = model_evaluation.popularity_lists(data, 3)
  counts = data.train_engagements[contract.ITEM_ID].value_counts()
  # Ties broken by item id, for lists that do not change from run to run.
  favourites = sorted(counts.index, key=lambda item: (-counts[item], item))
  for query, history in zip(data.queries[model_evaluation.QUERY],
                            data.queries[contract.HISTORY]):
    expected = [item for item in favourites if item not in history][:3]
    assert lists[lists[model_evaluation.QUERY] == query][contract.ITEM_ID].tolist() == expected


@pytest.mark.parametrize("allowance, blessed", [(0.15, True), (0.05, False)])
def test_more_diversity_for_a_little_accuracy_is_judged_as_configured(models, data, allowance,
                                                                      blessed):
  gate = release_gate.GateConfig.from_yaml(f"""
metrics:
  recall@10: {{floor: 0.05, max_regression: {{relative: {allowance}}}, pareto: true}}
  category_diversity@10: {{pareto: true}}
""")
  result = candidate_evaluation.evaluate_candidate(
      models["diverse"], models["next"], data, gate, CONFIG)
  candidate, baseline = result.candidate.metrics, result.baseline.metrics
  # The diverse list keeps the next item first but drops the second: the 10 % who wanted it.
  assert candidate["recall@10"] == pytest.approx(baseline["recall@10"] - 0.1, abs=0.04)
  assert candidate["category_diversity@10"] > baseline["category_diversity@10"] + 0.3
  assert result.verdict.blessed is blessed, result.verdict.reason
  if not blessed:
    assert [failure.rule for failure in result.verdict.failures] == ["regression"]


def test_gate_cutoffs_are_measured(models, data):
  gate = release_gate.GateConfig.from_yaml("metrics:\n  ndcg@3: {}\n  coverage@5: {}\n")
  result = candidate_evaluation.evaluate_candidate(models["next"], None, data, gate, CONFIG)
  assert {"ndcg@3", "coverage@5", "recall@10"} <= set(result.candidate.metrics)
  assert result.verdict.not_measured == ()


@pytest.fixture(scope="module")
def logged(data) -> model_evaluation.EvalData:
  """40 of `data`'s queries, each with a logged slate of three, clicked, at propensity 0.5; the
  last slate lacks position 2."""
  eval_examples = data.queries.head(40)
  slates = []
  for slate, (_, query) in enumerate(eval_examples.iterrows()):
    for position in range(3):
      slates.append({contract.USER_ID: query[contract.USER_ID],
                     contract.SESSION: f"s{slate // 2}", contract.TIMESTAMP: 1000 + slate,
                     contract.ITEM_ID: _item((int(query[contract.HISTORY][0][1:]) + 1 + position)
                                             % N_ITEMS),
                     contract.CATEGORY: "c0", contract.HISTORY: query[contract.HISTORY],
                     contract.POSITION: position, contract.PROPENSITY: 0.5,
                     contract.CLICK: 1, contract.PURCHASE: 0, contract.REVENUE: 0.0})
  return model_evaluation.eval_data(
      data.train_engagements.assign(**{contract.CATEGORY: "c0"}), eval_examples.assign(**{
          contract.SESSION: "s", contract.TIMESTAMP: 0}),
      pd.DataFrame({contract.ITEM_ID: data.catalog, contract.CATEGORY: "c0"}),
      pd.DataFrame(slates[:-1]))


def test_logged_slates_become_an_off_policy_log(models, logged):
  """Whole slates only; all rewards 1 make the self-normalised estimate exactly 1."""
  assert len(logged.impressions) == 39 * 3  # the incomplete last slate is left out
  assert logged.impressions.groupby(["session", "step"]).size().eq(3).all()
  model = queries.RankingSignature(models["next"])
  asked = []
  rank = model.rank
  model.rank = lambda users, histories, timestamps: (
      asked.extend(timestamps) or rank(users, histories, timestamps))
  estimates = model_evaluation.off_policy_estimates(model, logged, rank_temperature=5.0)
  # Five estimators over three logs, but each slate's query is ranked once, at its own time.
  assert sorted(asked) == [1000 + slate for slate in range(39)]
  assert set(estimates) == set(model_evaluation.OFF_POLICY_METRICS)
  assert estimates["ope_ctr_snips"]["value"] == pytest.approx(1.0)
  assert estimates["ope_ctr_ips"]["n_sessions"] == 20


def test_a_named_signature_is_judged_on_every_metric_of_the_served_one(models, logged):
  """The "random" model's `retrieve` is the "next" rule: evaluated with that signature it scores
  what the "next" model serves, off-policy estimates included (its served random lists match
  too few logged slates to be estimated at all)."""
  vectors = model_evaluation.item_factors(logged.train_engagements, logged.catalog, 4)
  retrieved = model_evaluation.evaluate(models["random"], logged, vectors, CONFIG,
                                        contract.RETRIEVE_SIGNATURE)
  assert retrieved == model_evaluation.evaluate(models["next"], logged, vectors, CONFIG)
  assert retrieved.metrics["recall@10"] == 1.0
  assert retrieved.metrics["ope_ctr"] == retrieved.off_policy["ope_ctr"]["value"]


def test_simulator_metrics_roll_out_the_named_signature(tmp_path):
  # The rule models' ids are not the simulated world's; the fake recommender's are.
  model_dir = fake_recommender.save(tmp_path / "1")
  served, retrieved = (model_evaluation.simulator_metrics(model_dir, 40, 0, signature_name)
                       for signature_name in (contract.SERVING_SIGNATURE,
                                              contract.RETRIEVE_SIGNATURE))
  sessions = simulator.run_users(
      generator.default_world(),
      model_policy.SavedModelPolicy(model_dir, contract.RETRIEVE_SIGNATURE), np.arange(40),
      model_evaluation.SIMULATOR_HORIZON, np.random.default_rng(0)).sessions
  assert retrieved["simulator_clicks_per_session"] == pytest.approx(sessions["clicks"].mean())
  assert retrieved["simulator_clicks_per_user"] == pytest.approx(sessions["clicks"].sum() / 40)
  assert retrieved["simulator_sessions_per_user"] == pytest.approx(len(sessions) / 40)
  assert retrieved["simulator_return_rate"] == pytest.approx(sessions["returned"].mean())
  assert retrieved["simulator_satisfaction"] == pytest.approx(sessions["satisfaction"].mean())
  assert 1.0 < retrieved["simulator_sessions_per_user"] <= model_evaluation.SIMULATOR_HORIZON
  assert set(retrieved) == set(model_evaluation.SIMULATOR_METRICS)
  assert served != retrieved


def test_the_record_and_report_are_written(models, data, tmp_path):
  gate = release_gate.GateConfig.load()
  result = candidate_evaluation.evaluate_candidate(
      models["diverse"], models["next"], data, gate, CONFIG,
      past_models=[{"name": "evaluation 1", "metrics": {"recall@10": 0.5, "coverage@10": 0.1}}])
  candidate_evaluation.write(result, str(tmp_path))
  record = candidate_evaluation.read(str(tmp_path))
  assert record["verdict"]["reason"] == result.verdict.reason
  assert record["baseline"]["metrics"] == result.baseline.metrics
  assert record["retrieval_stage"]["metrics"] == result.retrieval_stage.metrics
  page = (tmp_path / candidate_evaluation.REPORT_FILE).read_text()
  assert html.escape(result.verdict.reason) in page
  # Gated bars, three Pareto scatters (three Pareto metrics), every image a decodable PNG.
  images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
  assert len(images) == 4
  assert all(tf.io.decode_png(base64.b64decode(image)).shape[0] > 100 for image in images)
  for heading in ("Metrics", "Gated metrics", "Pareto front", "Slices"):
    assert f"<h2>{heading}</h2>" in page
  assert not list(tmp_path.glob("*.partial"))


def test_re_engagements_with_a_history_item_are_left_out_and_counted(data):
  raw = data.queries.assign(**{contract.SESSION: "s", contract.TIMESTAMP: 0})
  repeated = raw.head(5).assign(**{contract.ITEM_ID: raw.head(5)[contract.HISTORY].str[0]})
  shown = pd.DataFrame({contract.ITEM_ID: data.catalog, contract.CATEGORY: "c0"})
  impressions = raw.assign(**{contract.POSITION: -1, contract.PROPENSITY: -1.0})
  mixed = model_evaluation.eval_data(
      data.train_engagements.assign(**{contract.CATEGORY: "c0"}),
      pd.concat([repeated, raw], ignore_index=True), shown, impressions)
  assert mixed.repeat_queries == 5
  assert len(mixed.queries) == N_USERS
  assert not any(item in history for item, history in
                 zip(mixed.queries[contract.ITEM_ID], mixed.queries[contract.HISTORY]))
  # Session length still counts the repeats: 305 engagements in session "s".
  assert set(mixed.queries["session_length_bucket"]) == {"8+"}
  with pytest.raises(ValueError, match="Every eval engagement is with an item of its history"):
    model_evaluation.eval_data(data.train_engagements.assign(**{contract.CATEGORY: "c0"}),
                               repeated, shown, impressions)
