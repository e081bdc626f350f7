"""bench/bench_loop.py's round on a fake model: the real server logs, the simulator's clicks become
feedback, and the two join into events with the served propensities and the policy's clock."""
import importlib.util
import pathlib

import numpy as np

from components.data import serving_logs
from components.simulation import simulator
from pipeline import configs
from schemas import contract
from serving import push
from tests import fake_recommender

_BENCH = pathlib.Path(__file__).resolve().parents[2] / "bench" / "bench_loop.py"
_spec = importlib.util.spec_from_file_location("bench_loop", _BENCH)
bench_loop = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_loop)

START = 1_800_000_000


def test_a_served_round_logs_every_slate_and_its_feedback_joins(tmp_path):
  home = tmp_path / "home"
  model_dir = fake_recommender.save(tmp_path / "model" / "1")
  push.push(model_dir, configs.PipelineConfig(home=home).serving_root, version=5,
            request_log_sampling_rate=1.0)
  world = simulator.World.sample(np.random.default_rng(0), n_users=80, n_items=
                                 fake_recommender.N_ITEMS, n_categories=4, clickbait_share=0.15)
  users = np.arange(70)  # more than one request of TF Serving's 64 rows per step

  result, feedback, versions, clock = bench_loop.serve_round(home, world, users, 2, 0, START,
                                                             "t")

  assert versions == {5}
  slates = serving_logs.read_prediction_logs(bench_loop.request_log_dir(home))
  events = serving_logs.served_events(slates, serving_logs.read_feedback(
      _written(feedback, tmp_path / "feedback.csv")), slate_size=bench_loop.SLATE_SIZE)["events"]
  impressions = result.impressions
  assert len(events) == len(impressions)
  assert (events[contract.EVENT] != contract.IMPRESSION).sum() == impressions["click"].sum() > 0
  assert (events[contract.EVENT] == contract.PURCHASE_EVENT).sum() == impressions["purchase"].sum()
  # The fake model's propensity at position j is 1 / (j + 1): the served policy's, as logged.
  np.testing.assert_allclose(events[contract.PROPENSITY],
                             1 / (events[contract.POSITION].to_numpy(float) + 1), rtol=1e-6)
  np.testing.assert_allclose(np.sort(impressions["propensity"]),
                             np.sort(events[contract.PROPENSITY]), rtol=1e-6)
  # The policy's clock: 60 s between a session's slates, 2 hours before each round of sessions.
  times = np.unique(events[contract.TIMESTAMP])
  gaps = np.diff(times)
  assert set(gaps) <= {bench_loop.STEP_SECONDS, bench_loop.SESSION_GAP_SECONDS}
  assert (gaps == bench_loop.SESSION_GAP_SECONDS).sum() == result.sessions["round"].max()
  assert times[0] == START + bench_loop.SESSION_GAP_SECONDS and times[-1] == clock


def _written(frame, path):
  frame.to_csv(path, index=False)
  return path
