"""Offline evaluation of a serving model on the held-out (later) part of the data.

What is measured is what TF Serving would answer: the exported `serving_default` signature is
called with raw ids, Transform graph and reranker included. The candidate and the baseline are
evaluated by the same function on the same data, so their figures compare; so is the most-popular
ranking (`evaluate_popularity`: the training split's most engaged items, the user's seen ones
removed), the floor any model must clear to be worth serving, whatever the data, and so is the
candidate's own `retrieve` signature (`evaluate`'s `signature_name`), its two-tower ranking
without the DQN head's reranking, which the head must not make worse.

The queries are the eval split's engagements (SessionBuilder's `examples`): for each, the model
is asked with the user, their history before it and the engagement's time, and the engaged item
is the one relevant item. The items in the query's history (what the user has seen) are removed
from the list, and so, as in protocols that remove seen items, a re-engagement with an item of
the history is no query: it could never be hit. Their number is reported
(`EvalData.repeat_queries`).

Metrics (names as the gate config, schemas/gate/gate.yaml, uses them):
  * accuracy at each k of `EvaluationConfig.ks`: precision@k, recall@k, ndcg@k, map@k,
    hit_rate@k, mrr@k (components/evaluation/ranking_metrics.py; with one relevant item per query
    recall and hit rate coincide, as do MAP and MRR);
  * beyond accuracy at each k of `list_ks`: coverage@k (share of the catalog recommended at all),
    category_diversity@k and embedding_diversity@k (intra-list), novelty@k (mean self-information
    of the recommended items' training popularity), exposure_gini@k (popularity bias)
    (components/evaluation/beyond_accuracy.py). The embedding is one fixed space for every model
    judged on these data, item factors of the training engagements (`item_factors`): a model's own
    embedding would make each model judge its own diversity;
  * business, off-policy, where the eval impressions carry the logging policy's propensities:
    ope_ctr (doubly robust), ope_ctr_ips, ope_ctr_snips, ope_purchase_rate and
    ope_revenue_per_impression (doubly robust), each with a 95% interval in `off_policy`
    (components/evaluation/off_policy.py). The target is the model's ranking softened into a
    Plackett–Luce policy (`ope_rank_temperature`): a greedy ranking matches almost no logged
    slate beyond its first positions, so its estimates would be undefined (SNIPS) or zero (IPS)
    there;
  * business and retention, on-policy, when the data come from the built-in simulator: the
    world's first `simulator_users` users, each followed over up to `SIMULATOR_HORIZON` sessions
    (`simulator.run_users`: a user comes back after a session with a probability their
    satisfaction sets). Per session: simulator_ctr, simulator_conversion_rate (purchases per
    click), simulator_clicks_per_session, simulator_revenue_per_session,
    simulator_satisfaction (at the session's end), simulator_session_length (steps); per user:
    simulator_clicks_per_user and simulator_revenue_per_user (over all of the user's sessions,
    what a ranking that keeps users earns), simulator_sessions_per_user and
    simulator_return_rate (share of sessions after which the user came back).
Slices (reported, not gated): recall and nDCG at `slice_k` for new vs returning users (any
engagement in the training split), by the relevant item's category, and by session length (the
number of eval engagements in the query's session).
"""
import dataclasses
import glob
import itertools
import os
import re
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
from scipy import sparse
from sklearn.utils import extmath
import tensorflow as tf

from components.data import sessions
from components.evaluation import beyond_accuracy
from components.evaluation import off_policy
from components.evaluation import ranking_metrics
from components.models import queries as model_queries
from components.simulation import generator
from components.simulation import model_policy
from components.simulation import simulator
from schemas import contract

QUERY = "query"
# Session length slices: upper bounds of the buckets and their names.
SESSION_LENGTH_BINS = (0, 1, 3, 7, np.inf)
SESSION_LENGTH_BUCKETS = ("1", "2-3", "4-7", "8+")
# Queries per call of the model: bounds the [batch, top_k] outputs held at once.
_BATCH_SIZE = 512

