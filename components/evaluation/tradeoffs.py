"""The trade-off between objectives: an evolutionary search over the ranking head's combiner.

The ranking head is one agent per objective (components/models/ranker.py) and serves
P(click) * sum_i w_i Q_i, the weights w_i a variable of the exported graph
(`q_network.objective_weights`). Another weighting is another trade-off without retraining, so
which one to serve is a question for the data. `search` asks it with Optuna's NSGA-II sampler,
scoring each weighting of one loaded model on data the head was not fitted to (`ValidationSet`):
  * offline, the engagements of the training split's validation users (those
    `training.is_validation_user` held out of the head's fit, found again by their raw ids),
    each asked as the evaluator asks an eval engagement (the user, their history before it, its
    time): accuracy and list metrics of those lists (model_evaluation's names, e.g. ndcg@10,
    coverage@10, category_diversity@10). The two-tower model was fitted to these users too;
    only the head, what the weights combine, never saw them;
  * on simulator data, rollouts in the simulator's default world of its validation users, each
    over `model_evaluation.SIMULATOR_HORIZON` sessions, `TradeoffConfig.rollouts` times, with the
    same draws for every weighting (common random numbers: two weightings differ by their
    rankings): e.g. simulator_ctr, simulator_conversion_rate, simulator_revenue_per_user,
    simulator_satisfaction.

The weights are searched in the agents' common unit. Agent i's values are in units of its
reward's mean per click (`q_network.reward_scales`), so w_i = u_i / scale_i, and since scaling
every weight alike leaves the ranking unchanged, u lies in [0, 1]^objectives; the model's own
(hand-set, RewardConfig's) weighting is tried first, scaled to a largest u_i of 1.

What is written (`SearchResult`): every weighting tried with its metrics, the Pareto front
(Optuna's non-dominated trials), which front points dominate the hand-set one, the chosen point
(TradeoffConfig.choice: the front's best weighted sum of value / hand-set value, or its knee, the
point nearest the front's ideal point with each metric scaled to the front's range), and the
front's hypervolume as pymoo computes it, each metric in units of the size of its hand-set value
(of 1 where that is 0), and the reference point 1 - reference_share of those units below the
hand-set value of every metric (at `reference_share` of it for a positive metric): the hand-set
point alone has (1 - reference_share)^metrics.
"""
import dataclasses
import time
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import optuna
import pandas as pd
from pymoo.indicators import hv
import tensorflow as tf

from components.data import sessions
from components.evaluation import model_evaluation
from components.evaluation.config import KNEE
from components.evaluation.config import TradeoffConfig
from components.models import queries as model_queries
from components.models import training
from components.models.config import OBJECTIVES
from components.simulation import generator
from components.simulation import model_policy
from components.simulation import simulator
from schemas import contract


@dataclasses.dataclass(frozen=True)
class ValidationSet:
  """What each weighting is scored on: held-out users' engagements, and simulated users."""
  data: model_evaluation.EvalData  # queries: the validation users' engagements
  # Numbers of the validation users of the simulator's world, empty for data it did not write.
  world_users: np.ndarray
  world: Optional[simulator.World] = None


def load_validation_set(examples_uri: str, transitions_uri: str, validation_fraction: float,
                        config: TradeoffConfig, simulated: bool) -> ValidationSet:
  """The validation users' engagements of SessionBuilder's training split, at most
  `config.max_queries` of them drawn with `config.seed`; with `simulated`, the simulator's
  default world and its validation users.

  `transitions_uri`: SessionBuilder's transitions, whose shown items complete the catalog the
  lists are judged in. `validation_fraction`: the Trainer's (RankerConfig.validation_fraction),
  for the same users.
  """
  split_dir = sessions.split_dir(examples_uri, sessions.TRAIN_SPLIT)
  examples = model_evaluation.read_split(split_dir, model_evaluation.QUERY_FEATURES)
  shown = model_evaluation.read_split(
      sessions.split_dir(transitions_uri, sessions.TRAIN_SPLIT),
      {contract.ITEM_ID: tf.string, contract.CATEGORY: tf.string}, history=False)
  held_out = _validation_mask(examples[contract.USER_ID].to_numpy(), validation_fraction)
  if not held_out.any():
    raise ValueError(f"no validation users among the {examples[contract.USER_ID].nunique()} "
                     f"users of {split_dir} at validation_fraction {validation_fraction}: the "
                     f"trade-off search has nothing held out to score on")
  validation = examples[held_out]
  if len(validation) > config.max_queries:
    validation = validation.sample(config.max_queries, random_state=config.seed)
  data = model_evaluation.eval_data(examples[~held_out], validation, shown, None)
  world, world_users = None, np.empty(0, np.int64)
  if simulated:
    world = generator.default_world()
    numbers = np.arange(world.n_users)
    world_users = numbers[_validation_mask(
        generator.ids(generator.USER_PREFIX, numbers).astype(str), validation_fraction)]
  return ValidationSet(data=data, world_users=world_users, world=world)


