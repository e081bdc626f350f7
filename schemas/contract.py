"""The contract every stage shares: feature names and shapes, and the serving signatures.

Ingestion, session building, Transform, the Trainer, evaluation, the server and its clients all
name fields and signature inputs through this one module, so training and serving cannot
disagree. It holds plain values only (no TensorFlow), so that reading it, or the configuration
that uses it, is instant.

Three kinds of record flow through the pipeline:
  * an event (ingestion's output, validated against schemas/events/schema.pbtxt): one interaction
    of a user with an item, or one impression the platform logged;
  * a retrieval example (SessionBuilder's `examples`): one engagement with the user's history
    before it, what the two-tower model learns to predict;
  * a transition (SessionBuilder's `transitions`): one impression as a step of the session's
    Markov decision process, what the DQN ranking head learns from.
The pushed SavedModel's signatures match what TensorFlow Serving exposes for the model, so the
same client works against the local server and a stock `tensorflow/serving` container.
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
# Where the events come from the server's request log (`recsys ingest-logs`): the request that
# served the slate (its id, REQUEST_ID below, the same name as the log's added request input)
# and the version of the model that chose it.
MODEL_VERSION = "model_version"
# Request logging (serving/request_log.py): the id a client sends with a request, by which it
# reports feedback on what it was shown. Sent as gRPC metadata (REST: the X-Request-Id header) and
# echoed by the server; the server's PredictionLog records carry it as an extra request input.
REQUEST_ID = "request_id"
REQUEST_ID_HEADER = "x-request-id"

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
OPTIONAL_EVENT_COLUMNS = (SESSION_ID, POSITION, PROPENSITY, TITLE, REQUEST_ID, MODEL_VERSION)
# Columns ingestion writes, in order; optional ones only where the source has them.
EVENT_COLUMNS = REQUIRED_EVENT_COLUMNS + OPTIONAL_EVENT_COLUMNS

# Fields SessionBuilder adds.
SESSION = "session"  # "<user_id>/<n>": the user's n-th session, cut at inactivity gaps
HISTORY = "history"  # the user's engaged items before this one, oldest first
# How many of a user's items a history holds, the most recent ones: what SessionBuilder records
# (and schemas/transitions/schema.pbtxt allows), Transform keeps, the query tower's profile
# summary reads, and the width online clients pad histories to, so that TF Serving can batch
# concurrent requests (serving/deploy/batching_parameters.txt). A few hundred items is the whole
# profile of most users (ml-latest-small's median user has rated 71 films); on ratings data the
# whole profile is what predicts the next items (README, Validation).
HISTORY_LENGTH = 200
# Of those, how many the query tower's sequence encoder reads in order (ModelConfig.recent_length).
RECENT_LENGTH = 10
CLICK = "click"  # 1 if the shown item was clicked (a purchase implies a click)
PURCHASE = "purchase"  # 1 if it was bought
REVENUE = "revenue"  # price of a purchase, else 0.0
NEXT_HISTORY = "next_history"  # the history after this step: the state the action leads to
DONE = "done"  # 1 on a session's last step
RETURNED = "returned"  # 1 on a session's last step when the user has a later session
STEP_ENGAGEMENTS = "step_engagements"  # engagements on the step's slate (an event's own included)

# Derived by Transform (components/models/preprocessing.py).
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
_SECONDS_PER_HOUR = 3600
_SECONDS_PER_DAY = 24 * _SECONDS_PER_HOUR


def hour_of_week(timestamp):
  """HOUR_OF_WEEK of Unix timestamps > 0 (the caller marks the unknown ones).

  Floor division and modulo only, so the same formula serves Python ints, NumPy arrays and
  TensorFlow tensors: Transform's graph (components/models/preprocessing.py) and the serving-skew
  statistics (components/data/skew.py) cannot disagree on it.
  """
  days = timestamp // _SECONDS_PER_DAY
  # 1 January 1970 was a Thursday: day 0 is weekday 3 counting from Monday.
  return (days + 3) % 7 * 24 + timestamp // _SECONDS_PER_HOUR % 24


def transformed_name(key: str) -> str:
  """Name of a feature after Transform (ids become vocabulary indices)."""
  return f"{key}_xf"


# The serving contract: signature, input and output names of the pushed SavedModel.
DEFAULT_MODEL_NAME = "recommender"
# Written last into a version directory by TF Serving's convention; its presence marks a version
# whose copy is complete (our pushes rename whole directories, so it always is).
SAVED_MODEL_PB = "saved_model.pb"
# Retrieve the top candidates with the two-tower model, rerank them by the DQN head's Q-values.
SERVING_SIGNATURE = "serving_default"
# The two-tower model's own top-k, without reranking: the baseline the reranker is compared with.
RETRIEVE_SIGNATURE = "retrieve"
# The same inputs and outputs with every catalog item ranked: for batch jobs that filter items
# (e.g. already seen ones) and still need k left, not for online serving.
RANK_CATALOG_SIGNATURE = "rank_catalog"
# rank_catalog after ADAPT_STEPS (int32 scalar, an extra input) gradient steps on each user's
# vector from their latest history items: cold-start adaptation for batch jobs.
ADAPTED_RANK_SIGNATURE = "rank_catalog_adapted"
ADAPT_STEPS = "adapt_steps"

# Inputs of every signature: USER_ID string [batch]; HISTORY string [batch, history_len], oldest
# first, '' pads, history_len may be 0; TIMESTAMP int64 [batch], when each query is asked, in
# seconds since the Unix epoch (the model reads the hour of the week from it), UNKNOWN_TIME where
# the client does not know.
UNKNOWN_TIME = 0
# (name, dtype, shape) of each input, in the signatures' order; components/models/queries.py
# makes them the TensorSpecs every signature is traced with.
SIGNATURE_INPUTS = (
    (USER_ID, "string", (None,)),
    (HISTORY, "string", (None, None)),
    (TIMESTAMP, "int64", (None,)),
)

# Outputs.
ITEM_IDS = "item_ids"  # string [batch, top_k] (rank_catalog: [batch, catalog]), best first
SCORES = "scores"  # float32, the same shape: Q-values (serving_default) or retrieval scores
# float32 [batch, top_k], serving_default only: the probability the serving policy had of putting
# each item at its position given the items above it (1.0 when it ranks greedily), for logging
# and off-policy evaluation; the same definition as the simulator's
# (components/simulation/simulator.py).
PROPENSITIES = "propensities"
