"""ModelEvaluator: the thin TFX component around components/evaluation/candidate_evaluation.py.

It evaluates the candidate, its retrieval stage and the latest blessed model on the held-out
data, judges the candidate by the release gate and writes a standard ModelEvaluation and
ModelBlessing, so the stock Pusher and TFX's LatestBlessedModelStrategy read its verdict.
"""
import json
import logging
import os
from typing import List

from tfx.components.evaluator import constants as evaluator_constants
from tfx.dsl.component.experimental import annotations
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts
from tfx.utils import io_utils
from tfx.utils import path_utils

from components import artifact_properties
from components.evaluation import candidate_evaluation
from components.evaluation import model_evaluation
from components.evaluation import release_gate
from components.evaluation import tradeoffs as tradeoffs_lib
from components.evaluation.config import TradeoffConfig


@component
def ModelEvaluator(
    model: annotations.InputArtifact[standard_artifacts.Model],
    examples: annotations.InputArtifact[standard_artifacts.Examples],
    transitions: annotations.InputArtifact[standard_artifacts.Examples],
    evaluation: annotations.OutputArtifact[standard_artifacts.ModelEvaluation],
    blessing: annotations.OutputArtifact[standard_artifacts.ModelBlessing],
    baseline_model: annotations.InputArtifact[standard_artifacts.Model] = None,
    past_evaluations: annotations.InputArtifact[List[standard_artifacts.ModelEvaluation]] = None,
    gate_config: annotations.Parameter[str] = "",
    simulator_users: annotations.Parameter[int] = 0,
    tradeoffs: annotations.Parameter[str] = "",
    validation_fraction: annotations.Parameter[float] = 0.0,
) -> None:
  """Evaluates the candidate and the baseline model and blesses the candidate or not.

  `baseline_model` is the latest blessed model (a resolver with LatestBlessedModelStrategy);
  `past_evaluations` are earlier blessed evaluations, plotted in the report. The logic is
  components/evaluation/candidate_evaluation.py; `gate_config` is the YAML of
  schemas/gate/gate.yaml. `tradeoffs`, the JSON of a TradeoffConfig, searches both models'
  combiner weights on the training split's validation users (the Trainer's
  `validation_fraction`) for the gate's hypervolume rule; "" searches nothing. The blessing
  carries the stock Evaluator's custom properties (`blessed`, `current_model`,
  `current_model_id`), so the stock Pusher and LatestBlessedModelStrategy read it.
  """
  gate = release_gate.GateConfig.from_yaml(gate_config, source="the gate_config parameter")
  if baseline_model is not None and baseline_model.id == model.id:
    # The Trainer's output was reused from the cache: this model is the latest blessed one and
    # is already pushed. Pushing it again would only make TF Serving load a copy.
    _bless(blessing, model, False, artifact_properties.UNCHANGED)
    evaluation.set_int_custom_property(artifact_properties.BLESSED, 0)
    return
  data = model_evaluation.load_eval_data(examples.uri, transitions.uri)
  past_models = [_past_model(past) for past in
                 sorted(past_evaluations or [], key=lambda artifact: artifact.id)]
  tradeoff_search = None
  if tradeoffs and baseline_model is not None:
    tradeoff_config = TradeoffConfig(**{name: tuple(value) if isinstance(value, list) else value
                                        for name, value in json.loads(tradeoffs).items()})
    tradeoff_search = (tradeoffs_lib.load_validation_set(
        examples.uri, transitions.uri, validation_fraction, tradeoff_config,
        simulated=simulator_users > 0),
                       tradeoff_config)
  result = candidate_evaluation.evaluate_candidate(
      path_utils.serving_model_path(model.uri),
      path_utils.serving_model_path(baseline_model.uri) if baseline_model else None, data, gate,
      model_evaluation.EvaluationConfig(simulator_users=simulator_users), past_models,
      tradeoff_search)
  candidate_evaluation.write(result, evaluation.uri)
  (logging.info if result.verdict.blessed else logging.warning)("Model %s", result.verdict.reason)
  evaluation.set_int_custom_property(artifact_properties.BLESSED, int(result.verdict.blessed))
  _bless(blessing, model, result.verdict.blessed, result.verdict.reason)


def _past_model(evaluation) -> dict:
  """An earlier evaluation's candidate metrics and, where its run searched, front hypervolume:
  what the report plots over runs."""
  record = candidate_evaluation.read(evaluation.uri)
  searched = record.get("tradeoffs")
  return {"name": f"evaluation {evaluation.id}", "metrics": record["candidate"]["metrics"],
          "hypervolume": searched["hypervolumes"]["candidate"] if searched else None}


def _bless(blessing, model, blessed: bool, reason: str) -> None:
  """Writes the blessing as TFX's Evaluator does: a marker file and custom properties."""
  blessing.set_string_custom_property(
      evaluator_constants.ARTIFACT_PROPERTY_CURRENT_MODEL_URI_KEY, model.uri)
  blessing.set_int_custom_property(
      evaluator_constants.ARTIFACT_PROPERTY_CURRENT_MODEL_ID_KEY, model.id)
  blessing.set_string_custom_property(
      evaluator_constants.ARTIFACT_PROPERTY_BLESSING_MESSAGE_KEY, reason)
  if blessed:
    marker, value = evaluator_constants.BLESSED_FILE_NAME, evaluator_constants.BLESSED_VALUE
  else:
    marker, value = evaluator_constants.NOT_BLESSED_FILE_NAME, evaluator_constants.NOT_BLESSED_VALUE
  io_utils.write_string_file(os.path.join(blessing.uri, marker), "")
  blessing.set_int_custom_property(evaluator_constants.ARTIFACT_PROPERTY_BLESSED_KEY, value)
