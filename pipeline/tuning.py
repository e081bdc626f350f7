"""`recsys tune`: the trade-off search (components/evaluation/tradeoffs.py) on a pushed model.

The version's lineage (pipeline/lineage.py) names the SessionBuilder examples it was trained on,
whose validation users the search scores on, and its evaluation, which says whether the data came
from the simulator (it has the simulator's metrics only then) and so whether rollouts are part
of the score. The result goes to <home>/tradeoffs/<version>.json, whole or not at all.
"""
import json
import pathlib
from typing import Optional, Tuple

from components.evaluation import candidate_evaluation
from components.evaluation import model_evaluation
from components.evaluation import tradeoffs
from components.models import queries
from pipeline import lineage as lineage_lib
from pipeline.configs import PipelineConfig
from schemas import contract

TRADEOFFS_DIR = "tradeoffs"
_SESSION_BUILDER = "SessionBuilder"
_EXAMPLES_OUTPUT = "examples"
_TRANSITIONS_OUTPUT = "transitions"


def result_path(config: PipelineConfig, version: int) -> pathlib.Path:
  return config.home / TRADEOFFS_DIR / f"{version}.json"


def validation_set(config: PipelineConfig,
                   version: Optional[int] = None) -> Tuple[int, tradeoffs.ValidationSet]:
  """(version, the validation set its trade-offs are scored on) for `version` (default: the
  stable one), by its lineage (module docstring).

  Raises lineage.LineageError when the version or its artifacts cannot be found.
  """
  found = lineage_lib.lineage(config, version)
  outputs = {pathlib.PurePath(step.uri).parent.name: step.uri
             for step in found.find("Examples") if step.component == _SESSION_BUILDER}
  evaluations = [step.uri for step in found.find("ModelEvaluation")]
  if not {_EXAMPLES_OUTPUT, _TRANSITIONS_OUTPUT} <= set(outputs) or not evaluations:
    raise lineage_lib.LineageError(f"version {found.version}'s lineage lacks SessionBuilder's "
                                   f"examples or transitions, or an evaluation, to tune on")
  candidate_metrics = candidate_evaluation.read(evaluations[0])["candidate"]["metrics"]
  simulated = any(name in candidate_metrics for name in model_evaluation.SIMULATOR_METRICS)
  return found.version, tradeoffs.load_validation_set(
      outputs[_EXAMPLES_OUTPUT], outputs[_TRANSITIONS_OUTPUT],
      config.model.ranker.validation_fraction, config.tradeoffs, simulated)


def tune(config: PipelineConfig, version: Optional[int] = None, show_progress: bool = False,
         validation: Optional[tradeoffs.ValidationSet] = None
         ) -> Tuple[tradeoffs.SearchResult, pathlib.Path]:
  """Searches the combiner weights of `version` (default: the stable one) on `validation`
  (default: `validation_set`'s); writes the result.

  Raises lineage.LineageError when the version or its artifacts cannot be found.
  """
  if validation is None or version is None:
    version, validation = validation_set(config, version)
  model = queries.RankingSignature(config.model_base_path / str(version),
                                   contract.SERVING_SIGNATURE)
  result = tradeoffs.search(model, validation, config.tradeoffs, show_progress=show_progress)
  path = result_path(config, version)
  path.parent.mkdir(parents=True, exist_ok=True)
  candidate_evaluation.write_atomically(str(path), json.dumps(result.to_dict(), indent=2))
  return result, path


def describe(result: tradeoffs.SearchResult) -> str:
  """The front as a table, hand-set and chosen points marked, and how to serve the choice."""
  def weights(trial):
    return ",".join(f"{name}={value:.4g}" for name, value in trial.weights.items())

  widths = [max(len(name), 8) for name in result.metrics]
  header = f"{'trial':>7}  " + "  ".join(f"{name:>{width}}"
                                          for name, width in zip(result.metrics, widths))
  lines = [f"Pareto front: {len(result.front)} of {len(result.trials)} weightings "
           f"({result.seconds:.0f} s); hypervolume {result.hypervolume:.4g} against the hand-set "
           f"weighting's {result.handset_hypervolume:.4g}; {len(result.dominating)} dominate it",
           header]
  for number in [0] + [n for n in result.front if n != 0]:
    trial = result.trial(number)
    mark = ("hand-set" if number == 0 else "") + (" chosen" if number == result.chosen else "")
    lines.append(f"{number:>7}  " + "  ".join(f"{trial.metrics[name]:>{width}.4f}" for name, width
                                              in zip(result.metrics, widths))
                 + f"  {mark.strip()}")
  chosen = result.trial(result.chosen)
  lines.append(f"Chosen by {result.choice}: trial {chosen.number}, weights {weights(chosen)}")
  lines.append(f"Train and serve it: recsys run --reward {weights(chosen)}")
  return "\n".join(lines)