ACCURACY_METRICS = ("precision", "recall", "ndcg", "map", "hit_rate", "mrr")
LIST_METRICS = ("coverage", "category_diversity", "embedding_diversity", "novelty",
                "exposure_gini")
OFF_POLICY_METRICS = ("ope_ctr", "ope_ctr_ips", "ope_ctr_snips", "ope_purchase_rate",
                      "ope_revenue_per_impression")
SIMULATOR_METRICS = ("simulator_ctr", "simulator_conversion_rate",
                     "simulator_clicks_per_session", "simulator_revenue_per_session",
                     "simulator_satisfaction", "simulator_session_length",
                     "simulator_clicks_per_user", "simulator_revenue_per_user",
                     "simulator_sessions_per_user", "simulator_return_rate")
# Sessions per user of the on-policy rollouts: enough for returns to show.
SIMULATOR_HORIZON = 3
METRIC_NAME_PATTERNS = ([f"{name}@K" for name in ACCURACY_METRICS + LIST_METRICS]
                        + list(OFF_POLICY_METRICS + SIMULATOR_METRICS))


def is_metric_name(name: str) -> bool:
  """Whether the evaluator can write a metric of this name (at some k)."""
  at_k = re.fullmatch(r"(\w+)@([1-9][0-9]*)", name)
  if at_k:
    return at_k.group(1) in ACCURACY_METRICS + LIST_METRICS
  return name in OFF_POLICY_METRICS + SIMULATOR_METRICS


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
  ks: Sequence[int] = (5, 10, 20)  # cut-offs of the accuracy metrics
  list_ks: Sequence[int] = (10,)  # cut-offs of the beyond-accuracy metrics
  slice_k: int = 10  # cut-off of the sliced metrics
  # Users of the on-policy rollouts in the simulator's default world, for data the simulator
  # wrote (at most the world's); 0 = none.
  simulator_users: int = 0
  simulator_seed: int = 0
  item_factors: int = 16  # dimension of the fixed item space of embedding diversity
  # The off-policy target samples the model's ranking without replacement with logits falling
  # by 1 every this many ranks: the first item is e times likelier than the one this far below.
  ope_rank_temperature: float = 5.0


  def covering(self, metric_names: Sequence[str]) -> "EvaluationConfig":
    """This config with the cut-offs added that the named metrics (e.g. a gate's) need."""
    ks, list_ks = set(self.ks), set(self.list_ks)
    for name in metric_names:
      at_k = re.fullmatch(r"(\w+)@([1-9][0-9]*)", name)
      if at_k:
        (ks if at_k.group(1) in ACCURACY_METRICS else list_ks).add(int(at_k.group(2)))
    return dataclasses.replace(self, ks=tuple(sorted(ks)), list_ks=tuple(sorted(list_ks)))


@dataclasses.dataclass(frozen=True)
class EvalData:
  """Everything evaluation reads, loaded once for candidate and baseline."""
  # One row per eval engagement: query, user_id, history (tuple), item_id, category,
  # returning_user, session_length_bucket.
  queries: pd.DataFrame
  train_engagements: pd.DataFrame  # user_id, item_id
  item_category: pd.Series  # item_id -> category, every item shown or engaged
  # Eval impressions with propensities (session, user, step, position, item number, propensity,
  # click, purchase, revenue, history), or None where the log has no propensities.
  impressions: Optional[pd.DataFrame]
  repeat_queries: int = 0  # eval engagements with an item of their history, left out

  @property
  def catalog(self) -> np.ndarray:
    return self.item_category.index.to_numpy()


QUERY_FEATURES = {contract.USER_ID: tf.string, contract.ITEM_ID: tf.string,
                   contract.CATEGORY: tf.string, contract.SESSION: tf.string,
                   contract.TIMESTAMP: tf.int64}
_IMPRESSION_FEATURES = dict(QUERY_FEATURES, **{
    contract.CLICK: tf.int64, contract.PURCHASE: tf.int64, contract.REVENUE: tf.float32})
