"""On-policy value of the DQN reranking against retrieval only and a myopic head, per user.

Run: .venv/bin/python bench/bench_policies.py [--model HOME/serving/recommender/VERSION]
         [--myopic-model DIR] [--seeds 5] [--users 2000] [--events 200000] [--horizon 5]
         [--dynamics satisfaction|independent] [--reward TERM=WEIGHT,...] [--work-dir DIR]
         [--out bench/results/policies.json]

The world is the built-in dataset's (components/simulation/generator.py, seed 0) with `--users`
users, and the models learn from a dataset the generator logs in it (`--events` impressions;
the built-in one has 1,000 users and 100,000). `--dynamics` names the users' behaviour
(`simulator.DYNAMICS`): `independent` is the simulator before satisfaction, clickbait and
returns, where a myopic ranking is near-optimal. Policies, each run as a simulator policy
(components/simulation/model_policy.py) in that world, whose users wrote the data the models were
trained on:
  * `serving_default`: the exported graph, retrieval top-N reranked by the DQN head;
  * `retrieve`: the same model's two-tower top-K only;
  * `myopic`: the `serving_default` of a model trained the same way with the head's discount
    gamma = session_gamma = 0, which values an item by its immediate reward only;
  * `logging`, the policy that logged the training data, and `oracle` (policies.OraclePolicy),
    which is handed the users' hidden interest and ranks by click probability, for scale.
Without --model (--myopic-model) the real pipeline (`recsys run --interactions` on that dataset,
into a home under --work-dir, a temporary directory by default; with `--set model.ranker.gamma=0
--set model.ranker.session_gamma=0`) trains and pushes one first, with `--reward` as
`recsys run --reward` takes it.

For each seed 0 .. seeds-1, every policy follows the same `--users` users (the world's first
ones, each starting new) over up to `--horizon` sessions (`simulator.run_users`): after each
session a user comes back with a probability their satisfaction sets, so a policy that
disappoints loses sessions as well as clicks. Reported per policy, as the mean over seeds of the
per-seed means:
  * per session: clicks, purchases, revenue, reward (`session_reward`), satisfaction at the
    session's end, steps (the session's length); clickbait: the share of shown items that are;
  * per user: reward (cumulative over the user's sessions, the quantity the head is meant to
    maximise), sessions, and the return rate (share of sessions after which the user came back).
For `serving_default` minus each of `retrieve` and `myopic`: the mean over seeds of the paired
per-seed differences and a 95% Student t interval. Seeds are the independent replicates.
"""
import argparse
import contextlib
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

SESSION_METRICS = ("clicks", "purchases", "revenue", "reward", "satisfaction", "steps",
                   "clickbait")
USER_METRICS = ("reward_per_user", "sessions_per_user", "return_rate")
METRICS = SESSION_METRICS + USER_METRICS
COMPARED = ("retrieve", "myopic")
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


def per_user_metrics(result: simulator.SimulationResult, world: simulator.World,
                     n_users: int) -> Dict[str, float]:
  """The METRICS of one run of `simulator.run_users` over n_users users."""
  sessions = result.sessions.assign(reward=session_reward(result.sessions))
  shown_clickbait = pd.Series(world.item_clickbait[result.impressions["item"].to_numpy()])
  sessions["clickbait"] = shown_clickbait.groupby(
      result.impressions["session"].to_numpy()).mean().loc[sessions["session"]].to_numpy()
  metrics = sessions[list(SESSION_METRICS)].mean().to_dict()
  metrics.update(reward_per_user=sessions["reward"].sum() / n_users,
                 sessions_per_user=len(sessions) / n_users,
                 return_rate=sessions["returned"].mean())
  return metrics


def _means_per_seed(policy: simulator.Policy, seeds: Sequence[int], n_users: int, horizon: int,
                    world: simulator.World, user_model: simulator.UserModel) -> pd.DataFrame:
  """[seed, METRICS]: the policy's metrics over the same users, one row per seed."""
  rows = []
  for seed in seeds:
    result = simulator.run_users(world, policy, np.arange(n_users), horizon,
                                 np.random.default_rng(seed), user_model)
    rows.append(per_user_metrics(result, world, n_users))
  return pd.DataFrame(rows, index=pd.Index(seeds, name="seed"))[list(METRICS)]


MYOPIC_SETTINGS = ("model.ranker.gamma=0", "model.ranker.session_gamma=0")


def _trained_model(work_dir: pathlib.Path, dataset: generator.GeneratedDataset, reward: str,
                   settings: Sequence[str] = ()) -> pathlib.Path:
  """Trains and pushes a model with the real pipeline on `dataset`; its version dir."""
  home = work_dir / "home"
  # The bench measures the model, it does not gate it: push whatever trained.
  result = CliRunner().invoke(cli.main, ["run", "--home", str(home), "--interactions",
                                         str(dataset.interactions), "--items",
                                         str(dataset.items), "--gate-config",
                                         str(schemas.REPORT_ONLY_GATE_CONFIG),
                                         "--reward", reward,
                                         *[arg for setting in settings
                                           for arg in ("--set", setting)]],
                              catch_exceptions=False)
  if result.exit_code:
    raise SystemExit(result.output)
  (model_dir,) = configs.PipelineConfig(home=home).model_base_path.iterdir()
  return model_dir


