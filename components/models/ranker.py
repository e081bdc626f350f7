"""The DQN ranking head: long-term value of showing an item, learned offline from logged sessions.

A session is a Markov decision process, and so is a user's sequence of sessions. The state is what
the two-tower model's query tower makes of the user and their history; an action is an item
shown; the reward is a configurable weighted sum of what the user then did (`RewardConfig`);
rewards are discounted by `gamma` per step within a session and by `session_gamma` from a
session's end to the user's next session, when they came back. The head ranks the retrieval
candidates by what showing each is worth, now and later, so it can prefer an item that keeps the
user satisfied and coming back over one that is merely clicked (clickbait: README, Benchmarks).

Why it is built this way:
  * SlateQ's decomposition (Ie et al., 2019; `QNetwork`). A logged slate is several
    transitions, one per shown item, all from one state to one next state (SessionBuilder,
    components/data/sessions.py). What happens next depends on what the user consumed, not on
    what they scrolled past, so the value of showing an item is P(click) times its consumed
    value Q, the click's reward plus the discounted value of the state it leads to: a click
    model learnt from every impression, and Q learnt by temporal differences from the clicked
    ones only. The clicks of one slate share their next state's value (`bellman_targets`).
  * Cooperating agents, one per objective (Q-decomposition, Russell & Zimdars, 2003). Each term
    of the reward (OBJECTIVES: click, purchase, revenue, novelty, retention) has its own consumed
    value Q_i on the shared trunk, learnt from that term's reward alone, and the served ranking
    combines them: P(click) * sum_i w_i Q_i, with the weights `RewardConfig` names, kept in the
    network as a variable the export bakes in. Every agent values the next state by the slate
    the combined ranking would show there, not the one it would pick itself: valued so, the
    weighted sum of the agents' values is the value of the weighted reward (each agent maximising
    its own future would promise futures no single policy delivers). A new trade-off needs new
    weights, not new agents; one-hot weights rank by one agent's values. Each
    agent's values are in units of its reward's mean over clicked transitions (`reward_scales`),
    so that one step size suits a click worth 1 and a revenue worth tens.
  * Positions. The click model learns each logged slot's effect, so it is not the logging
    policy's position bias; items are ranked as if shown in the top slot.
  * Candidate actions. The serving graph reranks the retrieval top-N of a state, so the next
    state's slate is sought among that state's retrieval top-`train_candidates` too: a max over
    the whole catalog would value actions the serving graph never takes.
  * Double DQN (van Hasselt et al., 2016). The online network picks the next state's slate and
    a target network values it (`next_slate_values`); one network doing both overestimates Q.
  * Target network, soft updates. The target's weights follow the online ones by Polyak
    averaging with rate `target_update_rate` after every step, so the regression target moves
    slowly.
  * Conservative Q-learning (CQL, Kumar et al., 2020), optional. The logs hold only the actions
    the logging policy chose; an unlogged action's Q is never corrected by data, and the max in
    the target seeks out exactly those errors. CQL adds
        cql_weight * (logsumexp over a in candidates(s) and the logged action of Q(s, a)
                      - Q(s, logged action)),
    over the clicked transitions, which pushes down every candidate's Q relative to the logged
    action's: the learned policy stays near the data where the data say nothing. How near is
    `cql_weight`, 0 by default: it pays when the logging policy is good, and the simulator's
    ranks worse than the two-tower model (README, Benchmarks). Set it for logs from a policy
    worth staying near.
  * Frozen towers. The state and the actions' embeddings come from the trained two-tower model,
    whose gradients are stopped: the ranking head cannot distort the retrieval space it reranks.
  * New users' episodes (meta-RL, RL²-style: Duan et al., 2016). A user the model has never
    seen is served as the out-of-vocabulary user, so their state is what the session has
    revealed so far: the clicks in their history. For a `new_user_share` of the training users
    (by a hash of the id), every state is computed that way, as if they were new: the head
    learns to act on states that carry a session's clicks instead of a user id, and so to use
    each click of a new user's first session (README, "Cold start").
  * Corrections of the retrieval score, not a free regression. About ten logged items per state,
    shown in slots the logging policy chose, taught a free MLP that policy's position-biased
    preferences; the retrieval score, learnt from the same engagements against the whole
    catalog, ranks better. Starting from it, with corrections that start at zero, the head learns
    only what the rewards add, and the untrained head ranks exactly as retrieval does.
"""
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from components.models.config import OBJECTIVES
from components.models.config import RankerConfig
from components.models.config import RewardConfig
from schemas import contract