# Logged only by platforms that show slates; -1 marks their absence.
_SLATE_FEATURES = {contract.POSITION: tf.int64, contract.PROPENSITY: tf.float32}
_MISSING = -1
_RECORDS_PER_BATCH = 4096


def read_split(split_dir: str, scalars: Dict[str, tf.DType], optional: Sequence[str] = (),
               history: bool = True) -> pd.DataFrame:
  """Some features of a SessionBuilder split as a frame, history as tuples of item ids.

  Args:
    split_dir: A `Split-<name>` directory of gzipped TFRecords of tf.Examples.
    scalars: Feature name -> dtype of the one-value features to read.
    optional: Those of `scalars` records may lack; read as -1 where they do.
    history: Whether to read the history too.
  """
  files = sorted(glob.glob(os.path.join(split_dir, "*.gz")))
  if not files:
    raise FileNotFoundError(f"No example files (*.gz) in {split_dir}")
  spec = {name: tf.io.FixedLenFeature(
      [], dtype, default_value=tf.constant(_MISSING, dtype) if name in optional else None)
          for name, dtype in scalars.items()}
  if history:
    spec[contract.HISTORY] = tf.io.RaggedFeature(tf.string)
  columns = {name: [] for name in spec}
  for batch in tf.data.TFRecordDataset(files, compression_type="GZIP").batch(
      _RECORDS_PER_BATCH).map(lambda records: tf.io.parse_example(records, spec)):
    for name, values in batch.items():
      columns[name].append(values.to_list() if name == contract.HISTORY else values.numpy())
  frame = pd.DataFrame({name: np.concatenate(parts) if parts else [] for name, parts in
                        columns.items() if name != contract.HISTORY})
  for name, dtype in scalars.items():
    if dtype == tf.string:
      frame[name] = frame[name].str.decode("utf-8")
  if history:
    frame[contract.HISTORY] = [tuple(item.decode() for item in items)
                               for part in columns[contract.HISTORY] for items in part]
  return frame


def load_eval_data(examples_uri: str, transitions_uri: str) -> EvalData:
  """EvalData from SessionBuilder's `examples` and `transitions` artifacts."""
  def split(uri, name, scalars, **kwargs):
    return read_split(sessions.split_dir(uri, name), scalars, **kwargs)

  train_examples = split(examples_uri, sessions.TRAIN_SPLIT, QUERY_FEATURES, history=False)
  eval_examples = split(examples_uri, sessions.EVAL_SPLIT, QUERY_FEATURES)
  # Shown items never engaged with are in the catalog too; only their categories are needed.
  shown = split(transitions_uri, sessions.TRAIN_SPLIT,
                {contract.ITEM_ID: tf.string, contract.CATEGORY: tf.string}, history=False)
  eval_impressions = split(transitions_uri, sessions.EVAL_SPLIT,
                           dict(_IMPRESSION_FEATURES, **_SLATE_FEATURES),
                           optional=tuple(_SLATE_FEATURES))
  return eval_data(train_examples, eval_examples, shown, eval_impressions)


