"""SessionBuilder: the TFX component around components/data/sessions.py (the logic lives there).

It also stops the run when the time split leaves nothing to train or evaluate on
(components/data/validation.py, `check_split_counts`), before Transform and the Trainer run.
"""
import os

from absl import logging
import apache_beam as beam
from tfx.components.util import examples_utils
from tfx.dsl.component.experimental import annotations
from tfx.dsl.component.experimental.decorators import component
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils
from tfx.types import standard_artifacts

from components import artifact_properties
from components.data import sessions
from components.data import validation as data_validation
from components.data.config import SessionConfig

# ExampleGen's one split of raw events (pipeline/pipeline.py).
EVENTS_SPLIT = "events"


def _mark_as_examples(artifact) -> None:
  """Properties downstream components read to parse the splits (as ExampleGen sets them)."""
  artifact.split_names = artifact_utils.encode_split_names(list(sessions.SPLITS))
  examples_utils.set_payload_format(artifact, example_gen_pb2.PayloadFormat.FORMAT_TF_EXAMPLE)
  artifact.set_string_custom_property("file_format", "tfrecords_gzip")


@component(use_beam=True)
def SessionBuilder(
    events: annotations.InputArtifact[standard_artifacts.Examples],
    examples: annotations.OutputArtifact[standard_artifacts.Examples],
    transitions: annotations.OutputArtifact[standard_artifacts.Examples],
    statistics: annotations.InputArtifact[standard_artifacts.ExampleStatistics] = None,
    session_gap_seconds: annotations.Parameter[int] = SessionConfig.session_gap_seconds,
    history_length: annotations.Parameter[int] = SessionConfig.history_length,
    eval_split: annotations.Parameter[str] = SessionConfig.eval_split,
    eval_fraction: annotations.Parameter[float] = SessionConfig.eval_fraction,
    beam_pipeline: annotations.BeamComponentParameter[beam.Pipeline] = None,
) -> None:
  """Builds retrieval `examples` and RL `transitions`, each split train/eval by time (per user or
  globally, `eval_split`).

  `statistics` are the span's, which the data gates passed; once the split check passes too,
  `examples` records them: the next run's drift baseline (components/data_gates.py).
  """
  config = SessionConfig(session_gap_seconds=session_gap_seconds, history_length=history_length,
                         eval_split=eval_split, eval_fraction=eval_fraction)
  events_pattern = os.path.join(artifact_utils.get_split_uri([events], EVENTS_SPLIT), "*")
  with beam_pipeline as pipeline:
    sessions.build_sessions(pipeline, events_pattern, examples.uri, transitions.uri, config)
  counts = {counter.key.metric.name: counter.committed
            for counter in pipeline.result.metrics().query()["counters"]}
  for name, count in sorted(counts.items()):
    logging.info("SessionBuilder %s: %d", name, count)
  _mark_as_examples(examples)
  _mark_as_examples(transitions)
  data_validation.check_split_counts(counts, config)
  if statistics is not None:
    examples.set_string_custom_property(artifact_properties.STATISTICS_URI, statistics.uri)
    examples.set_string_custom_property(artifact_properties.STATISTICS_SPLIT_NAMES,
                                        statistics.split_names)
