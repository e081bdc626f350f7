"""bench/bench_policies.py: its reward, its statistics and one small run on a fake model."""
import importlib.util
import json
import pathlib
import sys
import types

import numpy as np
import pandas as pd
import pytest

from components.simulation import simulator
from tests import fake_recommender

_BENCH = pathlib.Path(__file__).resolve().parents[2] / "bench" / "bench_policies.py"
_spec = importlib.util.spec_from_file_location("bench_policies", _BENCH)
bench_policies = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_policies)


def test_session_reward_weights_clicks_purchases_and_revenue():
  sessions = pd.DataFrame({"clicks": [3, 0], "purchases": [1, 0], "revenue": [25.0, 0.0]})
  np.testing.assert_allclose(bench_policies.session_reward(sessions), [3 + 1 + 0.25, 0.0])


def test_paired_difference_matches_a_hand_computed_t_interval():
  # Differences 2, 3, 1: mean 2, sd 1; t(0.975, 2 degrees of freedom) = 4.3027 from a t table,
  # so the half width is 4.3027 * 1 / sqrt(3) = 2.4841.
  result = bench_policies.paired_difference([3.0, 5.0, 4.0], [1.0, 2.0, 3.0])
  assert result["mean"] == pytest.approx(2.0)
  assert result["low"] == pytest.approx(2.0 - 2.4841, abs=1e-4)
  assert result["high"] == pytest.approx(2.0 + 2.4841, abs=1e-4)


def test_paired_difference_needs_two_seeds():
  with pytest.raises(ValueError, match="at least 2 seeds"):
    bench_policies.paired_difference([1.0], [0.5])


def test_per_user_metrics_count_users_without_later_sessions():
  sessions = pd.DataFrame({"session": [0, 1, 2], "user": [0, 0, 1], "clicks": [2, 1, 0],
                           "purchases": [1, 0, 0], "revenue": [10.0, 0.0, 0.0],
                           "satisfaction": [1.0, -1.0, 0.0], "steps": [3, 2, 1],
                           "returned": [True, False, False]})
  # Session 0 showed items 0 and 1, session 1 item 2, session 2 items 1 and 2; item 1 is bait.
  impressions = pd.DataFrame({"session": [0, 0, 1, 2, 2], "item": [0, 1, 2, 1, 2]})
  world = types.SimpleNamespace(item_clickbait=np.array([False, True, False]))
  result = simulator.SimulationResult(sessions=sessions, impressions=impressions, state=None)
  metrics = bench_policies.per_user_metrics(result, world, n_users=4)
  # Rewards 2 + 1 + 0.1 and 1: over 4 users, two of whom had no session here.
  assert metrics["reward_per_user"] == pytest.approx(4.1 / 4)
  assert metrics["sessions_per_user"] == pytest.approx(3 / 4)
  assert metrics["return_rate"] == pytest.approx(1 / 3)
  assert metrics["steps"] == pytest.approx(2.0)
  assert metrics["clickbait"] == pytest.approx((0.5 + 0.0 + 0.5) / 3)


def test_a_policy_against_itself_differs_by_exactly_zero(tmp_path, monkeypatch):
  """Every run of a seed meets the same users, so a deterministic policy repeats itself exactly."""
  model_dir = fake_recommender.save(tmp_path / "model" / "1")
  out = tmp_path / "policies.json"
  monkeypatch.setattr(sys, "argv", [
      str(_BENCH), "--model", str(model_dir), "--myopic-model", str(model_dir), "--seeds", "2",
      "--users", "40", "--horizon", "3", "--out", str(out)])
  bench_policies.main()
  report = json.loads(out.read_text())
  means = report["means"]
  assert means["serving_default"] == means["myopic"]
  assert means["serving_default"]["clicks"] > 0
  assert means["oracle"]["clicks"] > means["logging"]["clicks"] > 0
  assert 1.0 <= means["serving_default"]["sessions_per_user"] <= 3.0
  for metric in bench_policies.METRICS:
    assert report["difference"]["myopic"][metric] == {"mean": 0.0, "low": 0.0, "high": 0.0}