def eval_data(train_examples: pd.DataFrame, eval_examples: pd.DataFrame,
              shown: pd.DataFrame, eval_impressions: Optional[pd.DataFrame]) -> EvalData:
  """EvalData from the frames `read_split` returns.

  Args:
    train_examples, eval_examples: Engagements (user_id, item_id, category, session, timestamp,
      and history for eval).
    shown: item_id, category of the training impressions.
    eval_impressions: The eval transitions, position and propensity -1 where not logged; None
      for queries without impressions to judge off-policy by.
  """
  if eval_examples.empty:
    raise ValueError("The evaluation split holds no engagements to evaluate on")
  item_category = pd.concat([
      frame[[contract.ITEM_ID, contract.CATEGORY]]
      for frame in (shown, eval_impressions, train_examples, eval_examples)
      if frame is not None]).drop_duplicates(
          contract.ITEM_ID).set_index(contract.ITEM_ID)[contract.CATEGORY].sort_index()
  queries = eval_examples.sort_values([contract.TIMESTAMP, contract.USER_ID], kind="stable")
  # Session length counts every engagement of the session, repeats included.
  session_length = queries.groupby(contract.SESSION)[contract.ITEM_ID].transform("size")
  repeat = np.array([item in history for item, history in
                     zip(queries[contract.ITEM_ID], queries[contract.HISTORY])], dtype=bool)
  if repeat.all():
    raise ValueError("Every eval engagement is with an item of its history; with seen items "
                     "removed there is nothing to evaluate")
  queries, session_length = queries[~repeat].reset_index(drop=True), session_length[~repeat]
  queries = pd.DataFrame({
      QUERY: np.arange(len(queries)),
      contract.USER_ID: queries[contract.USER_ID],
      contract.HISTORY: queries[contract.HISTORY],
      contract.TIMESTAMP: queries[contract.TIMESTAMP],
      contract.ITEM_ID: queries[contract.ITEM_ID],
      contract.CATEGORY: queries[contract.CATEGORY],
      "returning_user": queries[contract.USER_ID].isin(set(train_examples[contract.USER_ID])),
      "session_length_bucket": pd.cut(session_length, SESSION_LENGTH_BINS,
                                      labels=SESSION_LENGTH_BUCKETS).astype(str).to_numpy(),
  })
  return EvalData(queries=queries,
                  train_engagements=train_examples[[contract.USER_ID, contract.ITEM_ID]],
                  item_category=item_category,
                  impressions=(None if eval_impressions is None
                               else _logged_slates(eval_impressions, item_category.index)),
                  repeat_queries=int(repeat.sum()))


def _logged_slates(transitions: pd.DataFrame, catalog: pd.Index) -> Optional[pd.DataFrame]:
  """The eval impressions in off_policy.SlateLog's layout; None without propensities.

  A slate is a session's impressions of one timestamp (the simulator logs a slate at once).
  Impressions without a logged position and propensity, and slates with a missing or repeated
  position (e.g. after the session builder dropped duplicate rows), cannot be weighted and are
  left out.
  """
  transitions = transitions[(transitions[contract.PROPENSITY] > 0)
                            & (transitions[contract.POSITION] >= 0)]
  if transitions.empty:
    return None
  frame = transitions.assign(
      step=transitions.groupby(contract.SESSION)[contract.TIMESTAMP].rank(method="dense"),
      item=catalog.get_indexer(transitions[contract.ITEM_ID]))
  slate_size = frame[contract.POSITION].max() + 1
  positions = frame.groupby([contract.SESSION, "step"])[contract.POSITION]
  frame = frame[(positions.transform("size") == slate_size)
                & (positions.transform("nunique") == slate_size)]
  if frame.empty:
    return None
  return pd.DataFrame({
      "session": frame[contract.SESSION], "user": frame[contract.USER_ID],
      "step": frame["step"].astype(int), "position": frame[contract.POSITION].astype(int),
      "item": frame["item"], "propensity": frame[contract.PROPENSITY].astype(float),
      "click": frame[contract.CLICK].astype(int), "purchase": frame[contract.PURCHASE].astype(int),
      "revenue": frame[contract.REVENUE].astype(float),
      "history": frame[contract.HISTORY],
      "timestamp": frame[contract.TIMESTAMP]}).reset_index(drop=True)


def item_factors(train_engagements: pd.DataFrame, catalog: np.ndarray,
                 dim: int) -> Dict[str, np.ndarray]:
  """Item vectors from a truncated SVD of the training item x user engagement matrix.

  Items with no engagement in training have no vector; embedding diversity leaves them out.
  """
  engaged = train_engagements[train_engagements[contract.ITEM_ID].isin(set(catalog))]
  items, item_codes = np.unique(engaged[contract.ITEM_ID], return_inverse=True)
  users, user_codes = np.unique(engaged[contract.USER_ID], return_inverse=True)
  matrix = sparse.csr_matrix((np.ones(len(engaged)), (item_codes, user_codes)),
                             shape=(len(items), len(users)))
  rank = min(dim, min(matrix.shape) - 1)
  if rank < 1:
    return {}
  # Randomized SVD seeded from NumPy: the same data gives the same vectors. ARPACK (scipy's svds)
  # restarts from a seed it keeps between calls, so where singular values tie (a catalog's
  # symmetric corners) two calls in one process returned differently rotated vectors.
  left, singular, _ = extmath.randomized_svd(matrix, n_components=rank, random_state=0)
  vectors = left * singular
  return {item: vector for item, vector in zip(items, vectors) if np.linalg.norm(vector) > 0}


