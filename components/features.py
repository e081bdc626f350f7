"""Names and shapes of the interaction features, shared by ingestion, Transform and Trainer.

One row of the internal event schema is one interaction of a user with an item.
"""

USER_ID = "user_id"
ITEM_ID = "item_id"
TIMESTAMP = "timestamp"  # seconds since the Unix epoch
EVENT = "event"
RATING = "rating"  # explicit rating where the source has one, else 0.0
PRICE = "price"  # item price at event time; 0.0 where the source has none
CATEGORY = "category"
HISTORY = "history"  # the user's previous items, oldest first, at most HISTORY_LENGTH

EVENT_TYPES = ("view", "click", "purchase", "rating")
HISTORY_LENGTH = 10
UNKNOWN_CATEGORY = "unknown"

# Columns written by ingestion, in order.
EVENT_COLUMNS = (USER_ID, ITEM_ID, TIMESTAMP, EVENT, RATING, PRICE, CATEGORY, HISTORY)


def transformed_name(key: str) -> str:
  """Name of a feature after Transform (ids become vocabulary indices)."""
  return f"{key}_xf"
