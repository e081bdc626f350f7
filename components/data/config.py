"""How SessionBuilder cuts timelines into sessions and splits them; plain values, no Beam.

A frozen dataclass the pipeline's configuration (pipeline/configs.py) reads instantly.
"""
import dataclasses

from schemas import contract


@dataclasses.dataclass(frozen=True)
class SessionConfig:
  """How timelines are cut and split; the defaults suit web/app sessions."""
  session_gap_seconds: int = 30 * 60  # the common analytics definition of a new visit
  history_length: int = contract.HISTORY_LENGTH
  eval_fraction: float = 0.2

  def __post_init__(self):
    if self.session_gap_seconds <= 0:
      raise ValueError(f"session_gap_seconds must be positive, got {self.session_gap_seconds}")
    if self.history_length <= 0:
      raise ValueError(f"history_length must be positive, got {self.history_length}")
    if not 0.0 < self.eval_fraction < 1.0:
      raise ValueError(f"eval_fraction must be in (0, 1), got {self.eval_fraction}")
