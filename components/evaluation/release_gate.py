"""The release gate: whether a candidate model ships, judged on several metrics at once.

Configured in schemas/gate/gate.yaml (`GateConfig.load`). The candidate is blessed when all its
rules hold, checked in this order:
  1. floors: every configured floor is met;
  2. over popularity: the candidate beats the most-popular ranking, evaluated on the same data in
     the same run, by at least the configured margin, relative to popularity's value or
     absolute. A floor in absolute numbers fits one dataset; this one holds on any data, since
     popularity is what a model must beat to be worth serving (the default gate's accuracy
     rules are of this kind);
  3. no regression: no metric falls behind the baseline (the latest blessed model, evaluated on the
     same data) by more than its allowance, relative to the baseline's value or absolute;
  4. Pareto: the baseline does not dominate the candidate on the Pareto set, i.e. it is not at
     least as good on every Pareto metric and strictly better on one (differences within a
     metric's `pareto_epsilon` are ties);
  5. no rerank loss: the served ranking (`serving_default`, retrieval reranked by the DQN head)
     falls behind the candidate's own retrieval stage (its `retrieve` signature, evaluated on the
     same data in the same run) by no more than the metric's allowance, relative to the
     retrieval stage's value or absolute. A head that makes the ranking worse than serving
     retrieval alone would be refused by no other rule: popularity and the baseline may be
     beaten all the same.
  6. hypervolume (optional, top-level `hypervolume: {max_shrink: ...}`): where the run searched
     the trade-offs of candidate and baseline (components/evaluation/tradeoffs.py, on the same
     validation users), the hypervolume of the candidate's front, both measured from one
     reference point (the baseline's hand-set weighting's), falls behind the baseline front's by
     no more than the allowance. A candidate may lose a little at its own hand-set weighting yet
     offer better trade-offs elsewhere; this rule refuses one whose trade-offs all got worse.
Rule 4 lets a model trade one objective for another (a little accuracy for much more diversity)
as far as rule 3's allowances go, and refuses one that only gets worse. Without a baseline (the
first run) rules 1, 2 and 5 apply.

The weighted-sum score, sum over metrics of weight x value with "lower is better" metrics
negated, is reported for candidate and baseline as the one-number summary a dashboard wants; it
decides nothing, because a scalarisation hides exactly the trade-offs the rules look at.

Rule 6 is judged only when both fronts exist.

Metrics a run did not measure (the simulator's only exist for simulator data) are listed as not
measured and skip the rules; a name the evaluator never writes is a configuration error.
"""
import dataclasses
import math
import pathlib
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import yaml

from components.evaluation import model_evaluation
import schemas

HIGHER, LOWER = "higher", "lower"
RELATIVE, ABSOLUTE = "relative", "absolute"
# The (RELATIVE or ABSOLUTE, amount) settings, in the order of their rules.
_RELATIVE_OR_ABSOLUTE_KEYS = ("over_popularity", "max_regression", "max_rerank_loss")
_METRIC_KEYS = {"direction", "floor", "pareto", "pareto_epsilon", "weight",
                *_RELATIVE_OR_ABSOLUTE_KEYS}


class GateConfigError(ValueError):
  """The gate configuration is invalid; the message names the file, metric and key."""


@dataclasses.dataclass(frozen=True)
class MetricRule:
  name: str
  direction: str = HIGHER
  floor: Optional[float] = None
  # (RELATIVE or ABSOLUTE, margin) by which the candidate must beat popularity, or None.
  over_popularity: Optional[tuple] = None
  # (RELATIVE or ABSOLUTE, allowance), or None for no regression rule.
  max_regression: Optional[tuple] = None
  pareto: bool = False
  pareto_epsilon: float = 0.0
  # (RELATIVE or ABSOLUTE, allowance) by which the served ranking may fall behind the model's
  # retrieval stage, or None for no rerank rule.
  max_rerank_loss: Optional[tuple] = None
  weight: float = 0.0

  def better(self, value: float, than: float, by: float = 0.0) -> bool:
    """Whether `value` beats `than` by more than `by` in this metric's direction."""
    return value - than > by if self.direction == HIGHER else than - value > by

  def shortfall(self, value: float, target: float) -> float:
    """How far `value` is on the wrong side of `target` (positive when it is)."""
    return target - value if self.direction == HIGHER else value - target

  def popularity_target(self, popularity: float) -> float:
    """The value the candidate must reach: popularity's, moved by the margin in the metric's
    better direction."""
    margin = _amount(self.over_popularity, popularity)
    return popularity + margin if self.direction == HIGHER else popularity - margin


def _amount(setting: tuple, reference: float) -> float:
  """A (RELATIVE or ABSOLUTE, amount) setting's amount in the metric's units."""
  kind, amount = setting
  return amount * abs(reference) if kind == RELATIVE else amount


