"""Serving: a TF Serving-compatible gRPC server for pushed SavedModels, and its client."""
import os

# The pushed SavedModel holds tf-keras (Keras 2) objects; see components/__init__.py.
os.environ["TF_USE_LEGACY_KERAS"] = "1"
