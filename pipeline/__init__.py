"""Pipeline definition, configuration, runners and the `recsys` command line."""
import components  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
