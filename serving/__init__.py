"""Serving: a TF Serving-compatible gRPC/REST server for pushed SavedModels, its client, the
push and rollback of versions, infra validation and batch recommendations.

The deployment files for stock TensorFlow Serving (GPU image, compose, Kubernetes) are in deploy/.
"""
import components  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
