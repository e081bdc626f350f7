"""The retrieval task's training histories: samples of the user's other engagements."""
import collections

import numpy as np

from components.models import histories
from components.models import preprocessing
from components.models.config import AUTO_HISTORY
from components.models.config import RECENT_HISTORY
from components.models.config import SAMPLED_HISTORY

PAD = preprocessing.PADDING


def _engagements():
  # User 0 engaged with items 10..14, user 1 with 20 and 21, user 2 with 30 only, user 3 with 40
  # twice and 41 once; interleaved, as transitions arrive.
  users = np.array([0, 1, 0, 2, 0, 1, 0, 0, 3, 3, 3])
  items = np.array([10, 20, 11, 30, 12, 21, 13, 14, 40, 41, 40])
  return users, items


def test_each_history_holds_only_the_users_other_items_left_aligned():
  users, items = _engagements()
  sampled = histories.sampled_user_histories(users, items, 3, np.random.default_rng(0))
  assert sampled.shape == (len(users), 3)
  assert sampled.dtype == np.int64
  for user, item, history in zip(users, items, sampled):
    # The user's other engagements, as a multiset: an item engaged twice may appear twice.
    others = collections.Counter(items[(users == user) & (items != item)])
    present = history[history != PAD]
    assert not collections.Counter(present) - others
    assert len(present) == min(3, sum(others.values()))
    # Padding only after the present items.
    assert (history[len(present):] == PAD).all()


def test_a_user_with_one_item_has_an_empty_history_and_repeats_never_leak_the_target():
  users, items = _engagements()
  sampled = histories.sampled_user_histories(users, items, 3, np.random.default_rng(0))
  np.testing.assert_array_equal(sampled[3], [PAD, PAD, PAD])  # user 2's only item
  # User 3 engaged with 40 twice: each of those sees only 41.
  np.testing.assert_array_equal(sampled[8], [41, PAD, PAD])
  np.testing.assert_array_equal(sampled[10], [41, PAD, PAD])
  # And 41 sees both engagements with 40, as its real history would.
  np.testing.assert_array_equal(sampled[9], [40, 40, PAD])


def test_each_call_draws_a_new_sample_that_covers_the_users_items():
  users = np.zeros(50, dtype=np.int64)
  items = np.arange(50)
  rng = np.random.default_rng(0)
  first = histories.sampled_user_histories(users, items, 4, rng)
  second = histories.sampled_user_histories(users, items, 4, rng)
  assert (first != second).any()
  # Across the engagements every item is in somebody's history, not one fixed window.
  assert set(first.ravel()) == set(items)
  # The same generator state gives the same sample: training is reproducible from its seed.
  np.testing.assert_array_equal(
      histories.sampled_user_histories(users, items, 4, np.random.default_rng(0)), first)


def test_auto_samples_histories_for_ratings_and_keeps_recent_ones_for_sessions():
  assert histories.resolve_mode(AUTO_HISTORY, np.array([b"rating"] * 3 + [b"click"])) == (
      SAMPLED_HISTORY)
  assert histories.resolve_mode(AUTO_HISTORY, np.array(["click", "purchase", "rating"])) == (
      RECENT_HISTORY)
  # An explicit choice wins over the data.
  assert histories.resolve_mode(RECENT_HISTORY, np.array([b"rating"])) == RECENT_HISTORY
  assert histories.resolve_mode(SAMPLED_HISTORY, np.array([b"view"])) == SAMPLED_HISTORY
