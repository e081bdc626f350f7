"""Serving settings the pipeline's configuration reads (pipeline/configs.py); plain values.

What infra validation demands of a candidate before the push, and how many versions a push
keeps in the serving root.
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
