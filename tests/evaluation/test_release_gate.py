"""The release gate's rules (floors, popularity margins, regression allowances, Pareto, rerank
losses) and its configuration file."""
import pytest

from components.evaluation import release_gate
import schemas

# A little accuracy against much more diversity: the gate's classic trade.
ACCURATE = {"recall@10": 0.300, "coverage@10": 0.20, "exposure_gini@10": 0.80}
DIVERSE = {"recall@10": 0.290, "coverage@10": 0.45, "exposure_gini@10": 0.60}


def _gate(text: str) -> release_gate.GateConfig:
  return release_gate.GateConfig.from_yaml(text, source="gate.yaml")


TRADE_GATE = """
metrics:
  recall@10: {floor: 0.1, max_regression: {relative: %s}, pareto: true, weight: 1.0}
  coverage@10: {max_regression: {absolute: 0.05}, pareto: true, weight: 0.5}
  exposure_gini@10: {direction: lower, weight: 0.25}
"""


def test_the_shipped_configurations_load():
  gate = release_gate.GateConfig.load()
  assert "recall@10" in gate.pareto_metrics
  assert release_gate.GateConfig.load(schemas.REPORT_ONLY_GATE_CONFIG).rules


def test_first_model_is_judged_on_floors_only():
  gate = _gate(TRADE_GATE % 0.0)
  verdict = release_gate.judge(gate, ACCURATE)
  assert verdict.blessed
  assert verdict.reason.startswith(
      "blessed: floors and popularity margins (first model: no baseline) hold")
  refused = release_gate.judge(gate, dict(ACCURATE, **{"recall@10": 0.04}))
  assert not refused.blessed
  assert [(failure.rule, failure.metric) for failure in refused.failures] == [
      ("floor", "recall@10")]
  assert "recall@10 = 0.0400 misses its floor 0.1000 by 0.0600" in refused.reason


POPULARITY_GATE = """
metrics:
  ndcg@10: {over_popularity: {relative: 0.05}}
  recall@10: {over_popularity: {absolute: 0.01}}
  exposure_gini@10: {direction: lower, over_popularity: {absolute: 0.1}}
"""
POPULARITY = {"ndcg@10": 0.20, "recall@10": 0.10, "exposure_gini@10": 0.95}


def test_a_first_model_must_beat_popularity_by_the_margin():
  gate = _gate(POPULARITY_GATE)
  beats = {"ndcg@10": 0.211, "recall@10": 0.111, "exposure_gini@10": 0.84}
  assert release_gate.judge(gate, beats, popularity=POPULARITY).blessed
  short = {"ndcg@10": 0.209, "recall@10": 0.105, "exposure_gini@10": 0.90}
  verdict = release_gate.judge(gate, short, popularity=POPULARITY)
  assert not verdict.blessed
  assert [(failure.rule, failure.metric) for failure in verdict.failures] == [
      ("popularity", "ndcg@10"), ("popularity", "recall@10"),
      ("popularity", "exposure_gini@10")]
  # 5 % of 0.20 above it is 0.21; a "lower" metric must be below popularity's by the margin.
  assert ("ndcg@10 = 0.2090 does not beat the most-popular ranking's 0.2000 by 5% of it: short "
          "of 0.2100 by 0.0010") in verdict.reason
  assert ("recall@10 = 0.1050 does not beat the most-popular ranking's 0.1000 by 0.0100: short "
          "of 0.1100 by 0.0050") in verdict.reason
  assert "exposure_gini@10 = 0.9000 does not beat" in verdict.reason
  # Without popularity's figures (or for a metric it has none of) the rule has nothing to test.
  assert release_gate.judge(gate, short).blessed
  only_recall = release_gate.judge(gate, short, popularity={"recall@10": 0.2})
  assert [failure.metric for failure in only_recall.failures] == ["recall@10"]