# The retrieval score's weight in the click logit before training: positive, so the untrained
# head ranks as retrieval does; small, because scores can be tens.
_INITIAL_SCORE_SCALE = 0.1
# softplus(0.5413) = 1: a consumed value of one click before training.
_INITIAL_VALUE_OFFSET = 0.5413
# What `DQNRanker.with_states` adds to a transition.
STATE = "state"
NEXT_STATE = "next_state"
CANDIDATES = "candidates"
NEXT_CANDIDATES = "next_candidates"
# Transitions per query-tower call in `DQNRanker.with_states`.
_STATES_BATCH = 4096
# The resolution of `hashed_user_share`, and what salts the hash of `is_new_user_episode` so
# that the users it picks are not the head's validation users (training.is_validation_user
# hashes the bare id).
_USER_BUCKETS = 1000
_NEW_USER_SALT = "#new-user"


def hashed_user_share(user_ids: tf.Tensor, share: float, salt: str = "") -> tf.Tensor:
  """Whether each raw user id is among about `share` of the users, by a hash of the id and
  `salt`: all of a user's transitions or none, and the same users found again from the raw ids
  alone."""
  if salt:
    user_ids = tf.strings.join([user_ids, salt])
  threshold = int(round(share * _USER_BUCKETS))
  return tf.strings.to_hash_bucket_fast(user_ids, _USER_BUCKETS) < threshold


def is_new_user_episode(user_ids: tf.Tensor, share: float) -> tf.Tensor:
  """Whether each raw user id is among the about `share` of users whose transitions the head
  learns as a new user's (`hashed_user_share`, salted)."""
  return hashed_user_share(user_ids, share, _NEW_USER_SALT)


def objective_rewards(batch: Dict[str, tf.Tensor], novelty: tf.Tensor) -> tf.Tensor:
  """[batch, OBJECTIVES] each objective's reward of transitions; `novelty` is each shown item's,
  in [0, 1] (RewardConfig says what each term is)."""
  click = tf.cast(batch[contract.CLICK], tf.float32)
  terms = {"click": click, "purchase": tf.cast(batch[contract.PURCHASE], tf.float32),
           "revenue": tf.cast(batch[contract.REVENUE], tf.float32),
           "novelty": click * novelty,
           "retention": click * tf.cast(batch[contract.RETURNED], tf.float32)}
  return tf.stack([terms[name] for name in OBJECTIVES], axis=1)


def reward_scales(transitions: tf.data.Dataset, novelty: np.ndarray) -> np.ndarray:
  """[OBJECTIVES] each objective's mean reward over the clicked transitions (1 where it is never
  earned): the unit each agent's values are learnt in."""
  totals, clicked = np.zeros(len(OBJECTIVES)), 0.0
  novelty = tf.constant(novelty, tf.float32)
  for batch in transitions.batch(4096):
    items = batch[contract.transformed_name(contract.ITEM_ID)]
    totals += objective_rewards(batch, tf.gather(novelty, items)).numpy().sum(axis=0)
    clicked += float(tf.reduce_sum(tf.cast(batch[contract.CLICK] > 0, tf.float32)))
  means = totals / max(clicked, 1.0)
  return np.where(means > 0, means, 1.0).astype(np.float32)


def item_novelty(item_probability: np.ndarray) -> np.ndarray:
  """Each item's self-information in training engagements, scaled to [0, 1] (see RewardConfig)."""
  engaged = item_probability > 0
  information = np.zeros_like(item_probability)
  information[engaged] = -np.log2(item_probability[engaged])
  # An item never engaged with is as novel as the rarest one that was.
  information[~engaged] = information.max(initial=0.0)
  return information / max(information.max(initial=0.0), 1e-12)


def bellman_targets(rewards_: tf.Tensor, next_values: tf.Tensor, done: tf.Tensor,
                    returned: tf.Tensor, step_engagements: tf.Tensor, gamma: float,
                    session_gamma: float) -> tf.Tensor:
  """A consumed item's r + discount * V(s') / (the step's engagements), per objective.

  rewards_ and next_values are [B, objectives]; done, returned and step_engagements [B].

  The discount is gamma within a session; after a session's last step, session_gamma if the
  user came back (s' is then their next session's first state), else 0. The items engaged with
  on one slate lead to one next state together, so each is credited its share of that state's
  value: counted once per item, the future would be counted as often as the slate has clicks,
  and with more than 1 / gamma clicks per slate the values would grow without bound.
  """
  done, returned = tf.cast(done, tf.float32), tf.cast(returned, tf.float32)
  discount = (1.0 - done) * gamma + done * returned * session_gamma
  shares = tf.maximum(tf.cast(step_engagements, tf.float32), 1.0)
  return rewards_ + (discount / shares)[:, None] * next_values


