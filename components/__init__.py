"""Custom TFX components and the module code Transform and Trainer run.

TensorFlow Recommenders needs Keras 2 (tf-keras); TensorFlow 2.16 defaults to Keras 3, so the
switch is made here, before anything in the package can import TensorFlow.
"""
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
