"""The feedback loop on the simulator: serve, log, join the feedback, retrain, push, round by round.

Run: .venv/bin/python bench/bench_loop.py [--rounds 3] [--users 200] [--horizon 3]
         [--events 20000] [--items 60] [--seed 7] [--default-gate] [--work-dir DIR]
         [--home HOME] [--out bench/results/loop.json]

The world is a generated dataset's (components/simulation/generator.py: `--seed`, `--events`
impressions of the logging policy, `--items` items, generator.users_for(events) users), and the
pipeline first trains on that log (`recsys run --interactions`) and pushes a model (`--home`: a
home where this bench did that already, whose later spans and request logs were removed). Then,
each round:
  1. the pushed model is served by the real local server (serving/server.py, in its own process,
     request logging on as the push configures it: every request, `serving_request_log`);
  2. the world's first `--users` users, each starting new, are followed over up to `--horizon`
     sessions (`simulator.run_users`) by `ServedPolicy`, which asks the server over gRPC for every
     slate (one Predict per step of at most 64 sessions, TF Serving's batch limit, with an
     `x-request-id`) and shows each answer's first `simulator.DEFAULT_SLATE_SIZE` items. The
     simulated world has no clock; the policy's clock starts a week after the data (or the round
     before) and moves 60 s a step and 2 hours between sessions, so the pipeline cuts the same
     sessions;
  3. the server stops (its log file is closed), the users' clicks and purchases become the app's
     feedback file (request_id, item_id, event, price), `recsys ingest-logs --slate-size 10`
     joins it with the request log into a new span (the previous span's events plus the served
     slates), and `recsys run --latest-span` retrains on it, judges it and pushes it: with the
     report-only gate, so that every round serves the model retrained on the rounds before
     (`--default-gate` judges it by the default gate instead, which may keep the old version).
Reported per round: the served version, per user (over the users' sessions, the figures of
bench/bench_policies.py) the reward, clicks, purchases, revenue and sessions, per session the
clicks and satisfaction, what ingestion joined, and whether the retrained model was pushed. The
logging policy, followed over the same users with the same seed, gives the scale. Round r's
users draw with seed `--seed` + r, new traffic each round; the logging policy meets the same
draws, so each round's difference to it is paired.
"""
import argparse
import collections
import importlib.util
import json
import pathlib
import platform
import sys
import tempfile
import time
from typing import Dict, List, Optional
import uuid

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from click.testing import CliRunner  # pylint: disable=g-import-not-at-top
import grpc
import numpy as np
import pandas as pd
import tensorflow as tf
from tensorflow_serving.apis import prediction_service_pb2_grpc

from components.models import queries
from components.simulation import generator
from components.simulation import simulator
from pipeline import cli
from pipeline import configs
import schemas
from schemas import contract
from serving import client as client_lib
from serving import model_config
from serving import push
from serving import request_log
from serving import server as server_lib

_BENCH_POLICIES = pathlib.Path(__file__).resolve().parent / "bench_policies.py"
_spec = importlib.util.spec_from_file_location("bench_policies", _BENCH_POLICIES)
bench_policies = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_policies)

SLATE_SIZE = simulator.DEFAULT_SLATE_SIZE
# TF Serving's batch limit, which the local server enforces too (serving/handlers.py).
MAX_BATCH = 64
STEP_SECONDS = 60
SESSION_GAP_SECONDS = 2 * 3600  # beyond the pipeline's 30-minute session cut
ROUND_GAP_SECONDS = 7 * 86_400
RPC_TIMEOUT_SECONDS = 120.0
# The world's on-policy metrics need its users, which `recsys run --latest-span` does not assume
# the latest span holds.
RUN_SETTINGS = ("--set", "simulator_users=0")


