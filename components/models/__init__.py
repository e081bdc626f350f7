"""The models' stage: what Transform and the Trainer run, and the serving graph they export.

  config.py         hyper-parameters (plain dataclasses) and how they reach the Trainer
  preprocessing.py  tf.Transform: vocabularies, price buckets, title words, hour of the week
  histories.py      the histories retrieval examples train with
  two_tower.py      the TensorFlow Recommenders two-tower retrieval model
  ranker.py         the Keras DQN ranking head and the serving policy
  training.py       reading the transitions and fitting retrieval
  trainer.py        the Trainer's `run_fn`
  export.py         the serving SavedModel (one graph of stock ops)
  warmup.py         TF Serving warmup requests written into it
  queries.py        calling its signatures with many queries, in process or as Predict requests
"""