def next_slate_values(online_values: tf.Tensor, target_click_logits: tf.Tensor,
                      target_consumed_values: tf.Tensor, position_logits: tf.Tensor,
                      slate_size: int) -> tf.Tensor:
  """V(s'): each objective's value of the slate the online network would show in each next state
  (Double DQN), [B, objectives].

  The online network's combined ranking values pick the slate, the top `slate_size` of the
  [B, N] candidates; the target network values it, with each agent's consumed values
  ([B, N, objectives]): P(some item of it is clicked) times the consumed
  value of its items weighted by their click probabilities, P(click | s', item_r, slot r) =
  sigmoid(target click logit + position_logits[r]), clicks being independent across slots. One
  network choosing and valuing both would overestimate the value.

  Why not SlateQ's sum over the slots of P(click) * consumed value: that counts the state after
  the slate once per click on it, and a slate with more than 1 / gamma expected clicks (the
  head's chosen slates have about two) makes the targets grow without bound; they did, from the
  first epoch. Valued so, targets contract at a rate of at most gamma (with
  `bellman_targets`' shares), at the price of undervaluing slates clicked several times.
  """
  _, slate = tf.math.top_k(online_values, k=slate_size)
  clicks = tf.sigmoid(tf.gather(target_click_logits, slate, batch_dims=1)
                      + position_logits[None, :slate_size])
  any_click = 1.0 - tf.reduce_prod(1.0 - clicks, axis=1, keepdims=True)
  values = tf.gather(target_consumed_values, slate, batch_dims=1)  # [B, slate, objectives]
  return any_click * tf.reduce_sum(clicks[..., None] * values, axis=1) / tf.reduce_sum(
      clicks, axis=1, keepdims=True)