class ServedPolicy:
  """A simulator policy that asks the serving process for every slate, as an app would.

  It remembers the request id each shown slate was answered under, so that the users' clicks and
  purchases can be reported as the app's feedback (`feedback`).
  """

  def __init__(self, target: str, world: simulator.World, start_time: int, id_prefix: str,
               model_name: str = contract.DEFAULT_MODEL_NAME):
    self._channel = grpc.insecure_channel(target)
    self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
    self._model_name = model_name
    self._item_ids = generator.ids(generator.ITEM_PREFIX, np.arange(world.n_items)).astype(str)
    self._item_numbers = pd.Index(self._item_ids)
    self._prefix = id_prefix
    self.clock = start_time
    self._previous_users: Optional[set] = None
    self._requests = 0
    # (user number, shown items) -> the request ids that showed them, in order.
    self._served: Dict[tuple, collections.deque] = collections.defaultdict(collections.deque)
    self.versions = set()

  def slate(self, context: simulator.SlateContext, rng: np.random.Generator) -> simulator.Slate:
    del rng  # The server's model decides.
    users = set(context.users.tolist())
    # Within a round of sessions the active users only shrink; a new round starts with new ones.
    new_sessions = self._previous_users is None or not users <= self._previous_users
    self.clock += SESSION_GAP_SECONDS if new_sessions else STEP_SECONDS
    self._previous_users = users
    items, propensities = [], []
    for start in range(0, len(context.users), MAX_BATCH):
      chunk = slice(start, start + MAX_BATCH)
      answer_items, answer_propensities = self._ask(context.users[chunk],
                                                    context.history[chunk])
      items.append(answer_items)
      propensities.append(answer_propensities)
    return simulator.Slate(items=np.concatenate(items), propensities=np.concatenate(propensities))

  def _ask(self, users: np.ndarray, history: np.ndarray):
    request_id = f"{self._prefix}-{self._requests}"
    self._requests += 1
    histories = [self._item_ids[row[row != simulator.NO_ITEM]].tolist() for row in history]
    request = queries.predict_request(
        generator.ids(generator.USER_PREFIX, users).astype(str).tolist(), histories,
        self._model_name, history_width=contract.HISTORY_LENGTH,
        timestamps=[self.clock] * len(users))
    response = self._stub.Predict(request, timeout=RPC_TIMEOUT_SECONDS,
                                  metadata=((contract.REQUEST_ID_HEADER, request_id),))
    self.versions.add(response.model_spec.version.value)
    shown = tf.make_ndarray(response.outputs[contract.ITEM_IDS])[:, :SLATE_SIZE].astype(str)
    propensities = tf.make_ndarray(response.outputs[contract.PROPENSITIES])[:, :SLATE_SIZE]
    items = self._item_numbers.get_indexer(shown.ravel()).reshape(shown.shape)
    for user, row, row_id in zip(users, items, request_log.row_request_ids(request_id,
                                                                           len(users))):
      self._served[(int(user), tuple(row.tolist()))].append(row_id)
    return items, propensities.astype(np.float64)

  def feedback(self, impressions: pd.DataFrame, world: simulator.World) -> pd.DataFrame:
    """The app's feedback file: a row per clicked item, `purchase` where it was bought."""
    slates = impressions.sort_values(["session", "step", "position"]).groupby(
        ["session", "step"], sort=False)
    request_ids = {}
    for key, slate in slates:
      user = int(slate["user"].iloc[0])
      request_ids[key] = self._served[(user, tuple(slate["item"].tolist()))].popleft()
    clicked = impressions[impressions["click"]]
    return pd.DataFrame({
        contract.REQUEST_ID: [request_ids[key] for key in zip(clicked["session"],
                                                               clicked["step"])],
        contract.ITEM_ID: self._item_ids[clicked["item"].to_numpy()],
        contract.EVENT: np.where(clicked["purchase"], contract.PURCHASE_EVENT, "click"),
        contract.PRICE: np.where(clicked["purchase"],
                                 world.item_price[clicked["item"].to_numpy()].round(2), np.nan),
    })

  def close(self) -> None:
    self._channel.close()


def serve_round(home: pathlib.Path, world: simulator.World, users: np.ndarray, horizon: int,
                seed: int, start_time: int, id_prefix: str):
  """One round of simulated users served by the pushed model; returns the simulation's result,
  the feedback frame, the served versions and the policy's clock at the end."""
  serving_root = configs.PipelineConfig(home=home).serving_root
  with server_lib.running_process(serving_root) as (target, _):
    with client_lib.RecommenderClient(target) as client:
      client.wait_until_available(timeout=300)
    policy = ServedPolicy(target, world, start_time, id_prefix)
    try:
      result = simulator.run_users(world, policy, users, horizon, np.random.default_rng(seed))
    finally:
      policy.close()
  return result, policy.feedback(result.impressions, world), policy.versions, policy.clock


def request_log_dir(home: pathlib.Path) -> pathlib.Path:
  """Where the push's logging config has the server write the model's request log."""
  config = configs.PipelineConfig(home=home)
  logging = model_config.read_local_logging(config.serving_root, config.model_name)
  return pathlib.Path(logging.log_collector_config.filename_prefix).parent


def _cli(*args) -> str:
  result = CliRunner().invoke(cli.main, [str(arg) for arg in args], catch_exceptions=False)
  if result.exit_code != 0:
    raise RuntimeError(f"recsys {args[0]} failed ({result.exit_code}): {result.output}")
  return result.output


