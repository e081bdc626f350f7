"""The DQN ranking head: Q(state, item), learned offline from the logged sessions' transitions.

A session is a Markov decision process. The state is what the two-tower model's query tower makes
of the user and their recent history; an action is an item shown; the reward is a configurable
weighted sum of what the user then did (`RewardConfig`); rewards are discounted over the session
by `gamma`. Q(s, a) estimates the discounted reward of showing `a` in state `s` and reranking
greedily afterwards, so the reranker can prefer an item that keeps the session going over one
that is merely clicked.

Why it is built this way:
  * Item-wise transitions. A logged slate is several transitions, one per shown item, all from
    the same state to the same next state (SessionBuilder, components/data/sessions.py): the
    item-wise decomposition SlateQ (Ie et al., 2019) justifies when a user's response to an item
    depends on that item only.
  * Candidate actions. The serving graph reranks the retrieval top-N of a state, so the next
    state's best action is sought among that state's retrieval top-`train_candidates` too: a max
    over the whole catalog would value actions the serving graph never takes.
  * Double DQN (van Hasselt et al., 2016). The online network picks the next state's best action
    and a target network values it; one network doing both overestimates Q.
  * Target network, soft updates. The target's weights follow the online ones by Polyak
    averaging with rate `target_update_rate` after every step, so the regression target moves
    slowly.
  * Conservative Q-learning (CQL, Kumar et al., 2020). The logs hold only the actions the
    logging policy chose; an unlogged action's Q is never corrected by data, and the max in the
    target seeks out exactly those errors. CQL adds
        cql_weight * (logsumexp over a in candidates(s) and the logged action of Q(s, a)
                      - Q(s, logged action)),
    which pushes down every candidate's Q relative to the logged action's: the learned policy
    stays near the data where the data say nothing. How near is `cql_weight`, 0 by default: it
    pays when the logging policy is good, and on the simulator's logs, whose logging policy
    ranks worse than the two-tower model, reranked slates got 27-32% fewer clicks than the
    retrieval order with a weight of 0.1, against 9-10% without (README, Benchmarks). Set it for
    logs from a policy worth staying near.
  * Frozen towers. The state and the actions' embeddings come from the trained two-tower model,
    whose gradients are stopped: the ranking head cannot distort the retrieval space it reranks.
  * A correction to the retrieval score, not a free regression (`QNetwork`). About ten logged
    items per state, shown in slots the logging policy chose, teach a free MLP that policy's
    position-biased preferences; the retrieval score, learnt from the same engagements against
    the whole catalog, ranks better. Starting from it, the head learns only what the rewards
    add (README, Benchmarks).
"""
from typing import Dict, Sequence, Tuple

import numpy as np
import tensorflow as tf

from components.models.config import RankerConfig
from components.models.config import RewardConfig
from schemas import contract

# The retrieval score's weight in Q before training: positive, so the untrained head ranks as
# retrieval does; small, because rewards are a few units at most and scores can be tens.
_INITIAL_SCORE_SCALE = 0.1


def rewards(batch: Dict[str, tf.Tensor], novelty: tf.Tensor, config: RewardConfig) -> tf.Tensor:
  """[batch] rewards of transitions; `novelty` is each shown item's, in [0, 1]."""
  click = tf.cast(batch[contract.CLICK], tf.float32)
  return (config.click * click
          + config.purchase * tf.cast(batch[contract.PURCHASE], tf.float32)
          + config.revenue * tf.cast(batch[contract.REVENUE], tf.float32)
          + config.novelty * click * novelty)


def item_novelty(item_probability: np.ndarray) -> np.ndarray:
  """Each item's self-information in training engagements, scaled to [0, 1] (see RewardConfig)."""
  engaged = item_probability > 0
  information = np.zeros_like(item_probability)
  information[engaged] = -np.log2(item_probability[engaged])
  # An item never engaged with is as novel as the rarest one that was.
  information[~engaged] = information.max(initial=0.0)
  return information / max(information.max(initial=0.0), 1e-12)


def bellman_targets(rewards_: tf.Tensor, next_values: tf.Tensor, done: tf.Tensor,
                    gamma: float) -> tf.Tensor:
  """r + gamma * V(s'), with no future after a session's last step."""
  return rewards_ + gamma * (1.0 - tf.cast(done, tf.float32)) * next_values