def _markdown(report: dict) -> str:
  roles = ["serving_default", *COMPARED, "logging", "oracle"]
  lines = ["| metric | " + " | ".join(roles) + " | vs retrieve (95% CI) | vs myopic (95% CI) |",
           "|---" * (len(roles) + 3) + "|"]
  for metric in METRICS:
    values = " | ".join(f"{report['means'][role][metric]:.3f}" for role in roles)
    differences = " | ".join(
        f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"
        for d in (report["difference"][other][metric] for other in COMPARED))
    lines.append(f"| {metric} | {values} | {differences} |")
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
  parser.add_argument("--model", type=pathlib.Path,
                      help="A pushed SavedModel version dir; default: train one.")
  parser.add_argument("--myopic-model", type=pathlib.Path,
                      help="The same, trained with gamma = 0; default: train one.")
  parser.add_argument("--seeds", type=int, default=5)
  parser.add_argument("--users", type=int, default=2000)
  parser.add_argument("--events", type=int, default=200_000)
  parser.add_argument("--horizon", type=int, default=5)
  parser.add_argument("--dynamics", choices=sorted(simulator.DYNAMICS),
                      default=simulator.DEFAULT_DYNAMICS)
  parser.add_argument("--reward", default="",
                      help="The heads' reward weights, as `recsys run --reward` takes them.")
  parser.add_argument("--work-dir", type=pathlib.Path,
                      help="Where the trained models are kept; default: a temporary directory.")
  parser.add_argument("--out", type=pathlib.Path,
                      default=pathlib.Path(__file__).parent / "results" / "policies.json")
  args = parser.parse_args()
  seeds = list(range(args.seeds))
  world = generator.default_world(n_users=args.users, dynamics=args.dynamics)
  user_model = simulator.DYNAMICS[args.dynamics].user_model
  start = time.perf_counter()
  # The trained models' files live in work_dir, so their policies run before it is removed.
  with contextlib.ExitStack() as stack:
    work_dir = args.work_dir or pathlib.Path(stack.enter_context(tempfile.TemporaryDirectory()))
    if not (args.model and args.myopic_model):
      dataset = generator.generate_dataset(work_dir / "data", n_users=args.users,
                                           n_events=args.events, dynamics=args.dynamics)
    model_dir = args.model or _trained_model(work_dir / "discounted", dataset, args.reward)
    myopic_dir = args.myopic_model or _trained_model(work_dir / "myopic", dataset, args.reward,
                                                     MYOPIC_SETTINGS)
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    candidates = {
        "serving_default": model_policy.SavedModelPolicy(model_dir, contract.SERVING_SIGNATURE,
                                                         world.n_items),
        "retrieve": model_policy.SavedModelPolicy(model_dir, contract.RETRIEVE_SIGNATURE,
                                                  world.n_items),
        "myopic": model_policy.SavedModelPolicy(myopic_dir, contract.SERVING_SIGNATURE,
                                                world.n_items),
        "logging": generator.logging_policy(world),
        "oracle": policies.OraclePolicy(world, user_model)}
    means = {role: _means_per_seed(policy, seeds, args.users, args.horizon, world, user_model)
             for role, policy in candidates.items()}
  report = {
      "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores, "
                 f"Python {platform.python_version()}",
      "models": {"discounted": str(args.model or "trained by `recsys run`"),
                 "myopic": str(args.myopic_model or "trained by `recsys run " + " ".join(
                     f"--set {setting}" for setting in MYOPIC_SETTINGS) + "`")},
      "dynamics": args.dynamics, "trained_reward": args.reward or "RewardConfig defaults",
      "seeds": seeds, "users": args.users,
      "training_events": args.events,
      "horizon": args.horizon,
      "reward_weights": REWARD_WEIGHTS,
      "means": {role: means[role].mean().round(4).to_dict() for role in means},
      "per_seed": {role: {metric: means[role][metric].round(4).tolist() for metric in METRICS}
                   for role in means},
      "difference": {other: {metric: {key: round(value, 4) for key, value in paired_difference(
          means["serving_default"][metric], means[other][metric]).items()}
                             for metric in METRICS} for other in COMPARED},
      "train_seconds": None if args.model and args.myopic_model else round(train_seconds, 1),
      "simulation_seconds": round(time.perf_counter() - start, 1),
  }
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(json.dumps(report, indent=2) + "\n")
  print(_markdown(report))


if __name__ == "__main__":
  main()
