"""The split check after SessionBuilder: nothing to train or evaluate on stops the run, saying why.

(The TFDV anomaly and drift checks of components/data/validation.py are in test_gates.py and
test_drift.py, beside the components that run them.)
"""
import pytest

from components.data import sessions
from components.data import validation as data_validation
from components.data.config import GLOBAL_TIME_SPLIT
from components.data.config import SessionConfig

COUNTS = {sessions.SESSIONS: 90, sessions.TRAIN_EXAMPLES: 800, sessions.EVAL_EXAMPLES: 200,
          sessions.EVALUABLE_EVAL_EXAMPLES: 150}


def test_a_split_with_something_to_train_and_evaluate_on_passes():
  data_validation.check_split_counts(COUNTS, SessionConfig(eval_fraction=0.2))


@pytest.mark.parametrize("counts, message", [
    ({**COUNTS, sessions.TRAIN_EXAMPLES: 0}, "the training split holds no engagement"),
    ({**COUNTS, sessions.EVAL_EXAMPLES: 0, sessions.EVALUABLE_EVAL_EXAMPLES: 0},
     "the evaluation split holds no engagement"),
    # Beam reports no counter that was never incremented.
    ({key: count for key, count in COUNTS.items() if key != sessions.EVALUABLE_EVAL_EXAMPLES},
     "each of the 200 engagements of the evaluation split (each user's latest 20% of "
     "engagements by time are the evaluation split, the rest the training split; users with "
     "fewer than two engagements at different times are all training) is with an item already "
     "in that user's recent history"),
], ids=["no training engagement", "no eval engagement", "every eval engagement seen"])
def test_a_split_with_nothing_to_train_or_evaluate_on_is_refused_in_one_line(counts, message):
  with pytest.raises(data_validation.DegenerateSplitError) as refused:
    data_validation.check_split_counts(counts, SessionConfig(eval_fraction=0.2))
  assert str(refused.value).startswith("SessionBuilder: ")
  assert message in str(refused.value)
  assert "\n" not in str(refused.value)


def test_the_global_time_split_is_described_as_such():
  with pytest.raises(data_validation.DegenerateSplitError,
                     match="the latest 20% of the events by time are the evaluation split"):
    data_validation.check_split_counts(
        {**COUNTS, sessions.EVAL_EXAMPLES: 0},
        SessionConfig(eval_split=GLOBAL_TIME_SPLIT, eval_fraction=0.2))


def test_a_runner_that_reports_no_counters_is_not_judged():
  data_validation.check_split_counts({}, SessionConfig(eval_fraction=0.2))
