"""Cold start: how fast recommendations improve as a new user's first items arrive.

Run: .venv/bin/python bench/bench_cold_start.py [--part offline|simulator] [--full]
         [--data ../shared/data/movielens-latest-small] [--split test|validation] [--seeds 0 1 2]

Offline adaptation curve on ml-latest-small. Users are held out by their first rating's time: the
newest HELD_OUT_FRACTION of them are new users, the model is trained on everyone else's ratings.
For each new user with at least MAX_SUPPORT + QUERY_SIZE ratings, and each N in SUPPORT_SIZES:
their first N ratings in time order are what the recommender has seen of them (the support set,
sent as the request's history, with the unknown user id), the next QUERY_SIZE ones are what it
should find (the query set). The whole catalog is ranked with the support items removed;
Recall@10 and nDCG@10 of the query set, averaged over users and seeds, with a 95 % interval
(1.96 standard errors over the user-seed pairs), and the paired difference to the non-meta model.

Models, all trained by the Trainer's own function (components/models/training.py,
`train_retrieval`; in process, on index arrays built as Transform builds them, so that a seed
takes minutes, not pipeline runs), with the default configuration but for `cold_start` and at
most BENCH_CONFIG's epochs:
  * popularity: the most rated items;
  * non-meta: cold_start="off", served as is (the untrained OOV row and the support as history);
  * fine-tuned: the non-meta model, the user vector adapted by `adapt_steps` steps on the
    support set from its OOV row (fine-tuning from the non-meta initialisation);
  * amortised and maml: cold_start="amortised" / "maml", the latter adapted by `adapt_steps`
    steps at evaluation as it was in training (and at 0 steps, as served without adaptation).
`--split validation` holds the newest of the training users out instead (the test users are not
used at all): what chose the default form and adaptation step size. Results go to
bench/results/cold_start[_validation].json with `--full` (three seeds, every form), and
cold_start[_validation]_default_run.json without it (one seed, the default form and the non-meta
model: a few minutes).

Simulator (`--part simulator`): a brand-new user's first session, step by step. The built-in
dataset's world (components/simulation/generator.py) with SIM_NEW_USERS more users than the
default dataset's; the pipeline (`recsys run`, report-only gate) trains on the events of the
first SIM_TRAIN_USERS only, so the others are new to the model: served by an id it has never
seen, their state is what their clicks so far say. Two models: the meta-trained one (the
defaults: cold-start meta-training, and the ranking head trained on new users' episodes,
`new_user_share`) and the non-meta one (both off). Policies: each model's `serving_default`,
and the meta model's `retrieve` (retrieval alone). For each seed, every new user's first session
(`simulator.run_users`, horizon 1); reward per step (the head's reward weights, a finished
session's later steps count 0), averaged over the users, then over seeds; the meta minus
non-meta difference per step with a 95 % t interval over seeds. Results go to
bench/results/cold_start_simulator.json.
"""
import argparse
import dataclasses
import json
import pathlib
import sys
import tempfile
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "bench"))  # bench_policies, run as a script or imported

# Before TensorFlow loads: Keras 2 and TensorFlow's log level (components/__init__.py).
import components  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import

# isort: split

import bench_policies  # pylint: disable=g-import-not-at-top  (this folder's, for its statistics)
import numpy as np  # pylint: disable=g-import-not-at-top
import pandas as pd  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

from components.data import ingest  # pylint: disable=g-import-not-at-top
from components.models import cold_start  # pylint: disable=g-import-not-at-top
from components.models import preprocessing  # pylint: disable=g-import-not-at-top
from components.models import training  # pylint: disable=g-import-not-at-top
from components.models import two_tower  # pylint: disable=g-import-not-at-top
from components.models.config import AMORTISED_COLD_START  # pylint: disable=g-import-not-at-top
from components.models.config import COLD_START_FORMS  # pylint: disable=g-import-not-at-top
from components.models.config import GRADIENT_COLD_START  # pylint: disable=g-import-not-at-top
from components.models.config import ModelConfig  # pylint: disable=g-import-not-at-top
from components.models.config import NO_COLD_START  # pylint: disable=g-import-not-at-top
from components.simulation import generator  # pylint: disable=g-import-not-at-top
from components.simulation import model_policy  # pylint: disable=g-import-not-at-top
from components.simulation import simulator  # pylint: disable=g-import-not-at-top
from schemas import contract  # pylint: disable=g-import-not-at-top