def _validation_mask(user_ids: np.ndarray, fraction: float) -> np.ndarray:
  return training.is_validation_user(tf.constant(user_ids, tf.string), fraction).numpy()


@dataclasses.dataclass(frozen=True)
class Trial:
  number: int
  weights: Dict[str, float]  # objective -> combiner weight, as assigned to the graph
  metrics: Dict[str, float]


@dataclasses.dataclass(frozen=True)
class SearchResult:
  metrics: List[str]  # the objectives of the search, all maximised
  reward_scales: Dict[str, float]
  trials: List[Trial]  # trials[0] is the hand-set weighting
  front: List[int]  # numbers of the non-dominated trials
  dominating: List[int]  # front trials that dominate the hand-set one
  chosen: int
  choice: str
  hypervolume: float  # the front's
  handset_hypervolume: float  # the hand-set point's alone
  reference_share: float
  seconds: float

  @property
  def handset(self) -> Trial:
    return self.trials[0]

  def trial(self, number: int) -> Trial:
    return next(trial for trial in self.trials if trial.number == number)

  def to_dict(self) -> Dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, record: Mapping) -> "SearchResult":
    return cls(**{**record, "trials": [Trial(**trial) for trial in record["trials"]]})


def measure(model: model_queries.RankingSignature, validation: ValidationSet,
            metric_names: Sequence[str], seed: int, rollouts: int) -> Dict[str, float]:
  """The named metrics of the model's ranking as it is now weighted (module docstring)."""
  cutoffs = model_evaluation.EvaluationConfig(ks=(), list_ks=()).covering(metric_names)
  accuracy_ks, list_ks = list(cutoffs.ks), list(cutoffs.list_ks)
  data = validation.data
  lists = model_evaluation.recommendation_lists(model, data.queries,
                                                max(accuracy_ks + list_ks, default=1))
  values = model_evaluation.accuracy(data.queries, lists, accuracy_ks) if accuracy_ks else {}
  for k in list_ks:
    values.update(model_evaluation.list_metrics(lists, data, {}, k))
  if any(name in model_evaluation.SIMULATOR_METRICS for name in metric_names):
    rng = np.random.default_rng(seed)
    policy = model_policy.SavedModelPolicy(model)
    outcome = pd.concat([simulator.run_users(validation.world, policy, validation.world_users,
                                             model_evaluation.SIMULATOR_HORIZON, rng).sessions
                         for _ in range(rollouts)], ignore_index=True)
    values.update(model_evaluation.rollout_metrics(outcome, rollouts * len(validation.world_users)))
  return {name: float(values[name]) for name in metric_names}


def searchable_metrics(config: TradeoffConfig, validation: ValidationSet) -> List[str]:
  """The configured metrics this validation set measures: the simulator's need its world.

  A name the search cannot measure at all (an off-policy estimate, a typo) is an error naming it.
  """
  for name in config.metrics:
    if not model_evaluation.is_metric_name(name) or name in model_evaluation.OFF_POLICY_METRICS:
      raise ValueError(f"tradeoffs.metrics: {name!r} is not a metric the search measures; it "
                       f"measures accuracy and list metrics at k and "
                       f"{list(model_evaluation.SIMULATOR_METRICS)}")
  names = [name for name in config.metrics
           if len(validation.world_users) or name not in model_evaluation.SIMULATOR_METRICS]
  if not names:
    raise ValueError(f"none of tradeoffs.metrics {list(config.metrics)} can be measured without "
                     f"the simulator's world")
  return names