def double_dqn_next_values(online_q: tf.Tensor, target_q: tf.Tensor) -> tf.Tensor:
  """The target network's Q of the action the online network ranks best, per row of [B, N]."""
  best = tf.argmax(online_q, axis=1)
  return tf.gather(target_q, best, axis=1, batch_dims=1)


def cql_penalty(candidate_q: tf.Tensor, logged_q: tf.Tensor) -> tf.Tensor:
  """Mean of logsumexp(candidates' Q and the logged action's Q) - the logged action's Q.

  candidate_q: [B, N], with -inf where a candidate is the logged action itself (counted once).
  logged_q: [B].
  """
  every_action = tf.concat([candidate_q, logged_q[:, None]], axis=1)
  return tf.reduce_mean(tf.reduce_logsumexp(every_action, axis=1) - logged_q)


class Catalog(tf.Module):
  """The catalog as actions: frozen item embeddings and the features the Q-network reads."""

  def __init__(self, embeddings: np.ndarray, categories: np.ndarray,
               price_buckets: np.ndarray):
    super().__init__()
    self.embeddings = tf.constant(embeddings, tf.float32)
    self.categories = tf.constant(categories, tf.int64)
    self.price_buckets = tf.constant(price_buckets, tf.int64)

  def actions(self, items: tf.Tensor) -> Dict[str, tf.Tensor]:
    """The action features of item indices of any shape."""
    return {"embedding": tf.gather(self.embeddings, items),
            "category": tf.gather(self.categories, items),
            "price_bucket": tf.gather(self.price_buckets, items)}

  def top_candidates(self, states: tf.Tensor, n: int) -> Tuple[tf.Tensor, tf.Tensor]:
    """The retrieval top-n of each state: (scores, int64 item indices), both [B, n], best first."""
    scores, items = tf.math.top_k(tf.matmul(states, self.embeddings, transpose_b=True), k=n)
    return scores, tf.cast(items, tf.int64)


class QNetwork(tf.keras.Model):
  """Q(s, a) for a batch of states, each with its own [N] candidate actions.

  Q(s, a) = scale * <s, a> + offset + correction(s, a). The retrieval score <s, a> already ranks
  the candidates by what users engage with, learnt against the whole catalog; `scale` and
  `offset` (learnt) turn it into reward units, and the correction, an MLP whose output layer
  starts at zero, learns what the logs say beyond it: purchases, price, what keeps a session
  going. So the untrained head ranks exactly as retrieval does. A free MLP regressed on logged
  impressions instead learnt the logging policy's position-biased preferences: it ordered the
  retrieval top-10 worse than the retrieval score itself (README, Benchmarks).

  The correction reads the state, the item embedding, their product and dot product, and the
  item's category and price bucket.
  """

  def __init__(self, num_categories: int, num_price_buckets: int, hidden_units: Sequence[int]):
    super().__init__()
    self.category_embedding = tf.keras.layers.Embedding(num_categories, 8)
    self.price_embedding = tf.keras.layers.Embedding(num_price_buckets, 4)
    self.hidden = [tf.keras.layers.Dense(units, activation="relu") for units in hidden_units]
    self.correction = tf.keras.layers.Dense(1, kernel_initializer="zeros")
    self.score_scale = tf.Variable(_INITIAL_SCORE_SCALE, name="score_scale")
    self.score_offset = tf.Variable(0.0, name="score_offset")

  def call(self, inputs):
    states, actions = inputs  # [B, D] and {name: [B, N, ...]}
    items = actions["embedding"]
    states = tf.broadcast_to(states[:, None, :], tf.shape(items))
    products = states * items
    scores = tf.reduce_sum(products, axis=-1)  # [B, N] retrieval scores
    layer = tf.concat([
        states, items, products, scores[..., None],
        self.category_embedding(actions["category"]),
        self.price_embedding(actions["price_bucket"]),
    ], axis=-1)
    for dense in self.hidden:
      layer = dense(layer)
    correction = tf.squeeze(self.correction(layer), axis=-1)
    return self.score_scale * scores + self.score_offset + correction  # [B, N]