K = 10
HELD_OUT_FRACTION = 0.15
# Every model trains for at most 10 epochs (the pipeline's default is 30 with early stopping,
# which on ml-latest-small stops at about 10-15), so that a seed of three models takes minutes.
# Not fewer in the default run: at 4 epochs (4 min 20 s for the two models) maml trailed the
# non-meta model at N >= 3, the opposite of the trained models' result
# (bench/results/cold_start_default_run_4_epochs.json).
BENCH_CONFIG = {"epochs": 10}
SUPPORT_SIZES = cold_start.SUPPORT_SIZES
QUERY_SIZE = cold_start.QUERY_SIZE
MAX_SUPPORT = cold_start.MAX_SUPPORT
Z_95 = 1.96
# The default run compares the default form with the non-meta model on one seed (about 5 min on
# 2 idle cores; the README has the latest time); `--full` is the README's protocol.
DEFAULT_SEEDS = [0]
DEFAULT_FORMS = [NO_COLD_START, ModelConfig().cold_start]
FULL_SEEDS = [0, 1, 2]


def offline_plan(full: bool, seeds, forms, settings):
  """(seeds, forms, ModelConfig overrides) of an offline run: the default run's, `--full`'s,
  with `settings` ("field=value") applied last."""
  if full:
    seeds, forms = FULL_SEEDS, list(COLD_START_FORMS)
  overrides = dict(BENCH_CONFIG)
  for setting in settings:
    field, value = setting.split("=", 1)
    overrides[field] = type(getattr(ModelConfig(), field))(value)
  return seeds or DEFAULT_SEEDS, forms, overrides


def _newest_users(events: pd.DataFrame, fraction: float) -> set:
  """The `fraction` of users whose first event is latest."""
  first = events.groupby(contract.USER_ID)[contract.TIMESTAMP].min().sort_values(kind="stable")
  return set(first.index[len(first) - int(round(fraction * len(first))):])


class Dataset:
  """The training users' ratings as the Trainer's index arrays, and the new users' sequences."""

  def __init__(self, train: pd.DataFrame, new: pd.DataFrame):
    by_count = train[contract.USER_ID].value_counts()
    self.users = pd.Index(by_count.index)
    item_counts = train[contract.ITEM_ID].value_counts()
    self.items = pd.Index(item_counts.index)
    self.item_counts = item_counts.to_numpy()
    items = train.drop_duplicates(contract.ITEM_ID).set_index(contract.ITEM_ID).loc[self.items]
    categories = pd.Index(items[contract.CATEGORY].unique())
    titles = (items[contract.TITLE].fillna("").str.lower()
              .str.replace(r"[^\w]+|_", " ", regex=True).str.split())
    words = pd.Index(pd.Series([word for title in titles for word in title]).unique())
    title_tokens = np.full((len(self.items), contract.TITLE_LENGTH), preprocessing.PADDING)
    for row, title in enumerate(titles):
      indices = words.get_indexer(title[:contract.TITLE_LENGTH])
      title_tokens[row, :len(indices)] = indices
    self.catalog = {
        two_tower.ITEM_XF: np.arange(len(self.items), dtype=np.int64),
        two_tower.CATEGORY_XF: categories.get_indexer(items[contract.CATEGORY]).astype(np.int64),
        two_tower.PRICE_BUCKET_XF: np.zeros(len(self.items), np.int64),
        two_tower.TITLE_TOKENS_XF: title_tokens.astype(np.int64),
    }
    self.num_categories = len(categories) + preprocessing.NUM_OOV_BUCKETS
    self.num_words = len(words) + preprocessing.NUM_OOV_BUCKETS
    item_rows = self.items.get_indexer(train[contract.ITEM_ID])
    n = len(train)
    self.inputs = {
        two_tower.USER_XF: self.users.get_indexer(train[contract.USER_ID]).astype(np.int64),
        **{key: values[item_rows] for key, values in self.catalog.items()},
        two_tower.HISTORY_XF: np.full((n, contract.HISTORY_LENGTH), preprocessing.PADDING,
                                      np.int64),
        two_tower.HOUR_OF_WEEK_XF: np.full(n, preprocessing.PADDING, np.int64),
        contract.EVENT: train[contract.EVENT].to_numpy(object),
        contract.TIMESTAMP: train[contract.TIMESTAMP].to_numpy(np.int64),
    }
    # Each new user's rated items in time order (index -1: not in the training catalog).
    ordered = new.sort_values([contract.USER_ID, contract.TIMESTAMP], kind="stable")
    sequences = ordered.groupby(contract.USER_ID, sort=True)[contract.ITEM_ID].agg(list)
    self.new_users = [np.asarray(self.items.get_indexer(sequence)) for sequence in sequences
                      if len(sequence) >= MAX_SUPPORT + QUERY_SIZE]

  def train(self, config: ModelConfig) -> two_tower.TwoTowerModel:
    share = self.item_counts / self.item_counts.sum()
    model = two_tower.TwoTowerModel(len(self.users) + preprocessing.NUM_OOV_BUCKETS,
                                    len(self.items) + preprocessing.NUM_OOV_BUCKETS,
                                    self.num_categories, preprocessing.NUM_PRICE_BUCKETS,
                                    self.num_words, config,
                                    item_probability=np.r_[share, 0.0], catalog=self.catalog)
    model.compile(optimizer=tf.keras.optimizers.Adam(config.learning_rate))
    training.train_retrieval(model, self.inputs, config)
    return model


