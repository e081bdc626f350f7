"""ServingInfraValidator: the thin TFX component around serving/infra_validation.py.

TFX's own InfraValidator needs a TF Serving binary or Kubernetes; this one loads the candidate
in the project's serving process, and writes the same InfraBlessing, so the stock Pusher reads it.
"""
import json
import logging
import os

import tensorflow_transform as tft
from tfx.dsl.component.experimental import annotations
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts
from tfx.utils import io_utils
from tfx.utils import path_utils

from components import artifact_properties
from schemas import contract
from serving import infra_validation
from serving.config import InfraValidationConfig


@component
def ServingInfraValidator(
    model: annotations.InputArtifact[standard_artifacts.Model],
    transform_graph: annotations.InputArtifact[standard_artifacts.TransformGraph],
    blessing: annotations.OutputArtifact[standard_artifacts.InfraBlessing],
    model_name: annotations.Parameter[str] = contract.DEFAULT_MODEL_NAME,
    latency_budget_ms: annotations.Parameter[float] = (
        InfraValidationConfig.latency_budget_ms),
) -> None:
  """Blesses the model as servable, or not: serving/infra_validation.py loads it in an isolated
  serving process and sends its warmup requests.

  The InfraBlessing carries what TFX's InfraValidator writes (the `blessed` custom property and
  an INFRA_BLESSED / INFRA_NOT_BLESSED marker file), so the stock Pusher reads it.
  """
  catalog = set(tft.TFTransformOutput(transform_graph.uri).vocabulary_by_name(contract.ITEM_ID))
  report = infra_validation.validate(
      path_utils.serving_model_path(model.uri), {item.decode() for item in catalog}, model_name,
      InfraValidationConfig(latency_budget_ms=latency_budget_ms))
  (logging.info if report.passed else logging.warning)("Infra validation: %s", report.reason)
  io_utils.write_string_file(os.path.join(blessing.uri, artifact_properties.INFRA_REPORT_FILE),
                             json.dumps(report.to_dict(), indent=2))
  marker = (artifact_properties.INFRA_BLESSED_FILE if report.passed
            else artifact_properties.INFRA_NOT_BLESSED_FILE)
  io_utils.write_string_file(os.path.join(blessing.uri, marker), "")
  blessing.set_int_custom_property(artifact_properties.BLESSED, int(report.passed))
  blessing.set_string_custom_property(artifact_properties.INFRA_REASON, report.reason)