def test_the_popularity_margin_round_trips_and_is_validated():
  gate = _gate(POPULARITY_GATE)
  assert release_gate.GateConfig.from_yaml(gate.to_yaml()) == gate
  with pytest.raises(release_gate.GateConfigError,
                     match="metric 'ndcg@10': over_popularity must be"):
    _gate("metrics:\n  ndcg@10: {over_popularity: 0.05}\n")
  with pytest.raises(release_gate.GateConfigError,
                     match="over_popularity.relative must be a number >= 0"):
    _gate("metrics:\n  ndcg@10: {over_popularity: {relative: -1}}\n")


def test_the_default_gate_needs_no_absolute_accuracy_floor_but_beats_popularity():
  gate = release_gate.GateConfig.load()
  accuracy = [rule for rule in gate.rules if rule.name in ("recall@10", "ndcg@10")]
  assert accuracy and all(rule.floor is None and rule.over_popularity for rule in accuracy)
  # Real data's figures far below the simulator's are blessed when they beat popularity...
  popularity = {"recall@10": 0.02, "ndcg@10": 0.01, "coverage@10": 0.002}
  candidate = {"recall@10": 0.04, "ndcg@10": 0.02, "coverage@10": 0.1}
  assert release_gate.judge(gate, candidate, popularity=popularity).blessed
  # ... and a model no better than popularity is refused, naming the rule.
  verdict = release_gate.judge(gate, dict(candidate, **popularity), popularity=popularity)
  assert not verdict.blessed
  assert {failure.rule for failure in verdict.failures} == {"popularity"}


RERANK_GATE = """
metrics:
  simulator_clicks_per_session: {max_rerank_loss: {relative: 0.02}}
  ope_ctr: {max_rerank_loss: {absolute: 0.01}}
  exposure_gini@10: {direction: lower, max_rerank_loss: {absolute: 0.05}}
"""
RETRIEVAL_STAGE = {"simulator_clicks_per_session": 12.0, "ope_ctr": 0.120,
                   "exposure_gini@10": 0.60}


def test_a_reranker_within_its_allowances_of_its_retrieval_stage_is_blessed():
  # 1.7 % fewer clicks and 0.009 less CTR than retrieval alone; exposure less concentrated.
  served = {"simulator_clicks_per_session": 11.8, "ope_ctr": 0.111, "exposure_gini@10": 0.55}
  verdict = release_gate.judge(_gate(RERANK_GATE), served, retrieval_stage=RETRIEVAL_STAGE)
  assert verdict.reason == ("blessed: floors and popularity margins (first model: no baseline) "
                            "hold, as do the rerank allowances")
  assert release_gate.judge(_gate(RERANK_GATE), served, served,
                            retrieval_stage=RETRIEVAL_STAGE).reason == (
      "blessed: floors, popularity margins, regressions and Pareto rule hold, as do the rerank "
      "allowances")


def test_a_reranker_that_loses_to_its_own_retrieval_stage_is_refused_naming_metric_and_amount():
  served = {"simulator_clicks_per_session": 11.6, "ope_ctr": 0.105, "exposure_gini@10": 0.70}
  gate = _gate(RERANK_GATE)
  # A first model: the rule needs no baseline.
  verdict = release_gate.judge(gate, served, retrieval_stage=RETRIEVAL_STAGE)
  assert not verdict.blessed
  # The simulator measured the reranking on-policy: its off-policy estimate is not judged.
  assert [(failure.rule, failure.metric) for failure in verdict.failures] == [
      ("rerank", "simulator_clicks_per_session"), ("rerank", "exposure_gini@10")]
  assert ("simulator_clicks_per_session = 11.6000 after reranking falls behind its retrieval "
          "stage's 12.0000 by 0.4000, more than the allowed 2% of it") in verdict.reason
  # On logged data the simulator cannot replay, the estimate is.
  logged = {name: value for name, value in RETRIEVAL_STAGE.items()
            if name != "simulator_clicks_per_session"}
  off_policy = release_gate.judge(gate, served, retrieval_stage=logged)
  assert [failure.metric for failure in off_policy.failures] == ["ope_ctr", "exposure_gini@10"]
  assert ("ope_ctr = 0.1050 after reranking falls behind its retrieval stage's 0.1200 by 0.0150, "
          "more than the allowed 0.0100") in off_policy.reason
  # Lower is better: exposure more concentrated than retrieval's is the loss.
  assert ("exposure_gini@10 = 0.7000 after reranking falls behind its retrieval stage's 0.6000 "
          "by 0.1000, more than the allowed 0.0500") in verdict.reason
  assert "\n" not in verdict.reason
  with_baseline = release_gate.judge(gate, served, served, retrieval_stage=RETRIEVAL_STAGE)
  assert with_baseline.failures == verdict.failures
  # Without the retrieval stage's figures (or for a metric it has none of) the rule has nothing
  # to test.
  assert release_gate.judge(gate, served).blessed
  only_ctr = release_gate.judge(gate, served, retrieval_stage={"ope_ctr": 0.12})
  assert [failure.metric for failure in only_ctr.failures] == ["ope_ctr"]