def _describe(setting: tuple) -> str:
  kind, amount = setting
  return f"{amount:.0%} of it" if kind == RELATIVE else f"{amount:.4f}"


@dataclasses.dataclass(frozen=True)
class GateConfig:
  rules: Sequence[MetricRule]
  # Rule 6: (RELATIVE or ABSOLUTE, allowance) by which the candidate front's hypervolume may fall
  # behind the baseline front's, or None for no such rule.
  hypervolume_max_shrink: Optional[tuple] = None

  @classmethod
  def load(cls, path: pathlib.Path = schemas.DEFAULT_GATE_CONFIG) -> "GateConfig":
    try:
      text = pathlib.Path(path).read_text(encoding="utf-8")
    except OSError as error:
      raise GateConfigError(f"{path}: cannot read the gate configuration: {error}") from error
    return cls.from_yaml(text, source=str(path))

  @classmethod
  def from_yaml(cls, text: str, source: str = "<gate config>") -> "GateConfig":
    try:
      document = yaml.safe_load(text)
    except yaml.YAMLError as error:
      raise GateConfigError(f"{source}: not valid YAML: {error}") from error
    if not isinstance(document, dict) or not isinstance(document.get("metrics"), dict):
      raise GateConfigError(f"{source}: expected a top-level 'metrics:' mapping of metric names")
    unknown_top = set(document) - {"metrics", "hypervolume"}
    if unknown_top:
      raise GateConfigError(f"{source}: unknown top-level keys {sorted(unknown_top)}")
    rules = [_parse_rule(name, settings or {}, source)
             for name, settings in document["metrics"].items()]
    if not rules:
      raise GateConfigError(f"{source}: 'metrics' is empty; the gate would judge nothing")
    hypervolume = document.get("hypervolume") or {}
    if not isinstance(hypervolume, dict) or set(hypervolume) - {"max_shrink"}:
      raise GateConfigError(f"{source}: 'hypervolume' takes one key, max_shrink, e.g. "
                            f"{{max_shrink: {{relative: 0.05}}}}; got {hypervolume!r}")
    return cls(rules=tuple(rules), hypervolume_max_shrink=_relative_or_absolute(
        hypervolume, "max_shrink", f"{source}: hypervolume"))

  def to_yaml(self) -> str:
    """The configuration as YAML that `from_yaml` reads back: how it travels as a parameter."""
    metrics = {}
    for rule in self.rules:
      settings = {"direction": rule.direction, "pareto": rule.pareto,
                  "pareto_epsilon": rule.pareto_epsilon, "weight": rule.weight}
      if rule.floor is not None:
        settings["floor"] = rule.floor
      for key in _RELATIVE_OR_ABSOLUTE_KEYS:
        setting = getattr(rule, key)
        if setting is not None:
          settings[key] = {setting[0]: setting[1]}
      metrics[rule.name] = settings
    document = {"metrics": metrics}
    if self.hypervolume_max_shrink is not None:
      kind, amount = self.hypervolume_max_shrink
      document["hypervolume"] = {"max_shrink": {kind: amount}}
    return yaml.safe_dump(document, sort_keys=False)

  @property
  def pareto_metrics(self) -> List[str]:
    return [rule.name for rule in self.rules if rule.pareto]


def _parse_rule(name: str, settings: Mapping, source: str) -> MetricRule:
  where = f"{source}: metric {name!r}"
  if not model_evaluation.is_metric_name(name):
    raise GateConfigError(f"{where}: the evaluator writes no such metric; it writes "
                          f"{model_evaluation.METRIC_NAME_PATTERNS}")
  if not isinstance(settings, dict):
    raise GateConfigError(f"{where}: expected a mapping of settings, got {settings!r}")
  unknown = set(settings) - _METRIC_KEYS
  if unknown:
    raise GateConfigError(f"{where}: unknown keys {sorted(unknown)}; allowed: "
                          f"{sorted(_METRIC_KEYS)}")

  def number(key: str, default=None, minimum: Optional[float] = None):
    value = settings.get(key, default)
    if value is None:
      return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
      raise GateConfigError(f"{where}: {key} must be a finite number, got {value!r}")
    if minimum is not None and value < minimum:
      raise GateConfigError(f"{where}: {key} must be at least {minimum}, got {value!r}")
    return float(value)

  direction = settings.get("direction", HIGHER)
  if direction not in (HIGHER, LOWER):
    raise GateConfigError(f"{where}: direction must be {HIGHER!r} or {LOWER!r}, got {direction!r}")
  pareto = settings.get("pareto", False)
  if not isinstance(pareto, bool):
    raise GateConfigError(f"{where}: pareto must be true or false, got {pareto!r}")
  return MetricRule(name=name, direction=direction, floor=number("floor"), pareto=pareto,
                    pareto_epsilon=number("pareto_epsilon", 0.0, minimum=0.0),
                    weight=number("weight", 0.0),
                    **{key: _relative_or_absolute(settings, key, where)
                       for key in _RELATIVE_OR_ABSOLUTE_KEYS})


