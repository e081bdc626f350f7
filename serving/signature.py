"""The serving contract: signature, input and output names of the pushed SavedModel.

These match what TensorFlow Serving exposes for the model, so the same client works against the
local server and a stock `tensorflow/serving` container.
"""
import tensorflow as tf

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

# Inputs.
USER_ID = "user_id"  # string [batch]
HISTORY = "history"  # string [batch, history_len]; '' pads, history_len may be 0
# int64 [batch]: when each query is asked, in seconds since the Unix epoch; the model reads the
# hour of the week from it (components/features.py). UNKNOWN_TIME where the client does not know.
TIMESTAMP = "timestamp"
UNKNOWN_TIME = 0
# Every signature's input_signature, in this order.
INPUT_SPECS = (
    tf.TensorSpec([None], tf.string, name=USER_ID),
    tf.TensorSpec([None, None], tf.string, name=HISTORY),
    tf.TensorSpec([None], tf.int64, name=TIMESTAMP),
)
# The history width online clients send: the most recent items, padded with '' to this width, so
# that TF Serving can batch concurrent requests (serving/batching_parameters.txt). The model reads
# the most recent components.features.HISTORY_LENGTH items; tests keep the two equal.
HISTORY_WIDTH = 10

# Outputs.
ITEM_IDS = "item_ids"  # string [batch, top_k] (rank_catalog: [batch, catalog]), best first
SCORES = "scores"  # float32, the same shape: Q-values (serving_default) or retrieval scores
# float32 [batch, top_k], serving_default only: the probability the serving policy had of putting
# each item at its position given the items above it (1.0 when it ranks greedily), for logging
# and off-policy evaluation; the same definition as the simulator's (components/data/simulator.py).
PROPENSITIES = "propensities"