def loop_round(home: pathlib.Path, world: simulator.World, users: np.ndarray, horizon: int,
               seed: int, start_time: int, number: int, work: pathlib.Path,
               run_args: List[str]) -> dict:
  """Serve, log, join the feedback, retrain: one round, with what it measured."""
  started = time.monotonic()
  # Request ids unique to this run: the request log keeps every earlier run's.
  result, feedback, versions, clock = serve_round(home, world, users, horizon, seed, start_time,
                                                  f"{uuid.uuid4().hex[:8]}-round{number}")
  served_seconds = time.monotonic() - started
  feedback_path = work / f"feedback-{number}.csv"
  feedback.to_csv(feedback_path, index=False)
  ingested = _cli("ingest-logs", "--predictions", request_log_dir(home), "--feedback",
                  feedback_path, "--slate-size", SLATE_SIZE, "--home", home)
  config = configs.PipelineConfig(home=home)
  before = set(push.versions(config.serving_root / config.model_name))
  started = time.monotonic()
  output = _cli("run", "--latest-span", "--home", home, *RUN_SETTINGS, *run_args)
  pushed = sorted(set(push.versions(config.serving_root / config.model_name)) - before)
  metrics = bench_policies.per_user_metrics(result, world, len(users))
  return {
      "round": number, "seed": seed, "served_versions": sorted(versions),
      "metrics": {name: float(value) for name, value in metrics.items()},
      "clicks_per_user": float(result.sessions["clicks"].sum() / len(users)),
      "purchases_per_user": float(result.sessions["purchases"].sum() / len(users)),
      "revenue_per_user": float(result.sessions["revenue"].sum() / len(users)),
      "slates": int(result.impressions.groupby(["session", "step"]).ngroups),
      "feedback_rows": len(feedback), "ingest_logs": ingested.strip(),
      "serve_seconds": round(served_seconds, 1),
      "retrain_seconds": round(time.monotonic() - started, 1),
      "pushed_version": pushed[-1] if pushed else None,
      "verdict": output.strip().splitlines()[-1], "clock": clock,
  }


def main(argv: Optional[List[str]] = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--users", type=int, default=200)
  parser.add_argument("--horizon", type=int, default=3)
  parser.add_argument("--events", type=int, default=20_000)
  parser.add_argument("--items", type=int, default=60)
  parser.add_argument("--seed", type=int, default=7)
  parser.add_argument("--default-gate", action="store_true")
  parser.add_argument("--work-dir", type=pathlib.Path)
  parser.add_argument("--home", type=pathlib.Path)
  parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path(__file__).parent /
                      "results" / "loop.json")
  args = parser.parse_args(argv)
  work = args.work_dir or pathlib.Path(tempfile.mkdtemp(prefix="bench_loop-"))
  home = args.home or work / "home"
  n_users = generator.users_for(args.events)
  dataset = generator.generate_dataset(work / "raw", seed=args.seed, n_users=n_users,
                                       n_items=args.items, n_events=args.events)
  world = generator.default_world(args.seed, n_users, args.items)
  users = np.arange(min(args.users, n_users))
  initial_seconds = None
  if args.home is None:
    started = time.monotonic()
    first = _cli("run", "--interactions", dataset.interactions, "--items", dataset.items,
                 "--home", home)
    print(first.strip().splitlines()[-1], flush=True)
    initial_seconds = round(time.monotonic() - started, 1)
  run_args = [] if args.default_gate else ["--gate-config", schemas.REPORT_ONLY_GATE_CONFIG]
  logging_policy = generator.logging_policy(world, args.seed)
  rounds = []
  clock = int(pd.read_csv(dataset.interactions, usecols=["timestamp"])["timestamp"].max())
  for number in range(1, args.rounds + 1):
    seed = args.seed + number
    result = loop_round(home, world, users, args.horizon, seed, clock + ROUND_GAP_SECONDS,
                        number, work, run_args)
    clock = result.pop("clock")
    logged = simulator.run_users(world, logging_policy, users, args.horizon,
                                 np.random.default_rng(seed))
    result["logging_policy"] = {name: float(value) for name, value in
                                bench_policies.per_user_metrics(logged, world, len(users)).items()}
    rounds.append(result)
    print(json.dumps(result), flush=True)
  report = {
      "machine": platform.platform(), "work_dir": str(work),
      "settings": {name: getattr(args, name) for name in ("rounds", "users", "horizon", "events",
                                                          "items", "seed")},
      "default_gate": args.default_gate, "initial_run_seconds": initial_seconds,
      "rounds": rounds,
  }
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(json.dumps(report, indent=2) + "\n")
  print(f"Wrote {args.out}")


if __name__ == "__main__":
  main()
