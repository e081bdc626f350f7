"""The evaluator's whole job, without TFX: evaluate candidate and baseline, judge, write the record.

The candidate, its retrieval stage (its own `retrieve` signature: the ranking its DQN head
reranks), the baseline (the latest blessed model) and the most-popular ranking are evaluated on
the same eval data by components/evaluation/model_evaluation.py and judged by
components/evaluation/release_gate.py. The outcome is written to an output directory as
`evaluation.json` (the machine-readable record: the models' metrics, slices, off-policy
estimates, the verdict and the gate configuration) and `report.html`
(components/evaluation/report.py).

With a trade-off search (`tradeoff_search`) and a baseline, both models' combiner weights are
searched on the same validation users (components/evaluation/tradeoffs.py), and the gate's
hypervolume rule compares their fronts; the searches are part of the record.
"""
import dataclasses
import json
import os
from typing import Dict, List, Optional, Tuple

import tensorflow as tf

from components.evaluation import model_evaluation
from components.evaluation import release_gate
from components.evaluation import report as evaluation_report
from components.evaluation import tradeoffs
from components.evaluation.config import TradeoffConfig
from components.models import queries
from schemas import contract

EVALUATION_FILE = "evaluation.json"
REPORT_FILE = "report.html"


@dataclasses.dataclass(frozen=True)
class EvaluationResult:
  candidate: model_evaluation.ModelReport
  baseline: Optional[model_evaluation.ModelReport]
  verdict: release_gate.Verdict
  gate: release_gate.GateConfig
  popularity: Optional[model_evaluation.ModelReport] = None
  # The candidate's `retrieve` signature, what the gate's rerank rule holds its served ranking to.
  retrieval_stage: Optional[model_evaluation.ModelReport] = None
  # Earlier blessed models' metrics, oldest first, each {"name": ..., "metrics": {...},
  # "hypervolume": their front's or None}: the report plots them; they were measured on their
  # own runs' data.
  past_models: List[Dict] = dataclasses.field(default_factory=list)
  # The trade-off searches of candidate and baseline, and their fronts' hypervolumes from the
  # baseline's hand-set point, where the run searched.
  tradeoff_searches: Optional[Dict[str, tradeoffs.SearchResult]] = None
  hypervolumes: Optional[Tuple[float, float]] = None

  def to_dict(self) -> Dict:
    reports = {"candidate": self.candidate, "baseline": self.baseline,
               "popularity": self.popularity, "retrieval_stage": self.retrieval_stage}
    return {**{name: None if report is None else report.to_dict()
               for name, report in reports.items()},
            "verdict": self.verdict.to_dict(),
            "gate": self.gate.to_yaml(),
            "past_models": self.past_models,
            "tradeoffs": None if self.tradeoff_searches is None else {
                **{name: search.to_dict() for name, search in self.tradeoff_searches.items()},
                "hypervolumes": dict(zip(("candidate", "baseline"), self.hypervolumes))}}


def evaluate_candidate(candidate_dir: str, baseline_dir: Optional[str],
                       data: model_evaluation.EvalData, gate: release_gate.GateConfig,
                       config: model_evaluation.EvaluationConfig,
                       past_models: Optional[List[Dict]] = None,
                       tradeoff_search: Optional[Tuple[tradeoffs.ValidationSet,
                                                       TradeoffConfig]] = None
                       ) -> EvaluationResult:
  config = config.covering([rule.name for rule in gate.rules])
  vectors = model_evaluation.item_factors(data.train_engagements, data.catalog,
                                          config.item_factors)
  candidate = model_evaluation.evaluate(candidate_dir, data, vectors, config)
  # The candidate's only: the rerank rule compares a model with itself, never with the baseline.
  retrieval_stage = model_evaluation.evaluate(candidate_dir, data, vectors, config,
                                              contract.RETRIEVE_SIGNATURE)
  baseline = (model_evaluation.evaluate(baseline_dir, data, vectors, config)
              if baseline_dir else None)
  popularity = model_evaluation.evaluate_popularity(data, vectors, config)
  searches = hypervolumes = None
  if tradeoff_search is not None and baseline_dir:
    validation, tradeoff_config = tradeoff_search
    searches = {name: tradeoffs.search(queries.RankingSignature(model_dir), validation,
                                       tradeoff_config)
                for name, model_dir in (("candidate", candidate_dir), ("baseline", baseline_dir))}
    hypervolumes = tradeoffs.compared_hypervolumes(searches["candidate"], searches["baseline"])
  verdict = release_gate.judge(gate, candidate.metrics, baseline and baseline.metrics,
                               popularity.metrics, retrieval_stage.metrics, hypervolumes)
  return EvaluationResult(candidate=candidate, baseline=baseline, verdict=verdict, gate=gate,
                          popularity=popularity, retrieval_stage=retrieval_stage,
                          past_models=list(past_models or []), tradeoff_searches=searches,
                          hypervolumes=hypervolumes)


def write(result: EvaluationResult, output_dir: str) -> None:
  """evaluation.json and report.html in output_dir (local or remote), each whole or not at all."""
  tf.io.gfile.makedirs(output_dir)
  write_atomically(os.path.join(output_dir, EVALUATION_FILE),
                   json.dumps(result.to_dict(), indent=2, sort_keys=True))
  write_atomically(os.path.join(output_dir, REPORT_FILE),
                   evaluation_report.render(result.to_dict()))


def read(output_dir: str) -> Dict:
  with tf.io.gfile.GFile(os.path.join(output_dir, EVALUATION_FILE)) as file:
    return json.load(file)


def write_atomically(path: str, text: str) -> None:
  """Writes `text` to `path` (local or remote) whole or not at all: a reader never sees half."""
  partial = path + ".partial"
  with tf.io.gfile.GFile(partial, "w") as file:
    file.write(text)
  tf.io.gfile.rename(partial, path, overwrite=True)