def recommendation_lists(model: model_queries.RankingSignature, queries: pd.DataFrame,
                         k: int) -> pd.DataFrame:
  """Each query's top k without its history's items: query, rank (from 1), item_id."""
  item_ids, _ = model.rank(queries[contract.USER_ID].tolist(),
                           queries[contract.HISTORY].tolist(),
                           queries[contract.TIMESTAMP].tolist())
  return _top_unseen(queries, item_ids, k)


def _top_unseen(queries: pd.DataFrame, rankings, k: int) -> pd.DataFrame:
  """Each query's first k items of its ranking (one per query) that are not in its history."""
  rows = []
  for query, history, items in zip(queries[QUERY], queries[contract.HISTORY], rankings):
    seen = set(history)
    # Shorter than k when the ranking holds fewer unseen items (a catalog smaller than k plus
    # the history): the missing ranks count as misses, as an empty slot would.
    unseen = [item for item in items if item not in seen][:k]
    rows.append(pd.DataFrame({QUERY: query, ranking_metrics.RANK: np.arange(1, len(unseen) + 1),
                              ranking_metrics.ITEM_ID: unseen}))
  return pd.concat(rows, ignore_index=True)


def accuracy(queries: pd.DataFrame, lists: pd.DataFrame, ks: Sequence[int]) -> Dict[str, float]:
  scores = ranking_metrics.ranking_metrics(
      queries[[QUERY, contract.ITEM_ID]].rename(columns={QUERY: ranking_metrics.USER_ID}),
      lists.rename(columns={QUERY: ranking_metrics.USER_ID}), list(ks))
  scores.pop("users")
  return scores


def list_metrics(lists: pd.DataFrame, data: EvalData, vectors: Dict[str, np.ndarray],
                 k: int) -> Dict[str, float]:
  recommended = lists.rename(columns={QUERY: ranking_metrics.USER_ID})
  # Add-one smoothing: items shown but never engaged in training get a finite, high novelty.
  smoothed = pd.concat([data.train_engagements[[contract.ITEM_ID]],
                        pd.DataFrame({contract.ITEM_ID: data.catalog})])
  with_vectors = recommended[recommended[ranking_metrics.ITEM_ID].isin(vectors.keys())]
  return {
      f"coverage@{k}": beyond_accuracy.catalog_coverage(recommended, data.catalog, k),
      f"category_diversity@{k}": beyond_accuracy.category_diversity(
          recommended, data.item_category, k),
      f"embedding_diversity@{k}": beyond_accuracy.embedding_diversity(with_vectors, vectors, k),
      f"novelty@{k}": beyond_accuracy.novelty(recommended, smoothed, k),
      f"exposure_gini@{k}": beyond_accuracy.exposure_gini(recommended, data.catalog, k),
  }


def slices(queries: pd.DataFrame, lists: pd.DataFrame, k: int) -> Dict[str, Dict[str, Dict]]:
  """Recall and nDCG at k per slice value, with the number of queries each averages over."""
  by = {"user": queries["returning_user"].map({True: "returning", False: "new"}),
        "item_category": queries[contract.CATEGORY],
        "session_length": queries["session_length_bucket"]}
  result = {}
  for slice_name, values in by.items():
    result[slice_name] = {}
    for value in sorted(values.unique()):
      subset = queries[values == value]
      scores = accuracy(subset, lists[lists[QUERY].isin(subset[QUERY])], [k])
      result[slice_name][str(value)] = {f"recall@{k}": scores[f"recall@{k}"],
                                        f"ndcg@{k}": scores[f"ndcg@{k}"],
                                        "queries": int(len(subset))}
  return result


