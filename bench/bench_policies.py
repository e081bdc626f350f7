"""On-policy value of the DQN reranking against retrieval only, on the simulator.

Run: .venv/bin/python bench/bench_policies.py [--model HOME/serving/recommender/VERSION]
         [--seeds 5] [--sessions 2000] [--policy serving_default] [--baseline retrieve]
         [--out bench/results/policies.json]

Two signatures of one exported SavedModel, by default `serving_default` (retrieval top-N
reranked by the DQN head) and `retrieve` (the two-tower top-K only), each act as a simulator
policy (components/simulation/model_policy.py) in the default dataset's world, whose users wrote the
data the model was trained on. Without --model, the real pipeline (`recsys run` on the built-in
dataset, into a temporary home) trains and pushes one first.

For each seed 0 .. seeds-1, both policies run `--sessions` sessions with that seed, so they meet
the same users in the same order from the same starting interests, and every user starts with an
empty click history (`simulator.simulate`). Per session: clicks, purchases, revenue and the
session's cumulative reward (`session_reward`). Reported per policy: the mean per session over
all seeds. For policy minus baseline: the mean over seeds of the difference of their per-seed
means and a 95% Student t interval over those paired differences. Seeds are the independent
replicates; sessions of one seed share users and random draws, so they are not.

For scale, two reference policies run on the same seeds: `logging`, the policy that logged the
data the model learnt from, and `oracle` (policies.OraclePolicy), which is handed the users'
hidden long-term interest and ranks by their click probability.
"""
import argparse
import json
import os
import pathlib
import platform
import sys
import tempfile
import time
from typing import Dict, Sequence

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from click.testing import CliRunner
import numpy as np  # pylint: disable=g-import-not-at-top
import pandas as pd
from scipy import stats

from components.simulation import generator
from components.simulation import model_policy
from components.simulation import policies
from components.simulation import simulator
from pipeline import cli
from pipeline import configs
import schemas
from schemas import contract

METRICS = ("clicks", "purchases", "revenue", "reward")
CONFIDENCE = 0.95
# The weights the DQN head is trained with (the pipeline's default RewardConfig), per unit of each
# session total, so sessions are scored the way the head is trained to maximise. Its novelty
# term is left out: the simulator does not report it, and its default weight is 0.
_REWARD = configs.PipelineConfig().model.ranker.reward
REWARD_WEIGHTS = {"clicks": _REWARD.click, "purchases": _REWARD.purchase,
                  "revenue": _REWARD.revenue}


def session_reward(sessions: pd.DataFrame) -> pd.Series:
  """Each session's cumulative reward: REWARD_WEIGHTS applied to its totals.

  A step's reward is linear in its clicks, purchases and revenue, so weighting the session's
  totals equals summing its steps' rewards.
  """
  return sum(weight * sessions[total] for total, weight in REWARD_WEIGHTS.items())


def paired_difference(policy: Sequence[float], baseline: Sequence[float],
                      confidence: float = CONFIDENCE) -> Dict[str, float]:
  """Mean of the paired differences policy - baseline and its Student t confidence interval.

  Args:
    policy: Per seed, the policy's mean per session.
    baseline: Per seed, in the same order, the baseline's.
    confidence: The interval's coverage.

  Returns:
    `mean`, `low` and `high`: mean ± t(confidence, n - 1) * sd / sqrt(n) over the n seeds'
    differences, sd with n - 1 degrees of freedom. Only a handful of seeds run, so the t quantile,
    not the normal one, gives the interval its coverage.
  """
  differences = np.asarray(policy, dtype=float) - np.asarray(baseline, dtype=float)
  n = len(differences)
  if n < 2:
    raise ValueError(f"a t interval needs the differences of at least 2 seeds, got {n}")
  mean = differences.mean()
  half_width = (stats.t.ppf((1 + confidence) / 2, df=n - 1) * differences.std(ddof=1)
                / np.sqrt(n))
  return {"mean": float(mean), "low": float(mean - half_width), "high": float(mean + half_width)}