def test_the_rerank_allowance_round_trips():
  gate = _gate(RERANK_GATE)
  assert release_gate.GateConfig.from_yaml(gate.to_yaml()) == gate
  assert gate.rules[0].max_rerank_loss == (release_gate.RELATIVE, 0.02)


def test_the_default_gate_holds_the_head_to_its_retrieval_stage_on_business_metrics_only():
  gate = release_gate.GateConfig.load()
  assert {rule.name for rule in gate.rules if rule.max_rerank_loss} == {
      "simulator_clicks_per_user", "ope_revenue_per_impression"}
  # Ratings data measure neither: an untrained head's lists are retrieval's, and accuracy on
  # logged engagements is not what the head optimises, so it is not held to retrieval's.
  popularity = {"recall@10": 0.02, "ndcg@10": 0.01}
  served = {"recall@10": 0.04, "ndcg@10": 0.02}
  verdict = release_gate.judge(gate, served, popularity=popularity,
                               retrieval_stage={"recall@10": 0.05, "ndcg@10": 0.03})
  assert verdict.blessed, verdict.reason


def test_trading_a_little_accuracy_for_diversity_within_the_allowance_is_blessed():
  # recall falls 3.3 % relative, inside a 5 % allowance; coverage rises: not dominated.
  verdict = release_gate.judge(_gate(TRADE_GATE % 0.05), DIVERSE, ACCURATE)
  assert verdict.blessed, verdict.reason
  assert verdict.reason.startswith(
      "blessed: floors, popularity margins, regressions and Pareto rule hold")


def test_the_same_trade_beyond_the_allowance_is_refused_naming_metric_and_amount():
  verdict = release_gate.judge(_gate(TRADE_GATE % 0.02), DIVERSE, ACCURATE)
  assert not verdict.blessed
  (failure,) = verdict.failures
  assert (failure.rule, failure.metric) == ("regression", "recall@10")
  assert ("recall@10 = 0.2900 regresses from the baseline's 0.3000 by 0.0100, more than the "
          "allowed 2% of it") in verdict.reason
  assert "\n" not in verdict.reason


def test_a_candidate_the_baseline_dominates_is_refused_by_the_pareto_rule():
  worse = {"recall@10": 0.295, "coverage@10": 0.19, "exposure_gini@10": 0.8}
  verdict = release_gate.judge(_gate(TRADE_GATE % 0.05), worse, ACCURATE)
  assert [failure.rule for failure in verdict.failures] == ["pareto"]
  assert "worse on recall@10 0.2950 vs 0.3000, coverage@10 0.1900 vs 0.2000" in verdict.reason
  # An identical candidate ties everywhere and is not dominated.
  assert release_gate.judge(_gate(TRADE_GATE % 0.05), ACCURATE, ACCURATE).blessed


