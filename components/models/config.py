"""Hyper-parameters of the two-tower model, the DQN ranking head and its reward.

Plain frozen dataclasses without TensorFlow, so the pipeline's configuration
(pipeline/configs.py) reads them instantly; they travel to the Trainer as a dict in
`custom_config` (`ModelConfig.from_dict` is the way back).
"""
import dataclasses
import hashlib
import pathlib
from typing import Dict, Tuple

from schemas import contract

# The history each retrieval example is trained with (components/models/histories.py says why).
RECENT_HISTORY = "recent"  # the items engaged with just before it
SAMPLED_HISTORY = "sampled"  # a random sample of the user's other engagements, redrawn per epoch
AUTO_HISTORY = "auto"  # sampled when the engagements are explicit ratings, recent otherwise
HISTORY_MODES = (RECENT_HISTORY, SAMPLED_HISTORY, AUTO_HISTORY)

# How the query tower reads the most recent items in order (components/models/two_tower.py).
ATTENTION_ENCODER = "attention"  # one self-attention layer (SASRec-style)
GRU_ENCODER = "gru"  # a GRU (GRU4Rec-style)
CNN_ENCODER = "cnn"  # causal 1-D convolutions (Caser/NextItNet-style)
SEQUENCE_ENCODERS = (ATTENTION_ENCODER, GRU_ENCODER, CNN_ENCODER)

# How the candidate tower reads an item's title words (components/models/two_tower.py).
BAG_OF_WORDS_TITLE = "bag"  # the mean of the words' embeddings
ATTENTION_TITLE = "attention"  # one self-attention layer over the words in order
TITLE_ENCODERS = (BAG_OF_WORDS_TITLE, ATTENTION_TITLE)

# The retrieval softmax's negatives (components/models/two_tower.py says why).
FULL_SOFTMAX = "full"  # every catalog item
MIXED_NEGATIVES = "mixed"  # the batch's items plus uniformly drawn catalog items, log-Q corrected
AUTO_NEGATIVES = "auto"  # full up to FULL_SOFTMAX_MAX_ITEMS catalog items, mixed above
NEGATIVES = (AUTO_NEGATIVES, FULL_SOFTMAX, MIXED_NEGATIVES)
# The largest catalog "auto" scores whole: a [batch, items] logit matrix of 512 x 100k floats is
# 200 MB and one matrix product per batch, which a GPU does in milliseconds; above it the
# catalog's embeddings are recomputed each step for too few examples.
FULL_SOFTMAX_MAX_ITEMS = 100_000

# How the model is trained for users it has never seen (components/models/cold_start.py says
# why and how).
NO_COLD_START = "off"  # not at all: a new user gets an untrained embedding row and their history
AMORTISED_COLD_START = "amortised"  # the history path learns from new users' first items
GRADIENT_COLD_START = "maml"  # a new user's vector is adapted by steps on their first items
COLD_START_FORMS = (NO_COLD_START, AMORTISED_COLD_START, GRADIENT_COLD_START)

# Keys of the custom_config Transform and Trainer get.
MODEL_CONFIG_KEY = "model_config"
CODE_VERSION_KEY = "code_version"
# The code whose edits change what Transform and the Trainer produce: the models' stage and the
# contract it exports.
_MODEL_CODE_DIRS = ("components/models", "schemas")
_REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


@dataclasses.dataclass(frozen=True)
class RewardConfig:
  """The reward of one transition: a weighted sum of what the user did with the item shown.

  Each term is an objective the ranking head learns separately (one agent each, OBJECTIVES), and
  the weights combine the agents' values into the served ranking; a new weighting needs no
  retraining of the agents.

  `novelty` rewards an engagement with a rarely engaged item: the item's self-information,
  -log2(share of training engagements), divided by the catalog's largest so it lies in [0, 1].
  `retention` rewards the user's satisfaction where the logs show it, by their coming back: each
  item engaged with on a session's last step earns it when the user has a later session.
  """
  click: float = 1.0
  purchase: float = 1.0
  revenue: float = 0.01  # per unit of price; a purchase of a typical 30.00 item adds 0.3
  novelty: float = 0.0
  retention: float = 0.0

  def weights(self) -> Tuple[float, ...]:
    """The weights in OBJECTIVES order: the ranking head's combiner weights."""
    return tuple(getattr(self, name) for name in OBJECTIVES)