def _relative_or_absolute(settings: Mapping, key: str, where: str) -> Optional[tuple]:
  """settings[key] as (RELATIVE or ABSOLUTE, amount >= 0), or None where it is not set."""
  setting = settings.get(key)
  if setting is None:
    return None
  if (not isinstance(setting, dict) or len(setting) != 1
      or next(iter(setting)) not in (RELATIVE, ABSOLUTE)):
    raise GateConfigError(f"{where}: {key} must be {{relative: X}} or {{absolute: X}}, got "
                          f"{setting!r}")
  kind = next(iter(setting))
  return kind, _non_negative(setting[kind], f"{where}: {key}.{kind}")


def _non_negative(value, where: str) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
    raise GateConfigError(f"{where} must be a number >= 0, got {value!r}")
  return float(value)


@dataclasses.dataclass(frozen=True)
class Failure:
  """One broken rule: which, for which metric, and by how much."""
  rule: str  # "floor", "popularity", "regression", "pareto", "rerank" or "hypervolume"
  metric: str
  message: str


@dataclasses.dataclass(frozen=True)
class Verdict:
  blessed: bool
  failures: Sequence[Failure]
  not_measured: Sequence[str]
  # The weighted-sum scores, None when no weight is configured (or no baseline).
  candidate_score: Optional[float]
  baseline_score: Optional[float]
  has_baseline: bool = False
  has_retrieval_stage: bool = False  # whether rule 5 had the retrieval stage's metrics

  @property
  def reason(self) -> str:
    """One readable line: what failed, or that everything held, with the weighted scores."""
    scores = ""
    if self.candidate_score is not None:
      scores = f" (weighted score {self.candidate_score:.4f}"
      if self.baseline_score is not None:
        scores += f" vs baseline {self.baseline_score:.4f}"
      scores += ")"
    if self.failures:
      return f"refused: {'; '.join(failure.message for failure in self.failures)}{scores}"
    checked = ("floors, popularity margins, regressions and Pareto rule" if self.has_baseline
               else "floors and popularity margins (first model: no baseline)")
    rerank = ", as do the rerank allowances" if self.has_retrieval_stage else ""
    return f"blessed: {checked} hold{rerank}{scores}"

  def to_dict(self) -> Dict:
    return {"blessed": self.blessed, "reason": self.reason,
            "failures": [dataclasses.asdict(failure) for failure in self.failures],
            "not_measured": list(self.not_measured),
            "candidate_score": self.candidate_score, "baseline_score": self.baseline_score,
            "has_baseline": self.has_baseline, "has_retrieval_stage": self.has_retrieval_stage}


def weighted_score(config: GateConfig, metrics: Mapping[str, float]) -> float:
  """Sum of weight x value over the measured metrics, 'lower is better' ones negated."""
  return float(sum(rule.weight * (metrics[rule.name] if rule.direction == HIGHER
                                  else -metrics[rule.name])
                   for rule in config.rules if rule.name in metrics))