def _means_per_seed(policy: simulator.Policy, seeds: Sequence[int], n_sessions: int,
                    world: simulator.World) -> pd.DataFrame:
  """[seed, METRICS]: the policy's mean per session of each metric, one row per seed."""
  rows = []
  for seed in seeds:
    sessions = simulator.simulate(policy, n_sessions, seed, world=world).sessions
    rows.append(sessions.assign(reward=session_reward(sessions))[list(METRICS)].mean())
  return pd.DataFrame(rows, index=pd.Index(seeds, name="seed"))


def _trained_model(work_dir: pathlib.Path) -> pathlib.Path:
  """Trains and pushes a model with the real pipeline on the built-in dataset; its version dir."""
  home = work_dir / "home"
  # The bench measures the model, it does not gate it: push whatever trained.
  result = CliRunner().invoke(cli.main, ["run", "--home", str(home), "--gate-config",
                                         str(schemas.REPORT_ONLY_GATE_CONFIG)],
                              catch_exceptions=False)
  if result.exit_code:
    raise SystemExit(result.output)
  (model_dir,) = configs.PipelineConfig(home=home).model_base_path.iterdir()
  return model_dir


def _markdown(report: dict) -> str:
  policy, baseline = report["policy"], report["baseline"]
  lines = [f"| per session | {policy} | {baseline} | difference | 95% CI | logging | oracle |",
           "|---|---|---|---|---|---|---|"]
  for metric in METRICS:
    difference = report["difference"][metric]
    lines.append(f"| {metric} | {report['per_session']['policy'][metric]:.4f} "
                 f"| {report['per_session']['baseline'][metric]:.4f} "
                 f"| {difference['mean']:+.4f} "
                 f"| [{difference['low']:+.4f}, {difference['high']:+.4f}] "
                 f"| {report['per_session']['logging'][metric]:.4f} "
                 f"| {report['per_session']['oracle'][metric]:.4f} |")
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
  parser.add_argument("--model", type=pathlib.Path,
                      help="A pushed SavedModel version dir; default: train one.")
  parser.add_argument("--seeds", type=int, default=5)
  parser.add_argument("--sessions", type=int, default=2000)
  parser.add_argument("--policy", default=contract.SERVING_SIGNATURE)
  parser.add_argument("--baseline", default=contract.RETRIEVE_SIGNATURE)
  parser.add_argument("--out", type=pathlib.Path,
                      default=pathlib.Path(__file__).parent / "results" / "policies.json")
  args = parser.parse_args()
  seeds = list(range(args.seeds))
  world = generator.default_world()
  start = time.perf_counter()
  # The trained model's files live in work_dir, so its policies run before it is removed.
  with tempfile.TemporaryDirectory() as work_dir:
    model_dir = args.model or _trained_model(pathlib.Path(work_dir))
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    means = {role: _means_per_seed(model_policy.SavedModelPolicy(model_dir, name, world.n_items),
                                   seeds, args.sessions, world)
             for role, name in (("policy", args.policy), ("baseline", args.baseline))}
  references = {"logging": generator.logging_policy(world), "oracle": policies.OraclePolicy(world)}
  means.update({role: _means_per_seed(policy, seeds, args.sessions, world)
                for role, policy in references.items()})
  report = {
      "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores, "
                 f"Python {platform.python_version()}",
      "model": str(args.model) if args.model else "trained by `recsys run` on the built-in dataset",
      "policy": args.policy, "baseline": args.baseline,
      "seeds": seeds, "sessions_per_seed": args.sessions, "reward_weights": REWARD_WEIGHTS,
      "per_session": {role: means[role].mean().round(4).to_dict() for role in means},
      "per_seed": {role: {metric: means[role][metric].round(4).tolist() for metric in METRICS}
                   for role in means},
      "difference": {metric: {key: round(value, 4) for key, value in paired_difference(
          means["policy"][metric], means["baseline"][metric]).items()} for metric in METRICS},
      "train_seconds": None if args.model else round(train_seconds, 1),
      "simulation_seconds": round(time.perf_counter() - start, 1),
  }
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(json.dumps(report, indent=2) + "\n")
  print(_markdown(report))


if __name__ == "__main__":
  main()