def search(model: model_queries.RankingSignature, validation: ValidationSet,
           config: TradeoffConfig, show_progress: bool = False) -> SearchResult:
  """NSGA-II over the combiner weights of the loaded model (module docstring); the model's own
  weights are restored afterwards."""
  started = time.monotonic()
  q_network = model.saved_model.q_network
  served = q_network.objective_weights.numpy()
  scales = q_network.reward_scales.numpy()
  metric_names = searchable_metrics(config, validation)
  handset_units = served * scales
  if not (handset_units > 0).any():
    raise ValueError(f"the model's objective weights {served.tolist()} weigh no objective")
  handset_units = handset_units / handset_units.max()

  def objective(trial: optuna.Trial) -> List[float]:
    units = np.array([trial.suggest_float(name, 0.0, 1.0) for name in OBJECTIVES])
    weights = units / scales
    q_network.objective_weights.assign(weights.astype(np.float32))
    values = measure(model, validation, metric_names, config.seed, config.rollouts)
    trial.set_user_attr("weights", dict(zip(OBJECTIVES, weights.tolist())))
    trial.set_user_attr("metrics", values)
    return [values[name] for name in metric_names]

  verbosity = optuna.logging.get_verbosity()
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  try:
    study = optuna.create_study(
        directions=["maximize"] * len(metric_names),
        sampler=optuna.samplers.NSGAIISampler(population_size=config.population,
                                              seed=config.seed))
    study.enqueue_trial(dict(zip(OBJECTIVES, handset_units.tolist())))
    study.optimize(objective, n_trials=config.trials, show_progress_bar=show_progress)
  finally:
    optuna.logging.set_verbosity(verbosity)
    q_network.objective_weights.assign(served)
  trials = [Trial(number=trial.number, weights=trial.user_attrs["weights"],
                  metrics=trial.user_attrs["metrics"]) for trial in study.trials]
  front = sorted(trial.number for trial in study.best_trials)
  handset = trials[0].metrics
  front_points = [trials[number].metrics for number in front]
  return SearchResult(
      metrics=metric_names, reward_scales=dict(zip(OBJECTIVES, scales.tolist())), trials=trials,
      front=front,
      dominating=[number for number, point in zip(front, front_points)
                  if dominates(point, handset, metric_names)],
      chosen=front[choose(front_points, handset, metric_names, config)], choice=config.choice,
      hypervolume=hypervolume(front_points, handset, metric_names, config.reference_share),
      handset_hypervolume=hypervolume([handset], handset, metric_names, config.reference_share),
      reference_share=config.reference_share, seconds=time.monotonic() - started)


def compared_hypervolumes(candidate: SearchResult,
                          baseline: SearchResult) -> Tuple[float, float]:
  """Both fronts' hypervolumes from one reference point, the baseline's hand-set weighting's
  (release gate rule 6); the searches must have measured the same metrics."""
  if candidate.metrics != baseline.metrics:
    raise ValueError(f"the fronts measured different metrics: {candidate.metrics} and "
                     f"{baseline.metrics}")

  def volume(result: SearchResult) -> float:
    return hypervolume([result.trial(number).metrics for number in result.front],
                       baseline.handset.metrics, baseline.metrics, baseline.reference_share)

  return volume(candidate), volume(baseline)


def dominates(point: Mapping[str, float], other: Mapping[str, float],
              metric_names: Sequence[str]) -> bool:
  """Whether `point` is at least as high as `other` on every metric and higher on one."""
  return (all(point[name] >= other[name] for name in metric_names)
          and any(point[name] > other[name] for name in metric_names))


def _relative(points: Sequence[Mapping[str, float]], reference: Mapping[str, float],
              metric_names: Sequence[str]) -> np.ndarray:
  """[points, metrics] each value divided by the size of the reference's (by 1 where it is 0)."""
  scale = np.array([abs(reference[name]) or 1.0 for name in metric_names])
  return np.array([[point[name] for name in metric_names] for point in points]) / scale


def hypervolume(points: Sequence[Mapping[str, float]], reference: Mapping[str, float],
                metric_names: Sequence[str], reference_share: float) -> float:
  """pymoo's hypervolume of `points` (maximised metrics) in units of `reference`'s values, the
  reference point (1 - reference_share) of their size below each (module docstring)."""
  relative = _relative(points, reference, metric_names)
  worst = _relative([reference], reference, metric_names)[0] - (1.0 - reference_share)
  return float(hv.HV(ref_point=-worst)(-relative))


def choose(front: Sequence[Mapping[str, float]], handset: Mapping[str, float],
           metric_names: Sequence[str], config: TradeoffConfig) -> int:
  """The index in `front` of the point config.choice picks (module docstring)."""
  relative = _relative(front, handset, metric_names)
  if config.choice == KNEE:
    low, high = relative.min(axis=0), relative.max(axis=0)
    scaled = (relative - low) / np.where(high > low, high - low, 1.0)
    return int(np.argmin(np.linalg.norm(1.0 - scaled, axis=1)))
  weights = dict(zip(config.metrics, config.choice_weights))
  return int(np.argmax(relative @ np.array([weights[name] for name in metric_names])))
