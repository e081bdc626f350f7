"""Names and shapes of the features, shared by ingestion, session building, Transform and Trainer.

Three kinds of record flow through the pipeline:
  * an event (ingestion's output, validated against schemas/events/schema.pbtxt): one interaction
    of a user with an item, or one impression the platform logged;
  * a retrieval example (SessionBuilder's `examples`): one engagement with the user's history
    before it, what the two-tower model learns to predict;
  * a transition (SessionBuilder's `transitions`): one impression as a step of the session's
    Markov decision process, what the DQN ranking head learns from.
"""

# Event fields.
USER_ID = "user_id"
ITEM_ID = "item_id"
TIMESTAMP = "timestamp"  # seconds since the Unix epoch
EVENT = "event"
RATING = "rating"  # explicit rating where the source has one, else 0.0
PRICE = "price"  # item price at event time; 0.0 where the source has none
CATEGORY = "category"
# Logged by a platform that shows slates (the simulator does); absent from other sources.
SESSION_ID = "session_id"  # the platform's own session id, kept for reference
POSITION = "position"  # 0-based slot of the item in the slate shown
PROPENSITY = "propensity"  # probability the logging policy had of showing the item there
# Where the source has item titles (an items CSV, MovieLens' movies.csv); absent elsewhere.
TITLE = "title"

# An impression is an item shown and not engaged with; the other event types are engagements: the
# user chose the item, so they are retrieval positives, enter the user's history and count as a
# click in the RL reward. A logged impression row carries its strongest outcome: 'click' or
# 'purchase' when there was one.
IMPRESSION = "impression"
PURCHASE_EVENT = "purchase"
RATING_EVENT = "rating"  # an explicit rating: ratings datasets hold nothing else
ENGAGEMENT_EVENTS = ("view", "click", PURCHASE_EVENT, RATING_EVENT)
EVENT_TYPES = (IMPRESSION,) + ENGAGEMENT_EVENTS
UNKNOWN_CATEGORY = "unknown"

REQUIRED_EVENT_COLUMNS = (USER_ID, ITEM_ID, TIMESTAMP, EVENT, RATING, PRICE, CATEGORY)
OPTIONAL_EVENT_COLUMNS = (SESSION_ID, POSITION, PROPENSITY, TITLE)
# Columns ingestion writes, in order; optional ones only where the source has them.
EVENT_COLUMNS = REQUIRED_EVENT_COLUMNS + OPTIONAL_EVENT_COLUMNS

# Fields SessionBuilder adds.
SESSION = "session"  # "<user_id>/<n>": the user's n-th session, cut at inactivity gaps
HISTORY = "history"  # the user's engaged items before this one, oldest first
HISTORY_LENGTH = 10
CLICK = "click"  # 1 if the shown item was clicked (a purchase implies a click)
PURCHASE = "purchase"  # 1 if it was bought
REVENUE = "revenue"  # price of a purchase, else 0.0
NEXT_HISTORY = "next_history"  # the history after this step: the state the action leads to
DONE = "done"  # 1 on a session's last step

# Derived by Transform (components/preprocessing.py).
PRICE_BUCKET = "price_bucket"  # quantile bucket of price: the candidate tower's price feature
# The title's first TITLE_LENGTH lower-cased words as vocabulary indices: the candidate tower's
# text feature, which lets items that share words ("Star Wars", a year) share what is learnt.
TITLE_TOKENS = "title_tokens"
TITLE_LENGTH = 8
# The hour of the week (UTC, 0 = Monday 00:00-01:00) the event happened, or the request is made:
# the query tower's context, since what people choose follows the day and the hour. Derived from
# `timestamp`; unknown (PADDING) for a timestamp <= 0, which serving clients send when they do
# not know the time.
HOUR_OF_WEEK = "hour_of_week"
HOURS_PER_WEEK = 7 * 24


def transformed_name(key: str) -> str:
  """Name of a feature after Transform (ids become vocabulary indices)."""
  return f"{key}_xf"