def test_pareto_epsilon_counts_small_differences_as_ties():
  gate = _gate("""
metrics:
  recall@10: {pareto: true, pareto_epsilon: 0.01}
  coverage@10: {pareto: true, pareto_epsilon: 0.01}
""")
  noisy = {"recall@10": 0.295, "coverage@10": 0.195}
  assert release_gate.judge(gate, noisy, ACCURATE).blessed
  assert not release_gate.judge(gate, {"recall@10": 0.28, "coverage@10": 0.195},
                                ACCURATE).blessed


def test_lower_is_better_metrics_regress_upwards_and_have_ceilings():
  gate = _gate("""
metrics:
  exposure_gini@10: {direction: lower, floor: 0.9, max_regression: {absolute: 0.05}}
""")
  assert release_gate.judge(gate, {"exposure_gini@10": 0.84}, {"exposure_gini@10": 0.80}).blessed
  verdict = release_gate.judge(gate, {"exposure_gini@10": 0.95}, {"exposure_gini@10": 0.80})
  assert [failure.rule for failure in verdict.failures] == ["floor", "regression"]
  assert "exposure_gini@10 = 0.9500 misses its ceiling 0.9000 by 0.0500" in verdict.reason
  assert "regresses from the baseline's 0.8000 by 0.1500" in verdict.reason


def test_weighted_score_negates_lower_is_better_metrics():
  gate = _gate(TRADE_GATE % 0.05)
  verdict = release_gate.judge(gate, DIVERSE, ACCURATE)
  assert verdict.candidate_score == pytest.approx(0.29 + 0.5 * 0.45 - 0.25 * 0.60)
  assert verdict.baseline_score == pytest.approx(0.30 + 0.5 * 0.20 - 0.25 * 0.80)
  assert "weighted score 0.3650 vs baseline 0.2000" in verdict.reason


def test_metrics_a_run_cannot_measure_are_listed_not_failed():
  gate = _gate("""
metrics:
  recall@10: {floor: 0.1}
  simulator_ctr: {floor: 0.5}
""")
  verdict = release_gate.judge(gate, {"recall@10": 0.2})
  assert verdict.blessed and verdict.not_measured == ("simulator_ctr",)


@pytest.mark.parametrize("text, message", [
    ("metrics:\n  recal@10: {floor: 0.1}\n", "metric 'recal@10': the evaluator writes no such"),
    ("metrics:\n  recall@10: {flor: 0.1}\n", "metric 'recall@10': unknown keys \\['flor'\\]"),
    ("metrics:\n  recall@10: {floor: high}\n", "floor must be a finite number, got 'high'"),
    ("metrics:\n  recall@10: {direction: up}\n", "direction must be 'higher' or 'lower'"),
    ("metrics:\n  recall@10: {max_regression: 0.1}\n", "max_regression must be {relative: X}"),
    ("metrics:\n  recall@10: {max_regression: {relative: -1}}\n",
     "max_regression.relative must be a number >= 0, got -1"),
    ("metrics:\n  ope_ctr: {max_rerank_loss: 0.01}\n",
     "metric 'ope_ctr': max_rerank_loss must be {relative: X} or {absolute: X}, got 0.01"),
    ("metrics:\n  ope_ctr: {max_rerank_loss: {relative: 0.1, absolute: 0.01}}\n",
     "metric 'ope_ctr': max_rerank_loss must be {relative: X}"),
    ("metrics:\n  ope_ctr: {max_rerank_loss: {absolute: -0.01}}\n",
     "metric 'ope_ctr': max_rerank_loss.absolute must be a number >= 0, got -0.01"),
    ("metrics:\n  recall@10: {pareto: 1}\n", "pareto must be true or false"),
    ("metrics: {}\n", "'metrics' is empty"),
    ("objectives: []\n", "expected a top-level 'metrics:' mapping"),
    ("metrics: [\n", "not valid YAML"),
])
def test_invalid_configurations_name_the_file_metric_and_key(text, message):
  with pytest.raises(release_gate.GateConfigError, match=f"gate.yaml: .*{message}"):
    _gate(text)


