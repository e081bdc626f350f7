"""Thin TFX wrappers around the data and model gates; the logic lives in plain modules."""
import json
import os

from tfx import v1 as tfx
from tfx.components.evaluator import constants as evaluator_constants
from tfx.dsl.component.experimental.decorators import component
from tfx.types import artifact_utils
from tfx.utils import io_utils

from components import data_validation
from components import retrieval_evaluation

EVAL_SPLIT = "eval"
METRICS_FILE = "metrics.json"


@component
def DataValidationGate(
    anomalies: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ExampleAnomalies],
) -> None:
  """Fails the run when ExampleValidator found any anomaly in any split."""
  splits = artifact_utils.decode_split_names(anomalies.split_names)
  data_validation.check_split_anomalies(anomalies, splits)


@component
def RetrievalEvaluator(
    model: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Model],
    examples: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Examples],
    evaluation: tfx.dsl.components.OutputArtifact[tfx.types.standard_artifacts.ModelEvaluation],
    blessing: tfx.dsl.components.OutputArtifact[tfx.types.standard_artifacts.ModelBlessing],
    k: tfx.dsl.components.Parameter[int] = 10,
    recall_floor: tfx.dsl.components.Parameter[float] = 0.0,
) -> None:
  """Evaluates the serving model on the eval split and blesses it as TFX's Evaluator does.

  The blessing carries the same custom properties as the stock Evaluator's (`blessed`,
  `current_model`, `current_model_id`), so the stock Pusher and LatestBlessedModelStrategy work.
  """
  metrics = retrieval_evaluation.recall_at_k(
      os.path.join(model.uri, "Format-Serving"),
      retrieval_evaluation.read_events(artifact_utils.get_split_uri([examples], EVAL_SPLIT)), k)
  verdict = retrieval_evaluation.judge_recall(metrics, k, recall_floor)
  io_utils.write_string_file(
      os.path.join(evaluation.uri, METRICS_FILE), json.dumps(metrics, indent=2, sort_keys=True))

  blessing.set_string_custom_property(
      evaluator_constants.ARTIFACT_PROPERTY_CURRENT_MODEL_URI_KEY, model.uri)
  blessing.set_int_custom_property(
      evaluator_constants.ARTIFACT_PROPERTY_CURRENT_MODEL_ID_KEY, model.id)
  blessing.set_string_custom_property(
      evaluator_constants.ARTIFACT_PROPERTY_BLESSING_MESSAGE_KEY, verdict.reason)
  if verdict.blessed:
    marker, value = evaluator_constants.BLESSED_FILE_NAME, evaluator_constants.BLESSED_VALUE
  else:
    marker, value = evaluator_constants.NOT_BLESSED_FILE_NAME, evaluator_constants.NOT_BLESSED_VALUE
  io_utils.write_string_file(os.path.join(blessing.uri, marker), "")
  blessing.set_int_custom_property(evaluator_constants.ARTIFACT_PROPERTY_BLESSED_KEY, value)