class DQNRanker(tf.keras.Model):
  """Trains a QNetwork by Double DQN with a target network and the CQL regulariser.

  A training batch holds transformed transitions: the state (`user_id_xf`, `history_xf`,
  `hour_of_week_xf`), the
  logged action (`item_id_xf`), the reward fields, `next_history_xf` and `done`.
  """

  def __init__(self, query_tower: tf.keras.Model, catalog: Catalog, novelty: np.ndarray,
               num_categories: int, num_price_buckets: int, config: RankerConfig):
    super().__init__()
    self.query_tower = query_tower
    self.catalog = catalog
    self.novelty = tf.constant(novelty, tf.float32)
    self.config = config
    self.q_network = QNetwork(num_categories, num_price_buckets, config.hidden_units)
    self.target_network = QNetwork(num_categories, num_price_buckets, config.hidden_units)
    self.train_candidates = min(config.train_candidates, int(catalog.embeddings.shape[0]))

  def _state(self, batch, history_key: str) -> tf.Tensor:
    """The query tower's embedding of the user, the history under `history_key` and the hour.

    The next state keeps the step's hour: a session's steps are minutes apart.
    """
    inputs = {key: batch[key] for key in (contract.transformed_name(contract.USER_ID),
                                          contract.transformed_name(contract.HOUR_OF_WEEK))}
    inputs[contract.transformed_name(contract.HISTORY)] = batch[history_key]
    return tf.stop_gradient(self.query_tower(inputs))

  def build_networks(self, state_dim: int) -> None:
    """Creates both networks' weights and starts the target as a copy of the online network."""
    states = tf.zeros([1, state_dim])
    actions = self.catalog.actions(tf.zeros([1, 1], tf.int64))
    self.q_network((states, actions))
    self.target_network((states, actions))
    self.target_network.set_weights(self.q_network.get_weights())

  def loss_terms(self, batch) -> Dict[str, tf.Tensor]:
    """The TD loss, the CQL penalty and their weighted sum for one batch."""
    states = self._state(batch, contract.transformed_name(contract.HISTORY))
    next_states = self._state(batch, contract.transformed_name(contract.NEXT_HISTORY))
    logged = batch[contract.transformed_name(contract.ITEM_ID)]

    _, next_candidates = self.catalog.top_candidates(next_states, self.train_candidates)
    next_actions = self.catalog.actions(next_candidates)
    next_values = double_dqn_next_values(
        tf.stop_gradient(self.q_network((next_states, next_actions))),
        self.target_network((next_states, next_actions)))
    targets = tf.stop_gradient(bellman_targets(
        rewards(batch, tf.gather(self.novelty, logged), self.config.reward), next_values,
        batch[contract.DONE], self.config.gamma))

    logged_q = self.q_network((states, self.catalog.actions(logged[:, None])))[:, 0]
    _, candidates = self.catalog.top_candidates(states, self.train_candidates)
    candidate_q = self.q_network((states, self.catalog.actions(candidates)))
    candidate_q = tf.where(tf.equal(candidates, logged[:, None]), -np.inf, candidate_q)

    td_loss = tf.reduce_mean(tf.keras.losses.huber(targets[:, None], logged_q[:, None]))
    penalty = cql_penalty(candidate_q, logged_q)
    return {"td_loss": td_loss, "cql_penalty": penalty,
            "loss": td_loss + self.config.cql_weight * penalty}

  def train_step(self, batch):
    with tf.GradientTape() as tape:
      terms = self.loss_terms(batch)
    variables = self.q_network.trainable_variables
    self.optimizer.apply_gradients(zip(tape.gradient(terms["loss"], variables), variables))
    return terms

  @tf.function
  def update_target_network(self) -> None:
    """Moves the target network's weights `target_update_rate` of the way to the online ones."""
    rate = self.config.target_update_rate
    for target, online in zip(self.target_network.variables, self.q_network.variables):
      target.assign((1.0 - rate) * target + rate * online)

  def fit(self, *args, callbacks=None, **kwargs):
    """Keras fit, with the target network updated after every step.

    The update runs from a callback, in cross-replica context, where a distribution strategy
    allows assigning one replica-synchronised variable from another.
    """
    update = tf.keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: self.update_target_network())
    return super().fit(*args, callbacks=[*(callbacks or []), update], **kwargs)