def cql_penalty(candidate_q: tf.Tensor, logged_q: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
  """Weighted mean of logsumexp(candidates' Q and the logged action's Q) - the logged one's Q.

  candidate_q: [B, N], with -inf where a candidate is the logged action itself (counted once).
  logged_q, weights: [B]; rows of weight 0 do not count.
  """
  every_action = tf.concat([candidate_q, logged_q[:, None]], axis=1)
  return _weighted_mean(tf.reduce_logsumexp(every_action, axis=1) - logged_q, weights)


def _weighted_mean(values: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
  return tf.reduce_sum(weights * values) / tf.maximum(tf.reduce_sum(weights), 1.0)


class Catalog(tf.Module):
  """The catalog as actions: frozen item embeddings and the features the Q-network reads."""

  def __init__(self, embeddings: np.ndarray, categories: np.ndarray,
               price_buckets: np.ndarray, as_variables: bool = False):
    """`as_variables` holds the arrays in non-trainable variables instead of constants, as the
    served graph does (export.py): a SavedModel's variables are restored by C++ ops that release
    Python's GIL, its constants are rebuilt in Python holding it, which stalled a serving
    process's requests while a new version loaded beside them (bench/bench_serving.py's swap)."""
    super().__init__()

    def stored(value, dtype) -> tf.Tensor:
      value = tf.constant(value, dtype)
      return tf.Variable(value, trainable=False) if as_variables else value

    self.embeddings = stored(embeddings, tf.float32)
    # The same embeddings stored transposed, [dim, items], the layout the scores' matmul reads:
    # with `transpose_b` on [items, dim], one state's scores over 1M items took ~1.4x as long
    # (bench/bench_serving.py measures the served graph against its bare matmul + top_k floor).
    self.embeddings_t = stored(np.ascontiguousarray(np.asarray(embeddings, np.float32).T),
                               tf.float32)
    self.categories = stored(categories, tf.int64)
    self.price_buckets = stored(price_buckets, tf.int64)

  def as_variables(self) -> "Catalog":
    """The same catalog held in variables, for the served graph."""
    return Catalog(self.embeddings.numpy(), self.categories.numpy(), self.price_buckets.numpy(),
                   as_variables=True)

  def actions(self, items: tf.Tensor) -> Dict[str, tf.Tensor]:
    """The action features of item indices of any shape."""
    return {"item": items, "embedding": tf.gather(self.embeddings, items),
            "category": tf.gather(self.categories, items),
            "price_bucket": tf.gather(self.price_buckets, items)}

  def top_candidates(self, states: tf.Tensor, n: int) -> Tuple[tf.Tensor, tf.Tensor]:
    """The retrieval top-n of each state: (scores, int64 item indices), both [B, n], best first."""
    scores, items = tf.math.top_k(tf.matmul(states, self.embeddings_t), k=n)
    return scores, tf.cast(items, tf.int64)


class QNetwork(tf.keras.Model):
  """The head's two estimates of each of a state's [N] candidate actions, and their product.

  SlateQ's decomposition (Ie et al., 2019): what showing item a in state s is worth is
      P(click | s, a) * Q(s, a),
  the click probability times the consumed value Q(s, a), the reward of a click on a plus the
  discounted value of the state it leads to. A user's next state depends on what they consumed,
  not on what they scrolled past, so Q is learnt from clicked transitions only: the items of a
  slate the user scrolled past take no share of the value of the state the slate leads to.
    * click logit = scale * <s, a> + offset + click correction(s, a): the retrieval score <s, a>
      already ranks the candidates by what users engage with, learnt against the whole catalog,
      and the correction learns what the impressions add (an attractive item that is not
      engaged with again, a price);
    * each agent's Q_i(s, a) = scale_i * softplus(value offset_i + value correction_i(s, a)),
      positive as its rewards are, scale_i its reward's mean over clicked transitions; the
      ranking value combines them, P(click | s, a) * sum_i w_i Q_i(s, a).
  The corrections are one MLP's outputs, which start at zero, plus a learnt per-item term each
  (what an item is worth beyond what its features say), so the untrained head ranks exactly as
  retrieval does. The MLP reads the state, the item embedding, their product and dot product,
  and the item's category and price bucket. `position_logits` is the logged slot's effect on the
  click, learnt so that the click model is not the logging policy's position bias; the head
  ranks items as if each were shown in the top slot.
  """

  def __init__(self, num_items: int, num_categories: int, num_price_buckets: int,
               hidden_units: Sequence[int], num_positions: int,
               objective_weights: Sequence[float] = RewardConfig().weights(),
               reward_scales: Optional[Sequence[float]] = None):
    super().__init__()
    outputs = 1 + len(OBJECTIVES)  # the click correction, then each agent's value correction
    self.item_terms = tf.keras.layers.Embedding(num_items, outputs,
                                                embeddings_initializer="zeros")
    self.category_embedding = tf.keras.layers.Embedding(num_categories, 8)
    self.price_embedding = tf.keras.layers.Embedding(num_price_buckets, 4)
    self.hidden = [tf.keras.layers.Dense(units, activation="relu") for units in hidden_units]
    self.corrections = tf.keras.layers.Dense(outputs, kernel_initializer="zeros")
    self.slot_logits = tf.keras.layers.Embedding(num_positions, 1,
                                                 embeddings_initializer="zeros")
    self.score_scale = tf.Variable(_INITIAL_SCORE_SCALE, name="score_scale")
    self.click_offset = tf.Variable(0.0, name="click_offset")
    self.value_offsets = tf.Variable(tf.fill([len(OBJECTIVES)], _INITIAL_VALUE_OFFSET),
                                     name="value_offsets")
    scales = np.ones(len(OBJECTIVES)) if reward_scales is None else reward_scales
    # A variable, though never learnt, so that the exported model carries it: whoever re-weighs
    # the objectives after training reads each agent's unit from the SavedModel itself.
    self.reward_scales = tf.Variable(tf.constant(scales, tf.float32, shape=[len(OBJECTIVES)]),
                                     trainable=False, name="reward_scales")
    # The combiner's weights: not learnt, set (and baked into the export) by whoever chooses the
    # trade-off.
    self.objective_weights = tf.Variable(tf.constant(objective_weights, tf.float32,
                                                     shape=[len(OBJECTIVES)]),
                                         trainable=False, name="objective_weights")
    self.num_positions = num_positions

  def estimates(self, inputs) -> Tuple[tf.Tensor, tf.Tensor]:
    """(click logits [B, N], each agent's consumed values Q_i [B, N, OBJECTIVES]), of the top
    slot."""
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
    corrections = self.corrections(layer) + self.item_terms(actions["item"])  # [B, N, 1 + O]
    click_logits = self.score_scale * scores + self.click_offset + corrections[..., 0]
    return click_logits, self.reward_scales * tf.math.softplus(self.value_offsets
                                                               + corrections[..., 1:])

  def combined(self, values: tf.Tensor) -> tf.Tensor:
    """The combiner: sum_i w_i Q_i of agents' values [..., OBJECTIVES]."""
    return tf.reduce_sum(values * self.objective_weights, axis=-1)

  def position_logits(self, positions: tf.Tensor) -> tf.Tensor:
    """Each slot's click logit relative to the top slot's (0 there); later slots share the
    last one's."""
    positions = tf.clip_by_value(positions, 0, self.num_positions - 1)
    logits = tf.squeeze(self.slot_logits(positions), axis=-1)
    return logits - tf.squeeze(self.slot_logits(tf.zeros([1], positions.dtype)), axis=-1)

  def call(self, inputs):
    """The ranking value P(click) * sum_i w_i Q_i, [B, N]."""
    return self.combined(self.agent_values(inputs))

  def agent_values(self, inputs) -> tf.Tensor:
    """Each agent's ranking value P(click) * Q_i, [B, N, OBJECTIVES]."""
    click_logits, values = self.estimates(inputs)
    return tf.sigmoid(click_logits)[..., None] * values


class DQNRanker(tf.keras.Model):
  """Trains a QNetwork: its click model on every logged impression, each agent's consumed value
  by Double DQN with a target network on its own reward (and optionally the CQL regulariser on
  the combined value) on the clicked ones.

  A training batch holds transformed transitions as `with_states` makes them: the state and
  next state's embeddings and retrieval candidates, the logged action (`item_id_xf`) and its slot
  (`position`), the reward fields and `done`.
  """

  def __init__(self, query_tower: tf.keras.Model, catalog: Catalog, novelty: np.ndarray,
               num_categories: int, num_price_buckets: int, config: RankerConfig,
               reward_scales: Optional[Sequence[float]] = None):
    super().__init__()
    self.query_tower = query_tower
    self.catalog = catalog
    self.novelty = tf.constant(novelty, tf.float32)
    self.config = config
    num_items = int(catalog.embeddings.shape[0])
    self.q_network, self.target_network = (
        QNetwork(num_items, num_categories, num_price_buckets, config.hidden_units,
                 config.slate_size, config.reward.weights(), reward_scales) for _ in range(2))
    self.train_candidates = min(config.train_candidates, num_items)
    self.next_slate_size = min(config.slate_size, self.train_candidates)

  def with_states(self, transitions: tf.data.Dataset) -> tf.data.Dataset:
    """Transitions, one at a time, as the head trains on them: with STATE and NEXT_STATE, the
    query tower's embeddings of the state and the next state, and CANDIDATES and
    NEXT_CANDIDATES, each one's retrieval top-`train_candidates`, in place of the histories.

    The towers are frozen, so what they make of a transition is computed once here, not in every
    step of every epoch, where it was more than half of a step's forward pass; and a cache of
    the result holds two embeddings per transition instead of two histories of up to
    HISTORY_LENGTH items. Every head that reads it reranks these towers' retrievals.
    """
    histories = ((STATE, CANDIDATES, contract.transformed_name(contract.HISTORY)),
                 (NEXT_STATE, NEXT_CANDIDATES, contract.transformed_name(contract.NEXT_HISTORY)))

    def add_states(batch):
      batch = dict(batch)
      for state, candidates, history in histories:
        batch[state] = self._state(batch, batch.pop(history))
        _, batch[candidates] = self.catalog.top_candidates(batch[state], self.train_candidates)
      return batch

    return transitions.batch(_STATES_BATCH).map(add_states).unbatch()

  def _state(self, batch, history: tf.Tensor) -> tf.Tensor:
    """The query tower's embedding of the batch's user and hour with `history`.

    The next state keeps the step's hour: a session's steps are minutes apart. The users of
    `new_user_share` (`is_new_user_episode`) are the out-of-vocabulary user.
    """
    user_xf = contract.transformed_name(contract.USER_ID)
    inputs = {key: batch[key] for key in (user_xf,
                                          contract.transformed_name(contract.HOUR_OF_WEEK))}
    if self.config.new_user_share:
      unknown = tf.constant(self.query_tower.user_embedding.input_dim - 1, tf.int64)
      inputs[user_xf] = tf.where(
          is_new_user_episode(batch[contract.USER_ID], self.config.new_user_share), unknown,
          inputs[user_xf])
    inputs[contract.transformed_name(contract.HISTORY)] = history
    return tf.stop_gradient(self.query_tower(inputs))

  def build_networks(self, state_dim: int) -> None:
    """Creates both networks' weights and starts the target as a copy of the online network."""
    states = tf.zeros([1, state_dim])
    actions = self.catalog.actions(tf.zeros([1, 1], tf.int64))
    for network in (self.q_network, self.target_network):
      network((states, actions))
      network.position_logits(tf.zeros([1], tf.int64))
    self.target_network.set_weights(self.q_network.get_weights())

  def loss_terms(self, batch, bootstrap: bool = False) -> Dict[str, tf.Tensor]:
    """The click loss, the TD loss (summed over the agents), the CQL penalty and their weighted
    sum for one batch.

    Training values the next state with the target network; with `bootstrap`, the online
    network values it itself, so the TD loss is its own Bellman residual: what judges how well a
    head fits held-out transitions, whatever its target network lags.
    """
    terms = self.transition_terms(batch, bootstrap)
    clicked = terms["clicked"]
    # In each agent's reward unit, so that no objective's scale outweighs the others'.
    scales = self.q_network.reward_scales
    agent_losses = tf.keras.losses.huber((terms["targets"] / scales)[..., None],
                                         (terms["values"] / scales)[..., None])  # [B, O]
    td_loss = _weighted_mean(tf.reduce_sum(agent_losses, axis=1), clicked)
    click_loss = tf.reduce_mean(
        tf.nn.sigmoid_cross_entropy_with_logits(clicked, terms["click_logits"]))
    return {"td_loss": td_loss, "click_loss": click_loss, "cql_penalty": terms["cql_penalty"],
            "loss": td_loss + click_loss + self.config.cql_weight * terms["cql_penalty"]}

  def transition_terms(self, batch, bootstrap: bool = False) -> Dict[str, tf.Tensor]:
    """Per transition of a batch: `clicked` and the click logit of the logged slot ([B] each),
    each agent's Bellman target and online consumed value Q_i of the logged action ([B, O]
    each); and the batch's CQL penalty. `bootstrap` as in `loss_terms`."""
    valuing = self.q_network if bootstrap else self.target_network
    states, next_states = batch[STATE], batch[NEXT_STATE]
    logged = batch[contract.transformed_name(contract.ITEM_ID)]
    clicked = tf.cast(batch[contract.CLICK] > 0, tf.float32)

    next_candidates = batch[NEXT_CANDIDATES]
    next_actions = self.catalog.actions(next_candidates)
    target_clicks, target_values = valuing.estimates((next_states, next_actions))
    # Every agent values the slate the combined ranking would show (the module docstring says
    # why).
    next_values = next_slate_values(
        tf.stop_gradient(self.q_network((next_states, next_actions))), target_clicks,
        target_values, valuing.position_logits(tf.range(self.next_slate_size, dtype=tf.int64)),
        self.next_slate_size)
    targets = tf.stop_gradient(bellman_targets(
        objective_rewards(batch, tf.gather(self.novelty, logged)), next_values,
        batch[contract.DONE], batch[contract.RETURNED], batch[contract.STEP_ENGAGEMENTS],
        self.config.gamma, self.config.session_gamma))

    click_logits, logged_values = self.q_network.estimates(
        (states, self.catalog.actions(logged[:, None])))
    click_logits = click_logits[:, 0] + self.q_network.position_logits(batch[contract.POSITION])
    logged_values = logged_values[:, 0]
    candidates = batch[CANDIDATES]
    _, candidate_values = self.q_network.estimates((states, self.catalog.actions(candidates)))
    candidate_q = tf.where(tf.equal(candidates, logged[:, None]), -np.inf,
                           self.q_network.combined(candidate_values))
    return {"clicked": clicked, "click_logits": click_logits, "targets": targets,
            "values": logged_values,
            "cql_penalty": cql_penalty(candidate_q, self.q_network.combined(logged_values),
                                       clicked)}

  # Traced without AutoGraph, for the reason TwoTowerModel.train_step gives.
  @tf.autograph.experimental.do_not_convert
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