def judge(config: GateConfig, candidate: Mapping[str, float],
          baseline: Optional[Mapping[str, float]] = None,
          popularity: Optional[Mapping[str, float]] = None,
          retrieval_stage: Optional[Mapping[str, float]] = None,
          hypervolumes: Optional[Tuple[float, float]] = None) -> Verdict:
  """Applies the module docstring's rules to the candidate's (and baseline's, the most-popular
  ranking's and the candidate's retrieval stage's) metrics; rules 2 and 5 skip metrics
  popularity or the retrieval stage has no value for. `hypervolumes`: the candidate's and the
  baseline's fronts', from one reference point, for rule 6."""
  measured = [rule for rule in config.rules
              if rule.name in candidate and (baseline is None or rule.name in baseline)]
  not_measured = [rule.name for rule in config.rules if rule not in measured]
  failures = []
  for rule in measured:
    value = candidate[rule.name]
    if rule.floor is not None and rule.shortfall(value, rule.floor) > 0:
      bound = "floor" if rule.direction == HIGHER else "ceiling"
      failures.append(Failure("floor", rule.name,
                              f"{rule.name} = {value:.4f} misses its {bound} {rule.floor:.4f} "
                              f"by {rule.shortfall(value, rule.floor):.4f}"))
  for rule in measured:
    if rule.over_popularity is None or popularity is None or rule.name not in popularity:
      continue
    value, target = candidate[rule.name], rule.popularity_target(popularity[rule.name])
    if rule.shortfall(value, target) > 0:
      failures.append(Failure("popularity", rule.name,
                              f"{rule.name} = {value:.4f} does not beat the most-popular "
                              f"ranking's {popularity[rule.name]:.4f} by "
                              f"{_describe(rule.over_popularity)}: short of "
                              f"{target:.4f} by {rule.shortfall(value, target):.4f}"))
  if baseline is not None:
    failures += _losses(measured, "max_regression", candidate, baseline, "regression",
                        "regresses from the baseline's")
    pareto = [rule for rule in measured if rule.pareto]
    if pareto and _dominates(pareto, baseline, candidate):
      worse = ", ".join(f"{rule.name} {candidate[rule.name]:.4f} vs {baseline[rule.name]:.4f}"
                        for rule in pareto
                        if rule.better(baseline[rule.name], candidate[rule.name],
                                       rule.pareto_epsilon))
      failures.append(Failure("pareto", ",".join(rule.name for rule in pareto),
                              f"the baseline dominates on the Pareto set (worse on {worse}; "
                              f"no better on the rest)"))
  if retrieval_stage is not None:
    failures += _losses(_rerank_rules(measured, retrieval_stage), "max_rerank_loss", candidate,
                        retrieval_stage, "rerank",
                        "after reranking falls behind its retrieval stage's")
  if hypervolumes is not None and config.hypervolume_max_shrink is not None:
    candidate_volume, baseline_volume = hypervolumes
    shrink = baseline_volume - candidate_volume
    if shrink > _amount(config.hypervolume_max_shrink, baseline_volume):
      failures.append(Failure("hypervolume", "hypervolume",
                              f"the trade-off front's hypervolume {candidate_volume:.4g} shrinks "
                              f"from the baseline front's {baseline_volume:.4g} by {shrink:.4g}, "
                              f"more than the allowed "
                              f"{_describe(config.hypervolume_max_shrink)}"))
  weighted = any(rule.weight for rule in measured)

  def score(metrics):
    return weighted_score(config, {rule.name: metrics[rule.name] for rule in measured})

  return Verdict(blessed=not failures, failures=tuple(failures), not_measured=tuple(not_measured),
                 candidate_score=score(candidate) if weighted else None,
                 baseline_score=score(baseline) if weighted and baseline is not None else None,
                 has_baseline=baseline is not None,
                 has_retrieval_stage=retrieval_stage is not None)


def _rerank_rules(rules: Sequence[MetricRule],
                  retrieval_stage: Mapping[str, float]) -> List[MetricRule]:
  """Rule 5's rules, without the off-policy ones where the run measured an on-policy one.

  Rollouts in the simulator measure what the off-policy estimates approximate from logged slates,
  and a head that reranks far from the logging policy makes the estimates unreliable: on the
  built-in data one training's ope_revenue_per_impression fell 32 % behind its retrieval
  stage's while the same kind of head earned more revenue on-policy (README, Benchmarks).
  """
  rerank = [rule for rule in rules
            if rule.max_rerank_loss is not None and rule.name in retrieval_stage]
  if any(rule.name in model_evaluation.SIMULATOR_METRICS for rule in rerank):
    return [rule for rule in rerank if rule.name not in model_evaluation.OFF_POLICY_METRICS]
  return rerank


def _losses(rules: Sequence[MetricRule], key: str, candidate: Mapping[str, float],
            reference: Mapping[str, float], rule_name: str, behind: str) -> List[Failure]:
  """Rules 3 and 5: a `rule_name` Failure for each rule whose candidate value falls behind
  `reference`'s by more than the rule's `key` setting (max_regression or max_rerank_loss) allows;
  `behind` words the comparison in the message."""
  failures = []
  for rule in rules:
    allowance = getattr(rule, key)
    if allowance is None or rule.name not in reference:
      continue
    value, target = candidate[rule.name], reference[rule.name]
    loss = rule.shortfall(value, target)
    if loss > _amount(allowance, target):
      failures.append(Failure(rule_name, rule.name,
                              f"{rule.name} = {value:.4f} {behind} {target:.4f} by {loss:.4f}, "
                              f"more than the allowed {_describe(allowance)}"))
  return failures


def _dominates(rules: Sequence[MetricRule], better: Mapping[str, float],
               worse: Mapping[str, float]) -> bool:
  """Whether `better` is no worse on every rule's metric and better (beyond epsilon) on one."""
  no_worse = all(not rule.better(worse[rule.name], better[rule.name], rule.pareto_epsilon)
                 for rule in rules)
  strictly = any(rule.better(better[rule.name], worse[rule.name], rule.pareto_epsilon)
                 for rule in rules)
  return no_worse and strictly