def test_an_unreadable_configuration_names_the_path(tmp_path):
  with pytest.raises(release_gate.GateConfigError, match="missing.yaml: cannot read"):
    release_gate.GateConfig.load(tmp_path / "missing.yaml")


def test_without_weights_the_reason_has_no_score():
  gate = _gate("metrics:\n  recall@10: {floor: 0.5}\n")
  verdict = release_gate.judge(gate, {"recall@10": 0.4}, {"recall@10": 0.6})
  assert verdict.reason == "refused: recall@10 = 0.4000 misses its floor 0.5000 by 0.1000"
  assert verdict.candidate_score is None and verdict.baseline_score is None
  assert release_gate.judge(gate, {"recall@10": 0.6}, {"recall@10": 0.6}).reason == (
      "blessed: floors, popularity margins, regressions and Pareto rule hold")


BUSINESS_GATE = """
metrics:
  simulator_revenue_per_user: {floor: 40.0}
  simulator_conversion_rate: {floor: 0.05}
  simulator_satisfaction: {floor: 0.0}
"""


@pytest.mark.parametrize("metric,value", [("simulator_revenue_per_user", 39.0),
                                          ("simulator_conversion_rate", 0.04),
                                          ("simulator_satisfaction", -0.2)])
def test_revenue_conversion_and_satisfaction_floors_refuse_naming_the_metric(metric, value):
  gate = _gate(BUSINESS_GATE)
  meets = {"simulator_revenue_per_user": 45.0, "simulator_conversion_rate": 0.06,
           "simulator_satisfaction": 0.3}
  assert release_gate.judge(gate, meets).blessed
  verdict = release_gate.judge(gate, dict(meets, **{metric: value}))
  assert not verdict.blessed
  assert [(failure.rule, failure.metric) for failure in verdict.failures] == [("floor", metric)]
  assert f"{metric} = {value:.4f} misses its floor" in verdict.reason


HYPERVOLUME_GATE = """
metrics:
  recall@10: {weight: 1.0}
hypervolume: {max_shrink: {relative: 0.1}}
"""


@pytest.mark.parametrize("candidate_volume, blessed", [(0.95, True), (1.2, True), (0.85, False)])
def test_the_hypervolume_rule_blesses_and_refuses_as_configured(candidate_volume, blessed):
  gate = _gate(HYPERVOLUME_GATE)
  verdict = release_gate.judge(gate, ACCURATE, ACCURATE, hypervolumes=(candidate_volume, 1.0))
  assert verdict.blessed == blessed
  if not blessed:
    (failure,) = verdict.failures
    assert failure.rule == "hypervolume"
    assert "0.85 shrinks from the baseline front's 1 by 0.15" in failure.message
    assert "more than the allowed 10% of it" in verdict.reason


def test_the_hypervolume_rule_needs_both_fronts_and_round_trips():
  gate = _gate(HYPERVOLUME_GATE)
  assert release_gate.judge(gate, ACCURATE, ACCURATE).blessed
  assert release_gate.GateConfig.from_yaml(gate.to_yaml()) == gate
  assert gate.hypervolume_max_shrink == (release_gate.RELATIVE, 0.1)
  # Without the rule configured, any shrink passes.
  assert release_gate.judge(_gate(TRADE_GATE % 0.1), ACCURATE, ACCURATE,
                            hypervolumes=(0.1, 1.0)).blessed
  with pytest.raises(release_gate.GateConfigError, match="gate.yaml: hypervolume"):
    _gate("metrics: {recall@10: {}}\nhypervolume: {max_shrink: {percent: 5}}")
  with pytest.raises(release_gate.GateConfigError, match="one key, max_shrink"):
    _gate("metrics: {recall@10: {}}\nhypervolume: {shrink: 5}")