def rerank(q_values: tf.Tensor, k: int, temperature: float = 0.0,
           epsilon: float = 0.0) -> Tuple[tf.Tensor, tf.Tensor]:
  """The serving policy: which k of the [B, N] candidates to show, in order, and their propensities.

  Greedy by Q when temperature and epsilon are 0 (every propensity 1). Either kind of exploration
  makes the logs the served slates create usable for off-policy evaluation, because each item
  comes with the probability the policy had of putting it where it is given the items above it
  (the simulator's definition, components/simulation/simulator.py):
    * temperature > 0: a Plackett–Luce sample from softmax(Q / temperature), drawn exactly by the
      Gumbel top-k trick;
    * epsilon > 0: ε-greedy per slot (`epsilon_greedy`).
  Returns (candidate positions [B, k], propensities [B, k]).
  """
  if epsilon > 0.0:
    return epsilon_greedy(q_values, k, epsilon)
  if temperature == 0.0:
    _, order = tf.math.top_k(q_values, k=k)
    return order, tf.ones(tf.shape(order), tf.float32)
  logits = q_values / temperature
  gumbel = -tf.math.log(-tf.math.log(tf.random.uniform(tf.shape(logits), 1e-20, 1.0)))
  _, order = tf.math.top_k(logits + gumbel, k=k)
  return order, plackett_luce_propensities(logits, order)


def epsilon_greedy(q_values: tf.Tensor, k: int, epsilon: float) -> Tuple[tf.Tensor, tf.Tensor]:
  """Slot j shows the j-th best candidate by Q, or with probability ε an explored one.

  Explored items are drawn uniformly, without replacement, from the N - k candidates outside the
  greedy top-k, so exploring never moves or repeats a greedy item and a slate needs no loop: the
  draws are a random order of those candidates, taken in turn by the exploring slots. Given the
  slots above, a greedy item had probability 1 - ε of being shown, and an explored one
  ε / (the outside candidates not yet shown). Once all N - k are shown the rest is greedy
  (probability 1).
  """
  _, greedy = tf.math.top_k(q_values, k=k)
  outside = tf.shape(q_values)[1] - k
  in_top_k = tf.reduce_any(tf.cast(tf.one_hot(greedy, tf.shape(q_values)[1]), tf.bool), axis=1)
  # A random order of the outside candidates: random keys, -inf for the greedy ones.
  keys = tf.where(in_top_k, -np.inf, tf.random.uniform(tf.shape(q_values)))
  _, drawn = tf.math.top_k(keys, k=tf.minimum(k, tf.maximum(outside, 1)))
  coins = tf.random.uniform(tf.shape(greedy)) < epsilon
  explored_above = tf.math.cumsum(tf.cast(coins, tf.int32), axis=1, exclusive=True)
  left = outside - explored_above  # outside candidates not yet shown, per slot
  explore = coins & (left > 0)
  shown_drawn = tf.gather(drawn, tf.minimum(explored_above, tf.shape(drawn)[1] - 1),
                          batch_dims=1)
  order = tf.where(explore, shown_drawn, greedy)
  propensities = tf.where(explore, epsilon / tf.cast(tf.maximum(left, 1), tf.float32),
                          tf.where(left > 0, 1.0 - epsilon, 1.0))
  return order, propensities


def plackett_luce_propensities(logits: tf.Tensor, order: tf.Tensor) -> tf.Tensor:
  """P(order[:, j] at position j | order[:, :j] above it) under softmax(logits), per position.

  The denominators are summed in log space from the candidates never placed and those placed at
  j or later, never by subtracting from a total, so they stay exact for peaked policies.
  """
  chosen = tf.gather(logits, order, batch_dims=1)
  placed = tf.reduce_any(tf.cast(tf.one_hot(order, tf.shape(logits)[1]), tf.bool), axis=1)
  unplaced = tf.reduce_logsumexp(tf.where(placed, -np.inf, logits), axis=1, keepdims=True)
  placed_from_here = tf.math.cumulative_logsumexp(chosen, axis=1, reverse=True)
  remaining = tf.reduce_logsumexp(
      tf.stack([tf.broadcast_to(unplaced, tf.shape(chosen)), placed_from_here]), axis=0)
  return tf.minimum(tf.exp(chosen - remaining), 1.0)  # the minimum only absorbs rounding
