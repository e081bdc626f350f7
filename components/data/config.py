"""How SessionBuilder cuts timelines into sessions and splits them; plain values, no Beam.

A frozen dataclass the pipeline's configuration (pipeline/configs.py) reads instantly.
"""
import dataclasses

from schemas import contract

# How SessionBuilder draws the eval split (components/data/sessions.py says why).
PER_USER_SPLIT = "per_user"  # each user's last eval_fraction of engagements, by time
GLOBAL_TIME_SPLIT = "global_time"  # all events after the eval_fraction quantile of time
EVAL_SPLITS = (PER_USER_SPLIT, GLOBAL_TIME_SPLIT)


@dataclasses.dataclass(frozen=True)
class SessionConfig:
  """How timelines are cut and split; the defaults suit web/app sessions and ratings alike."""
  session_gap_seconds: int = 30 * 60  # the common analytics definition of a new visit
  history_length: int = contract.HISTORY_LENGTH
  eval_split: str = PER_USER_SPLIT
  # The pushed model learns from the rest: a tenth is ~10k engagements on ml-latest-small, enough
  # to tell models apart (README, Validation).
  eval_fraction: float = 0.1

  def __post_init__(self):
    if self.session_gap_seconds <= 0:
      raise ValueError(f"session_gap_seconds must be positive, got {self.session_gap_seconds}")
    if self.history_length <= 0:
      raise ValueError(f"history_length must be positive, got {self.history_length}")
    if self.eval_split not in EVAL_SPLITS:
      raise ValueError(f"eval_split must be one of {EVAL_SPLITS}, got {self.eval_split!r}")
    if not 0.0 < self.eval_fraction < 1.0:
      raise ValueError(f"eval_fraction must be in (0, 1), got {self.eval_fraction}")


@dataclasses.dataclass(frozen=True)
class DataMinimums:
  """The least data `recsys run` trains and evaluates on; less is refused at ingestion.

  Below these a time split leaves too little to learn from or to judge, and the run would fail
  late, inside Transform, the Trainer or the evaluator, or ship a model nobody could assess.
  Engagements are the events that say what a user chose (views, clicks, purchases, ratings):
  impressions alone teach retrieval nothing. Lower them for a pilot; the split check after
  SessionBuilder still refuses data with nothing left to evaluate.
  """
  users: int = 10  # distinct users with an engagement: collaborative filtering learns across them
  items: int = 10  # distinct items engaged with: below this there is little to rank
  engagements: int = 100

  def __post_init__(self):
    for name in ("users", "items", "engagements"):
      if getattr(self, name) < 1:
        raise ValueError(f"the minimum number of {name} must be at least 1, "
                         f"got {getattr(self, name)}")


@dataclasses.dataclass(frozen=True)
class SkewConfig:
  """How SkewGate judges the served model's logged requests against the training data.

  The thresholds are the curated schema's (schemas/serving/skew.pbtxt); these say which requests
  are judged and what skew does to the run.
  """
  # Report only by default: skew says the clients or the feed changed, which the served version
  # meets as much as the candidate, and a log shorter than half a week shows hour-of-week skew by
  # itself. True stops the run before training, so nothing is pushed (README, Serving skew).
  stop: bool = False
  # Fewer logged requests than this are too few for a distribution; the check is skipped.
  min_requests: int = 100
  # The requests judged: those logged within this many days of the newest one, a week so that
  # every hour of the week can be present.
  window_days: float = 7.0

  def __post_init__(self):
    if self.min_requests < 1:
      raise ValueError(f"min_requests must be at least 1, got {self.min_requests}")
    if self.window_days <= 0:
      raise ValueError(f"window_days must be positive, got {self.window_days}")
