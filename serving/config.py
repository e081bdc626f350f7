"""Serving settings the pipeline's configuration reads (pipeline/configs.py); plain values.

What infra validation demands of a candidate before the push, how many versions a push keeps in
the serving root, and how the server logs requests.
"""
import dataclasses

# The versions kept after a push: the new one and two to roll back to.
DEFAULT_VERSIONS_KEPT = 3


@dataclasses.dataclass(frozen=True)
class InfraValidationConfig:
  """How serving/infra_validation.py loads a candidate and what it must answer, how fast."""
  load_timeout_seconds: float = 120.0
  # p99 of a single-user request, answered on the pipeline's machine. Generous for 2 CPU cores;
  # production budgets belong with production hardware (a GPU serves the same graph faster).
  latency_budget_ms: float = 250.0
  latency_requests: int = 50
  request_timeout_seconds: float = 30.0


@dataclasses.dataclass(frozen=True)
class RequestLogConfig:
  """Request logging (serving/request_log.py): sampled requests and answers as PredictionLogs.

  What the push writes into models.config, as TF Serving's `ModelConfig.logging_config`; the
  server reads it from there.
  """
  # On by default: the feedback loop joins what users did to what they were shown by request id,
  # and every unlogged request is feedback that cannot be joined. Stock TF Serving refuses a
  # models.config with a logging_config (README, Request logging): set false when it reads the
  # serving root.
  enabled: bool = True
  # The fraction of requests logged. 1.0 suits the local server's traffic (a record is a few KB);
  # at production rates lower it to what the log's readers need.
  sampling_rate: float = 1.0

  def __post_init__(self):
    if not 0.0 <= self.sampling_rate <= 1.0:
      raise ValueError(f"sampling_rate must be within [0, 1], got {self.sampling_rate}")


@dataclasses.dataclass(frozen=True)
class RequestLogWriterConfig:
  """How the local server writes its request log: the server's flags, not models.config's."""
  # A file is closed (renamed from .inprogress to .tfrecord, and so readable) at this size...
  max_file_bytes: int = 64 * 1024 * 1024
  # ...or this long after it was opened, so that readers see records within a minute or so even
  # when traffic is light.
  max_file_seconds: float = 60.0
  # Records waiting for the writer thread; beyond this they are dropped and counted, never waited
  # for. At a few KB each, the bound keeps the queue's memory to tens of MB.
  queue_records: int = 10_000

  def __post_init__(self):
    if self.max_file_bytes < 1 or self.max_file_seconds <= 0 or self.queue_records < 1:
      raise ValueError(f"max_file_bytes, max_file_seconds and queue_records must be positive, "
                       f"got {self.max_file_bytes}, {self.max_file_seconds} and "
                       f"{self.queue_records}")
