"""How the trade-off search (components/evaluation/tradeoffs.py) runs; plain values, no TensorFlow.

A frozen dataclass the pipeline's configuration (pipeline/configs.py) reads instantly.
"""
import dataclasses
from typing import Tuple

# Choice rules: which point of the front is served.
WEIGHTED_SUM = "weighted_sum"  # the front's best sum of choice_weights x (value / hand-set value)
KNEE = "knee"  # the front's point nearest its ideal point, each metric scaled to the front's range
CHOICE_RULES = (WEIGHTED_SUM, KNEE)


@dataclasses.dataclass(frozen=True)
class TradeoffConfig:
  """The search's objectives, budget and rules; the defaults take about a minute on 2 cores.

  Every metric is one the evaluator writes (components/evaluation/model_evaluation.py) and is
  maximised; the simulator's are measured only on data the simulator wrote. The defaults are
  seed 002's objectives: accuracy, coverage, diversity, CTR, conversion, revenue and
  satisfaction.
  """
  metrics: Tuple[str, ...] = ("ndcg@10", "coverage@10", "category_diversity@10",
                              "simulator_ctr", "simulator_conversion_rate",
                              "simulator_revenue_per_user", "simulator_satisfaction")
  # The WEIGHTED_SUM rule's weight of each metric, in `metrics`' order: the gate's weights of
  # the same metrics (schemas/gate/gate.yaml), 1 for the business ones it does not weigh.
  choice_weights: Tuple[float, ...] = (1.0, 0.5, 0.5, 1.0, 1.0, 1.0, 1.0)
  choice: str = WEIGHTED_SUM
  # Weightings tried, the hand-set one (the model's own) first; NSGA-II's generation size.
  trials: int = 24
  population: int = 8
  seed: int = 0
  # The hypervolume's reference point: this share of the hand-set weighting's value of every
  # positive metric (tradeoffs.py's docstring says where it is not positive); a point counts
  # where it beats the reference point on every metric.
  reference_share: float = 0.5
  # Validation engagements the offline metrics average over, drawn with `seed`.
  max_queries: int = 2000
  # Rollouts of each validation user of the simulator's world per weighting.
  rollouts: int = 2

  def __post_init__(self):
    if not self.metrics:
      raise ValueError("metrics is empty: the search would have nothing to trade off")
    if len(self.choice_weights) != len(self.metrics):
      raise ValueError(f"choice_weights has {len(self.choice_weights)} values for "
                       f"{len(self.metrics)} metrics {list(self.metrics)}")
    if self.choice not in CHOICE_RULES:
      raise ValueError(f"choice must be one of {CHOICE_RULES}, got {self.choice!r}")
    for name in ("trials", "population", "max_queries", "rollouts"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
    if self.population < 2:
      raise ValueError(f"population must be at least 2 (NSGA-II mates pairs), got "
                       f"{self.population}")
    if not 0.0 < self.reference_share < 1.0:
      raise ValueError(f"reference_share must be in (0, 1), got {self.reference_share}")