def _metrics(scores: np.ndarray, support: np.ndarray, query: np.ndarray):
  """(recall@K, nDCG@K) of one user's query items under `scores` over the catalog, the
  support items removed; query items outside the catalog (-1) count as missed."""
  scores = scores.copy()
  scores[support[support >= 0]] = -np.inf
  top = np.argsort(-scores, kind="stable")[:K]
  hits = np.isin(top, query[query >= 0])
  ideal = np.sum(1.0 / np.log2(np.arange(2, min(len(query), K) + 2)))
  return hits.sum() / min(len(query), K), np.sum(hits / np.log2(np.arange(2, K + 2))) / ideal


def _curve(model: two_tower.TwoTowerModel, dataset: Dataset, steps: int,
           learning_rate: float) -> dict:
  """{N: [(recall, ndcg) per new user]} with the user vector adapted by `steps` steps."""
  tower = model.query_tower
  candidates = model.candidate_tower({key: tf.constant(values)
                                      for key, values in dataset.catalog.items()})
  oov = tower.user_embedding.embeddings[-1]
  curve = {}
  for size in SUPPORT_SIZES:
    support = np.stack([np.where(sequence[:size] >= 0, sequence[:size], preprocessing.PADDING)
                        for sequence in dataset.new_users]).reshape(len(dataset.new_users), size)
    start = tf.tile(oov[None], [len(support), 1])
    vectors = cold_start.adapt_user_vectors(tower, candidates, start, tf.constant(support),
                                            steps, learning_rate, model.temperature)
    queries = tower(cold_start.new_user_inputs(tf.constant(support, tf.int64), vectors))
    scores = (queries @ tf.transpose(candidates)).numpy()
    curve[size] = [_metrics(user_scores, sequence[:size], sequence[size:size + QUERY_SIZE])
                   for user_scores, sequence in zip(scores, dataset.new_users)]
  return curve


def _popularity_curve(dataset: Dataset) -> dict:
  scores = np.log(dataset.item_counts.astype(float))
  return {size: [_metrics(scores, sequence[:size], sequence[size:size + QUERY_SIZE])
                 for sequence in dataset.new_users] for size in SUPPORT_SIZES}


def _summary(values: np.ndarray) -> dict:
  mean = float(np.mean(values))
  half = float(Z_95 * np.std(values, ddof=1) / np.sqrt(len(values)))
  return {"mean": round(mean, 4), "ci95": [round(mean - half, 4), round(mean + half, 4)]}


SIM_TRAIN_USERS = generator.DEFAULT_USERS
SIM_NEW_USERS = 500
SIM_SEEDS = 5
META_SETTINGS = ()  # the defaults
NON_META_SETTINGS = (f"model.cold_start={NO_COLD_START}", "model.ranker.new_user_share=0")


def _step_rewards(result: simulator.SimulationResult, n_users: int) -> np.ndarray:
  """[steps] each step's reward summed over the users' first sessions, per user."""
  impressions = result.impressions
  reward = (bench_policies.REWARD_WEIGHTS["clicks"] * impressions["click"]
            + bench_policies.REWARD_WEIGHTS["purchases"] * impressions["purchase"]
            + bench_policies.REWARD_WEIGHTS["revenue"] * impressions["purchase"]
            * impressions["price"])
  per_step = reward.groupby(impressions["step"]).sum()
  return per_step.reindex(range(int(impressions["step"].max()) + 1), fill_value=0.0).to_numpy(
  ) / n_users


