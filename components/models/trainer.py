"""TFX Trainer module file: `run_fn` trains the two-tower model, then the DQN ranking head on its
towers, and exports both as one serving graph with its warmup requests.

The pipeline names this function by string (pipeline/configs.py, TRAINER_RUN_FN), as TFX's
templates do; the steps it runs live in components/models/training.py and the model modules.
"""
import json
import os

from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
from tfx.components.trainer import fn_args_utils

from components.models import export
from components.models import preprocessing
from components.models import ranker
from components.models import training
from components.models import two_tower
from components.models import warmup
from components.models.config import MODEL_CONFIG_KEY
from components.models.config import ModelConfig
from components.models.config import OBJECTIVES
from schemas import contract

# Ids the warmup requests use: the most frequent users and items (vocabularies are by frequency).
_WARMUP_USERS = 8
_WARMUP_ITEMS = 10


def run_fn(fn_args: fn_args_utils.FnArgs) -> None:
  config = ModelConfig.from_dict(fn_args.custom_config[MODEL_CONFIG_KEY])
  tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
  # In-vocabulary items only: the OOV bucket is not a recommendable item.
  item_ids = np.array(tf_transform_output.vocabulary_by_name(contract.ITEM_ID), dtype=object)
  num_items = preprocessing.vocabulary_size(tf_transform_output, contract.ITEM_ID)
  num_categories = preprocessing.vocabulary_size(tf_transform_output, contract.CATEGORY)

  transitions = training.transitions_dataset(fn_args, fn_args.train_files,
                                             tf_transform_output).cache()
  items = training.catalog(transitions, num_items)
  strategy = training.distribution_strategy()
  in_vocabulary = np.arange(len(item_ids))
  catalog_inputs = {
      two_tower.ITEM_XF: in_vocabulary,
      two_tower.CATEGORY_XF: items.categories[in_vocabulary],
      two_tower.PRICE_BUCKET_XF: items.price_buckets[in_vocabulary],
      two_tower.TITLE_TOKENS_XF: items.title_tokens[in_vocabulary],
  }

  with strategy.scope():
    retrieval = two_tower.TwoTowerModel(
        num_users=preprocessing.vocabulary_size(tf_transform_output, contract.USER_ID),
        num_items=num_items, num_categories=num_categories,
        num_price_buckets=preprocessing.NUM_PRICE_BUCKETS,
        num_title_words=preprocessing.vocabulary_size(tf_transform_output, contract.TITLE_TOKENS),
        config=config,
        item_probability=items.engagement_share, catalog=catalog_inputs)
    retrieval.compile(optimizer=tf.keras.optimizers.Adam(config.learning_rate))
  logging.info("Retrieval (training loss, validation recall) per epoch: %s",
               training.train_retrieval(retrieval, training.engagements(transitions), config))

  catalog_actions = ranker.Catalog(
      retrieval.candidate_tower({key: tf.constant(values)
                                 for key, values in catalog_inputs.items()}).numpy(),
      catalog_inputs[two_tower.CATEGORY_XF], catalog_inputs[two_tower.PRICE_BUCKET_XF])
  novelty = ranker.item_novelty(items.engagement_share)
  reward_scales = ranker.reward_scales(transitions, novelty)
  logging.info("The ranking head's agents learn in units of %s",
               dict(zip(OBJECTIVES, reward_scales.round(4).tolist())))

  def ranking_head():
    with strategy.scope():
      head = ranker.DQNRanker(retrieval.query_tower, catalog_actions, novelty, num_categories,
                              preprocessing.NUM_PRICE_BUCKETS, config.ranker, reward_scales)
      head.build_networks(config.embedding_dim)
      head.compile(optimizer=tf.keras.optimizers.Adam(config.ranker.learning_rate))
    return head

  dqn = ranking_head()
  if training.has_unengaged_impressions(transitions):
    fit_transitions, validation_transitions = (
        dqn.with_states(split) for split in training.split_users(
            transitions, config.ranker.validation_fraction))
    history = dqn.fit(
        training.dqn_fit_dataset(fit_transitions, config.ranker.batch_size),
        epochs=config.ranker.epochs, verbose=0,
        callbacks=[training.EpochLog("DQN head", config.ranker.epochs, "td_loss")])
    logging.info("DQN TD loss per epoch: %s, click loss: %s, CQL penalty: %s",
                 history.history["td_loss"], history.history["click_loss"],
                 history.history["cql_penalty"])
    # On transitions the head never saw, against an untrained head: what training bought, kept
    # with the model run for whoever asks whether the head learnt at all. The held-out users of
    # the train split, and the eval split (every user's last engagements). Both heads are judged
    # on the trained head's Bellman targets.
    heads = {"trained": dqn, "untrained": ranking_head()}
    evaluation = {
        split: training.held_out_losses(heads, held_out.batch(config.ranker.batch_size), dqn)
        for split, held_out in (
            ("validation", validation_transitions),
            ("eval", dqn.with_states(training.transitions_dataset(
                fn_args, fn_args.eval_files, tf_transform_output))))}
    logging.info("DQN head on held-out transitions: %s", evaluation)
    tf.io.gfile.makedirs(fn_args.model_run_dir)
    with tf.io.gfile.GFile(
        os.path.join(fn_args.model_run_dir, training.HEAD_EVALUATION_FILE), "w") as out:
      out.write(json.dumps(evaluation, indent=2))
  else:
    # Every logged action was engaged with (ratings data): no reward tells one action from
    # another, and the head would learn the logging order. Untrained, it ranks as retrieval does
    # (on ml-latest-small's eval split trained it cut nDCG@10 from 0.0090 to 0.0064).
    logging.info("No transition shows an item that was not engaged with: the DQN head is not "
                 "trained and the serving graph ranks by retrieval")

  module = export.RecommenderModule(
      tf_transform_output.transform_features_layer(), retrieval.query_tower, dqn.q_network,
      catalog_actions, item_ids.astype(bytes), config.top_k, config)
  export.save(module, fn_args.serving_model_dir)
  # Replayed by TF Serving (and the local server) on load, and sent by infra validation.
  users = tf_transform_output.vocabulary_by_name(contract.USER_ID)[:_WARMUP_USERS]
  warmup.write(fn_args.serving_model_dir, warmup.representative_requests(
      [user.decode() for user in users], [item.decode() for item in item_ids[:_WARMUP_ITEMS]]))
  logging.info("Exported the serving model to %s", fn_args.serving_model_dir)