def off_policy_estimates(model: model_queries.RankingSignature, data: EvalData,
                         rank_temperature: float) -> Dict[str, Dict[str, float]]:
  """IPS, SNIPS and DR of the model's softened ranking from the logged slates, with intervals.

  The target's logits are -rank / rank_temperature over the model's returned items and -inf
  over the rest of the catalog, which it never shows. Each slate's query is its user, history
  and the time it was shown. The model ranks deterministically, so each distinct query is asked
  once for all five estimators (each of which asks for the target's probabilities of every
  slate, in chunks).
  """
  catalog = pd.Index(data.catalog)
  # (user, history, timestamp) -> catalog positions of the ranking, -1 for an unknown id
  ranked_items: Dict[Tuple[str, Tuple[str, ...], int], np.ndarray] = {}

  def ranking(log: off_policy.SlateLog) -> np.ndarray:
    keys = [(user, tuple(history), int(timestamp))
            for user, history, timestamp in zip(log.users, log.histories, log.timestamps)]
    new = list(dict.fromkeys(key for key in keys if key not in ranked_items))
    if new:
      users, new_histories, timestamps = zip(*new)
      item_ids, _ = model.rank(list(users), list(new_histories), list(timestamps))
      positions = catalog.get_indexer(item_ids.ravel()).reshape(item_ids.shape)
      ranked_items.update(zip(new, positions))
    return np.stack([ranked_items[key] for key in keys])

  def logits(log: off_policy.SlateLog) -> np.ndarray:
    items = ranking(log)
    values = np.full((len(items), log.n_items), -np.inf)
    ranks = np.broadcast_to(np.arange(items.shape[1]), items.shape)
    known = items >= 0  # an id outside the logged catalog was never logged: it carries no weight
    values[np.nonzero(known)[0], items[known]] = -ranks[known] / rank_temperature
    return values

  target = off_policy.PlackettLuceTarget(logits)
  estimates = {}
  for reward, estimators in (
      ("click", {"ope_ctr": off_policy.DoublyRobust(),
                 "ope_ctr_ips": off_policy.InversePropensityScoring(),
                 "ope_ctr_snips": off_policy.SelfNormalizedInversePropensityScoring()}),
      ("purchase", {"ope_purchase_rate": off_policy.DoublyRobust()}),
      ("revenue", {"ope_revenue_per_impression": off_policy.DoublyRobust()})):
    log = off_policy.SlateLog.from_impressions(data.impressions, len(catalog), reward=reward,
                                               history="history", timestamp="timestamp")
    for name, estimator in estimators.items():
      estimates[name] = dataclasses.asdict(estimator.estimate(log, target))
  return estimates


def simulator_metrics(model_dir: str, n_users: int, seed: int,
                      signature_name: str = contract.SERVING_SIGNATURE) -> Dict[str, float]:
  """The signature's ranking on-policy in the default dataset's simulated world (module
  docstring)."""
  world = generator.default_world()
  n_users = min(n_users, world.n_users)
  outcome = simulator.run_users(world, model_policy.SavedModelPolicy(model_dir, signature_name),
                                np.arange(n_users), SIMULATOR_HORIZON,
                                np.random.default_rng(seed)).sessions
  return rollout_metrics(outcome, n_users)