def _simulator_part(seeds, work: pathlib.Path, meta_settings=META_SETTINGS) -> dict:
  n_users = SIM_TRAIN_USERS + SIM_NEW_USERS
  dataset = generator.generate_dataset(work / "data", n_users=n_users,
                                       n_events=generator.EVENTS_PER_USER * n_users)
  world = generator.default_world(n_users=n_users)
  new_users = np.arange(SIM_TRAIN_USERS, n_users)
  events = pd.read_csv(dataset.interactions, dtype={contract.USER_ID: str})
  known = set(generator.ids(generator.USER_PREFIX, np.arange(SIM_TRAIN_USERS)))
  train = events[events[contract.USER_ID].isin(known)]
  train.to_csv(dataset.interactions, index=False)
  start = time.perf_counter()
  # pylint: disable-next=protected-access
  models = {name: bench_policies._trained_model(work / name, dataset, "", settings)
            for name, settings in (("meta", meta_settings), ("non-meta", NON_META_SETTINGS))}
  train_seconds = time.perf_counter() - start
  policies = {
      "meta head": model_policy.SavedModelPolicy(models["meta"], contract.SERVING_SIGNATURE,
                                                 world.n_items),
      "non-meta head": model_policy.SavedModelPolicy(models["non-meta"],
                                                     contract.SERVING_SIGNATURE, world.n_items),
      "retrieval": model_policy.SavedModelPolicy(models["meta"], contract.RETRIEVE_SIGNATURE,
                                                 world.n_items),
  }
  user_model = simulator.DYNAMICS[simulator.DEFAULT_DYNAMICS].user_model
  curves = {}
  for name, policy in policies.items():
    runs = [_step_rewards(simulator.run_users(world, policy, new_users, 1,
                                              np.random.default_rng(seed), user_model),
                          len(new_users)) for seed in seeds]
    width = max(map(len, runs))
    curves[name] = np.stack([np.pad(run, (0, width - len(run))) for run in runs])
  width = max(curve.shape[1] for curve in curves.values())
  curves = {name: np.pad(curve, ((0, 0), (0, width - curve.shape[1])))
            for name, curve in curves.items()}
  return {
      "protocol": f"built-in world with {n_users} users, trained on the events of the first "
                  f"{SIM_TRAIN_USERS} ({len(train)} of {len(events)} events); each of the "
                  f"{SIM_NEW_USERS} others' first session; reward per step per user (0 after "
                  "a session ends), mean over seeds; differences with 95% t intervals over "
                  "seeds",
      "seeds": list(seeds), "reward_weights": bench_policies.REWARD_WEIGHTS,
      "settings": {"meta": list(meta_settings), "non-meta": list(NON_META_SETTINGS)},
      "reward_per_step": {name: curve.mean(axis=0).round(4).tolist()
                          for name, curve in curves.items()},
      "first_session_reward": {name: round(float(curve.sum(axis=1).mean()), 4)
                               for name, curve in curves.items()},
      "meta_minus_non_meta_per_step": [
          {key: round(value, 4) for key, value in bench_policies.paired_difference(
              curves["meta head"][:, step], curves["non-meta head"][:, step]).items()}
          for step in range(width)],
      "meta_minus_non_meta_first_session": {
          key: round(value, 4) for key, value in bench_policies.paired_difference(
              curves["meta head"].sum(axis=1), curves["non-meta head"].sum(axis=1)).items()},
      "train_seconds": round(train_seconds, 1),
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
  parser.add_argument("--part", choices=("offline", "simulator"), default="offline")
  parser.add_argument("--data", type=pathlib.Path,
                      default=REPO_ROOT.parent / "shared" / "data" / "movielens-latest-small")
  parser.add_argument("--split", choices=("test", "validation"), default="test")
  parser.add_argument("--seeds", type=int, nargs="+",
                      help=f"Seeds (default: {' '.join(map(str, DEFAULT_SEEDS))} offline, "
                           f"0..{SIM_SEEDS - 1} in the simulator).")
  parser.add_argument("--forms", nargs="+", choices=COLD_START_FORMS, default=DEFAULT_FORMS,
                      help="The cold_start forms to train (the non-meta model is 'off'; "
                           f"default: {' '.join(DEFAULT_FORMS)}).")
  parser.add_argument("--full", action="store_true",
                      help=f"The README's offline protocol: seeds {' '.join(map(str, FULL_SEEDS))}"
                           ", every form (about 20 minutes on 2 cores).")
  parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                      help="Offline: a ModelConfig field for every model, e.g. "
                           "adapt_learning_rate=0.5. Simulator: a `recsys run --set` setting "
                           "for the meta model, e.g. model.ranker.new_user_share=0.5")
  parser.add_argument("--out", type=pathlib.Path)
  args = parser.parse_args()
  if args.part == "simulator":
    seeds = args.seeds or list(range(SIM_SEEDS))
    with tempfile.TemporaryDirectory() as work:
      report = _simulator_part(seeds, pathlib.Path(work), META_SETTINGS + tuple(args.set))
    out = args.out or REPO_ROOT / "bench" / "results" / "cold_start_simulator.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({key: report[key] for key in ("reward_per_step", "first_session_reward",
                                                   "meta_minus_non_meta_first_session")},
                     indent=2))
    return
  run_start = time.perf_counter()
  args.seeds, args.forms, overrides = offline_plan(args.full, args.seeds, args.forms, args.set)

  events = ingest.load_interactions(args.data / "ratings.csv", args.data / "movies.csv",
                                    fmt="movielens")
  new = _newest_users(events, HELD_OUT_FRACTION)
  if args.split == "validation":
    events = events[~events[contract.USER_ID].isin(new)]
    new = _newest_users(events, HELD_OUT_FRACTION)
  is_new = events[contract.USER_ID].isin(new)
  dataset = Dataset(events[~is_new], events[is_new])
  print(f"{len(dataset.users)} training users, {len(dataset.new_users)} new users with "
        f"{MAX_SUPPORT + QUERY_SIZE}+ ratings", flush=True)

  curves = {"popularity": {seed: _popularity_curve(dataset) for seed in args.seeds}}
  seconds = {}
  for seed in args.seeds:
    for form in args.forms:
      config = ModelConfig(**{**overrides, "cold_start": form, "seed": seed})
      tf.keras.utils.set_random_seed(seed)
      start = time.perf_counter()
      model = dataset.train(config)
      seconds.setdefault(form, []).append(round(time.perf_counter() - start, 1))
      variants = {NO_COLD_START: {"non-meta": 0, "fine-tuned": config.adapt_steps},
                  AMORTISED_COLD_START: {"amortised": 0},
                  GRADIENT_COLD_START: {"maml (0 steps)": 0, "maml": config.adapt_steps}}[form]
      for name, steps in variants.items():
        curves.setdefault(name, {})[seed] = _curve(model, dataset, steps,
                                                   config.adapt_learning_rate)
        print(seed, name, {size: np.mean(values, axis=0).round(4).tolist()
                           for size, values in curves[name][seed].items()}, flush=True)

  def pooled(name, size, metric):
    return np.array([values[metric] for seed in args.seeds
                     for values in curves[name][seed][size]])

  report = {
      "protocol": f"ml-latest-small; the newest {HELD_OUT_FRACTION:.0%} of users by first "
                  f"rating held out ({args.split} split); per new user with "
                  f"{MAX_SUPPORT + QUERY_SIZE}+ ratings, the first N in time order as support "
                  f"(the request's history, unknown user id), the next {QUERY_SIZE} as query; "
                  "full catalog, support removed; mean and 95% interval over user-seed pairs",
      "split": args.split, "seeds": args.seeds, "new_users": len(dataset.new_users),
      "training_users": len(dataset.users),
      "config": dataclasses.asdict(ModelConfig(**overrides)),
      "training_seconds": seconds,
      "run_seconds": round(time.perf_counter() - run_start, 1),
      "curves": {name: {str(size): {metric: _summary(pooled(name, size, index))
                                    for index, metric in enumerate(("recall@10", "ndcg@10"))}
                        for size in SUPPORT_SIZES} for name in curves},
      "ndcg@10_minus_non_meta": {
          name: {str(size): _summary(pooled(name, size, 1) - pooled("non-meta", size, 1))
                 for size in SUPPORT_SIZES}
          for name in curves if name != "non-meta" and "non-meta" in curves},
  }
  out = args.out or REPO_ROOT / "bench" / "results" / (
      "cold_start" + ("" if args.split == "test" else "_validation")
      + ("" if args.full else "_default_run") + ".json")
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(report, indent=2) + "\n")
  print(json.dumps(report["ndcg@10_minus_non_meta"], indent=2))


if __name__ == "__main__":
  main()