# The objectives the ranking head learns, one agent each (components/models/ranker.py): the
# terms of RewardConfig, in its order.
OBJECTIVES = tuple(field.name for field in dataclasses.fields(RewardConfig))


@dataclasses.dataclass(frozen=True)
class RankerConfig:
  """Hyper-parameters of the DQN head; the defaults train in seconds on the default dataset."""
  hidden_units: Tuple[int, ...] = (64, 32)
  # The discount per step within a session, and from a session's last step to the user's next
  # session (0: each session is valued on its own).
  gamma: float = 0.9
  session_gamma: float = 0.9
  epochs: int = 5
  batch_size: int = 512
  # Share of the training users whose transitions the head does not fit, so that what it learnt
  # is judged on states from the same time as its training data (the eval split holds users'
  # last sessions, whose futures are shorter: on the e2e data their mean Bellman target is 1.49
  # against 2.13 in training). 0 fits every user and judges on the eval split alone.
  validation_fraction: float = 0.1
  # Adam's step size. With it and 5 epochs the head earned 10-26 % more reward per user than
  # retrieval in four trainings on the built-in data, and 32 % in the benchmark (53 % with the
  # per-objective agents; README, Benchmarks). The head of before (one correction of the
  # retrieval score regressed on every impression) had to stay near retrieval: at 3e-4 it cost
  # 60 % of the simulator's clicks.
  learning_rate: float = 1e-3
  target_update_rate: float = 0.01
  # Off by default: the simulator's logging policy ranks worse than the two-tower model, and with
  # the head of before anchoring Q to the logged actions made reranking worse (README,
  # Benchmarks).
  cql_weight: float = 0.0
  # Candidates per state in training: the set the next state's slate is sought in.
  train_candidates: int = 20
  # The slots of a slate: the next state is valued by the slate of this many items the head would
  # show there, and logged positions from this one on share its click effect.
  slate_size: int = 10
  # Candidates the serving graph reranks: the retrieval top-N.
  serve_candidates: int = 200
  # Serving exploration (`rerank`), at most one of the two: temperature > 0 samples the slate,
  # item by item, from softmax(Q / temperature) over the items not yet placed (Plackett–Luce);
  # epsilon > 0 shows, in each slot with that probability, a uniformly drawn candidate from
  # outside the greedy top-k instead of the greedy item. Both 0 rank greedily by Q.
  temperature: float = 0.0
  epsilon: float = 0.0
  # Share of the training users whose transitions the head learns as a new user's, from states
  # without their id (components/models/ranker.py, "New users' episodes"; README, "Cold
  # start"); 0: none.
  new_user_share: float = 0.2
  reward: RewardConfig = RewardConfig()

  def __post_init__(self):
    if not 0.0 <= self.gamma < 1.0:
      raise ValueError(f"gamma must be in [0, 1), got {self.gamma}")
    if not 0.0 <= self.session_gamma < 1.0:
      raise ValueError(f"session_gamma must be in [0, 1), got {self.session_gamma}")
    if not 0.0 <= self.validation_fraction < 1.0:
      raise ValueError(f"validation_fraction must be in [0, 1), got {self.validation_fraction}")
    if not 0.0 < self.target_update_rate <= 1.0:
      raise ValueError(f"target_update_rate must be in (0, 1], got {self.target_update_rate}")
    if self.temperature < 0.0:
      raise ValueError(f"temperature must be >= 0, got {self.temperature}")
    if not 0.0 <= self.epsilon <= 1.0:
      raise ValueError(f"epsilon must be in [0, 1], got {self.epsilon}")
    if not 0.0 <= self.new_user_share <= 1.0:
      raise ValueError(f"new_user_share must be in [0, 1], got {self.new_user_share}")
    if self.temperature > 0.0 and self.epsilon > 0.0:
      raise ValueError("explore with temperature or with epsilon, not both: got temperature "
                       f"{self.temperature} and epsilon {self.epsilon}")

  @classmethod
  def from_dict(cls, values: Dict) -> "RankerConfig":
    values = dict(values)
    values["hidden_units"] = tuple(values.get("hidden_units", cls.hidden_units))
    values["reward"] = RewardConfig(**values.get("reward", {}))
    return cls(**values)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Hyper-parameters of both models; the defaults train well on the default dataset."""
  embedding_dim: int = 64
  # Training stops after `epochs`, or earlier when the recall@10 of `validation_fraction` of the
  # training engagements (held out of the fit, drawn at random; components/models/training.py,
  # `validation_recall`) has not improved for `early_stopping_patience` epochs; the weights of
  # the best epoch are kept. The full softmax overfits ml-latest-small after about 10 epochs
  # (README, Validation). The validation recall moves by about 0.005 from epoch to epoch on its
  # own: with a patience of 3, one of six MovieLens trainings stopped at epoch 6 on a lucky
  # epoch 3 (nDCG@10 0.270 against 0.316) and was refused by the gate; at 5, the next run's
  # three encoders were all blessed (0.313-0.323).
  epochs: int = 30
  early_stopping_patience: int = 5
  validation_fraction: float = 0.1
  batch_size: int = 512
  # Adam's step size.
  learning_rate: float = 1e-3
  # The history each retrieval example is trained with (components/models/histories.py): "recent"
  # (the items just before it), "sampled" (a new random sample of the user's other engagements each
  # epoch), or "auto": sampled when the engagements are explicit ratings, recent otherwise.
  retrieval_history: str = AUTO_HISTORY
  # The softmax's negatives (NEGATIVES; "auto" by catalog size), how many uniform catalog items
  # a mixed batch adds (0: the batch's items only), and the temperature that divides its logits.
  negatives: str = AUTO_NEGATIVES
  mixed_negatives: int = 0
  temperature: float = 1.0
  # Share of training examples whose hour of the week is hidden, so the query tower also learns
  # to serve clients that do not send the time (and the simulator, whose world has no clock).
  context_dropout: float = 0.2
  # The encoder of the most recent items (SEQUENCE_ENCODERS), and how many it reads; the profile
  # mean reads the whole history (up to contract.HISTORY_LENGTH).
  sequence_encoder: str = ATTENTION_ENCODER
  recent_length: int = contract.RECENT_LENGTH
  # How the candidate tower reads the title words (TITLE_ENCODERS). The bag of words stays the
  # default: on ml-latest-small's titles self-attention over them scored 0.0123 nDCG@10 on the
  # pipeline's eval split against 0.0128 (README, "Item tower: bag of words against
  # self-attention").
  title_encoder: str = BAG_OF_WORDS_TITLE
  # Meta-training for new users (COLD_START_FORMS): after each epoch, `cold_start_episodes`
  # episodes per training user (their first few engagements in time order as support, the next
  # ones as query). "maml" adapts the unknown user's vector by `adapt_steps` gradient steps of
  # `adapt_learning_rate` on the support (first-order MAML); `recsys recommend --adapt-steps`
  # and `recsys adapt-users` take the same steps after training, from any form's model. Chosen
  # on a validation split of ml-latest-small's training users (bench/bench_cold_start.py
  # --split validation, 3 seeds): "maml" at 3 steps of 0.1 had the best nDCG@10 of new users at
  # every support size (README, "Cold start"); a step of 1.0 overshot, 0.01 barely moved.
  cold_start: str = GRADIENT_COLD_START
  cold_start_episodes: int = 2
  adapt_steps: int = 3
  adapt_learning_rate: float = 0.1
  # Seeds the sampled histories and the order of the retrieval examples.
  seed: int = 0
  # How many items the serving signatures return per user.
  top_k: int = 100
  # The DQN ranking head that reranks the retrieved items.
  ranker: RankerConfig = RankerConfig()

  def __post_init__(self):
    if self.retrieval_history not in HISTORY_MODES:
      raise ValueError(f"retrieval_history must be one of {HISTORY_MODES}, got "
                       f"{self.retrieval_history!r}")
    if self.negatives not in NEGATIVES:
      raise ValueError(f"negatives must be one of {NEGATIVES}, got {self.negatives!r}")
    if self.mixed_negatives < 0:
      raise ValueError(f"mixed_negatives must be >= 0, got {self.mixed_negatives}")
    if self.temperature <= 0.0:
      raise ValueError(f"temperature must be positive, got {self.temperature}")
    if self.sequence_encoder not in SEQUENCE_ENCODERS:
      raise ValueError(f"sequence_encoder must be one of {SEQUENCE_ENCODERS}, got "
                       f"{self.sequence_encoder!r}")
    if self.title_encoder not in TITLE_ENCODERS:
      raise ValueError(f"title_encoder must be one of {TITLE_ENCODERS}, got "
                       f"{self.title_encoder!r}")
    if not 1 <= self.recent_length <= contract.HISTORY_LENGTH:
      raise ValueError(f"recent_length must be in [1, {contract.HISTORY_LENGTH}], got "
                       f"{self.recent_length}")
    if self.epochs < 1:
      raise ValueError(f"epochs must be >= 1, got {self.epochs}")
    if self.early_stopping_patience < 1:
      raise ValueError(f"early_stopping_patience must be >= 1, got "
                       f"{self.early_stopping_patience}")
    if not 0.0 <= self.validation_fraction < 1.0:
      raise ValueError(f"validation_fraction must be in [0, 1), got {self.validation_fraction}")
    if self.cold_start not in COLD_START_FORMS:
      raise ValueError(f"cold_start must be one of {COLD_START_FORMS}, got {self.cold_start!r}")
    if self.cold_start_episodes < 1:
      raise ValueError(f"cold_start_episodes must be >= 1, got {self.cold_start_episodes}")
    if self.adapt_steps < 0:
      raise ValueError(f"adapt_steps must be >= 0, got {self.adapt_steps}")
    if self.adapt_learning_rate <= 0.0:
      raise ValueError(f"adapt_learning_rate must be positive, got {self.adapt_learning_rate}")
    if not 0.0 <= self.context_dropout < 1.0:
      raise ValueError(f"context_dropout must be in [0, 1), got {self.context_dropout}")

  @classmethod
  def from_dict(cls, values: Dict) -> "ModelConfig":
    """The inverse of dataclasses.asdict, which is how the config travels in custom_config."""
    values = dict(values)
    values["ranker"] = RankerConfig.from_dict(values.get("ranker", {}))
    return cls(**values)


def code_version() -> str:
  """Hash of the model code, passed in custom_config so that editing it defeats the cache.

  Transform and Trainer name their code by module path, which TFX does not fingerprint. The
  export also writes the serving contract (schemas/contract.py), so that counts too.
  """
  digest = hashlib.sha256()
  for package in _MODEL_CODE_DIRS:
    for path in sorted((_REPO_ROOT / package).rglob("*.py")):
      digest.update(path.relative_to(_REPO_ROOT).as_posix().encode())
      digest.update(path.read_bytes())
  return digest.hexdigest()[:16]


def custom_config(config: "ModelConfig") -> dict:
  """What Transform and the Trainer get: the hyper-parameters and the code they run."""
  return {MODEL_CONFIG_KEY: dataclasses.asdict(config), CODE_VERSION_KEY: code_version()}