def rollout_metrics(outcome: pd.DataFrame, n_users: int) -> Dict[str, float]:
  """SIMULATOR_METRICS of `simulator.run_users`' sessions of `n_users` users."""
  impressions = outcome["steps"].sum() * simulator.DEFAULT_SLATE_SIZE
  clicks = outcome["clicks"].sum()
  return {"simulator_ctr": float(clicks / impressions),
          "simulator_conversion_rate": float(outcome["purchases"].sum() / max(clicks, 1)),
          "simulator_clicks_per_session": float(outcome["clicks"].mean()),
          "simulator_revenue_per_session": float(outcome["revenue"].mean()),
          "simulator_satisfaction": float(outcome["satisfaction"].mean()),
          "simulator_session_length": float(outcome["steps"].mean()),
          "simulator_clicks_per_user": float(clicks / n_users),
          "simulator_revenue_per_user": float(outcome["revenue"].sum() / n_users),
          "simulator_sessions_per_user": float(len(outcome) / n_users),
          "simulator_return_rate": float(outcome["returned"].mean())}


@dataclasses.dataclass(frozen=True)
class ModelReport:
  queries: int  # the eval engagements the accuracy metrics average over
  repeat_queries: int  # those left out as re-engagements with an item of the history
  metrics: Dict[str, float]
  slices: Dict[str, Dict[str, Dict]]
  off_policy: Dict[str, Dict[str, float]]  # estimate name -> Estimate fields

  def to_dict(self) -> Dict:
    return dataclasses.asdict(self)


def _list_length(config: EvaluationConfig) -> int:
  return max(list(config.ks) + list(config.list_ks) + [config.slice_k])


def _report(lists: pd.DataFrame, data: EvalData, vectors: Dict[str, np.ndarray],
            config: EvaluationConfig, metrics: Dict[str, float],
            estimates: Dict[str, Dict[str, float]]) -> ModelReport:
  """The list-based metrics and slices of `lists`, with the model's other `metrics`."""
  metrics = {**accuracy(data.queries, lists, config.ks), **metrics}
  for k in config.list_ks:
    metrics.update(list_metrics(lists, data, vectors, k))
  return ModelReport(queries=len(data.queries), repeat_queries=data.repeat_queries,
                     metrics={name: float(value) for name, value in metrics.items()},
                     slices=slices(data.queries, lists, config.slice_k), off_policy=estimates)


def evaluate(model_dir: str, data: EvalData, vectors: Dict[str, np.ndarray],
             config: EvaluationConfig,
             signature_name: str = contract.SERVING_SIGNATURE) -> ModelReport:
  """Every metric of the module docstring for one ranking signature of a model.

  Every signature's rollouts start from `config.simulator_seed` and so meet the same users in the
  same order: two signatures' simulator figures differ by their rankings and the clicks' draws.
  """
  model = model_queries.RankingSignature(model_dir, signature_name, batch_size=_BATCH_SIZE)
  lists = recommendation_lists(model, data.queries, _list_length(config))
  metrics, estimates = {}, {}
  if data.impressions is not None:
    estimates = off_policy_estimates(model, data, config.ope_rank_temperature)
    metrics.update({name: estimate["value"] for name, estimate in estimates.items()})
  if config.simulator_users:
    metrics.update(simulator_metrics(model_dir, config.simulator_users, config.simulator_seed,
                                     signature_name))
  return _report(lists, data, vectors, config, metrics, estimates)


def popularity_lists(data: EvalData, k: int) -> pd.DataFrame:
  """Each query's k most engaged training items without its history's items: query, rank (from
  1), item_id. Ties go to the smaller item id, so the lists are deterministic."""
  counts = data.train_engagements[contract.ITEM_ID].value_counts()
  ranked = counts.rename_axis(contract.ITEM_ID).reset_index(name="count").sort_values(
      ["count", contract.ITEM_ID], ascending=[False, True], kind="stable")[contract.ITEM_ID]
  longest_history = max((len(history) for history in data.queries[contract.HISTORY]), default=0)
  return _top_unseen(data.queries, itertools.repeat(ranked.to_numpy()[:k + longest_history]), k)


def evaluate_popularity(data: EvalData, vectors: Dict[str, np.ndarray],
                        config: EvaluationConfig) -> ModelReport:
  """The list-based metrics of the most-popular ranking (`popularity_lists`); it has no
  propensities to be judged off-policy by and no policy for the simulator."""
  return _report(popularity_lists(data, _list_length(config)), data, vectors, config, {}, {})
