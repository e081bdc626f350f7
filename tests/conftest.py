"""Shared test setup."""
import pathlib

import pytest

# Before any test module imports TensorFlow itself: Keras 2 and TensorFlow's log level
# (components/__init__.py says why).
import components  # noqa: F401  pylint: disable=unused-import

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
MOVIELENS_DIR = REPO_ROOT.parent / "shared" / "data" / "movielens-latest-small"


@pytest.fixture
def movielens_dir():
  """The shared MovieLens ml-latest-small copy; tests that need it skip when it is absent."""
  if not (MOVIELENS_DIR / "ratings.csv").exists():
    pytest.skip(f"MovieLens data not found at {MOVIELENS_DIR}")
  return MOVIELENS_DIR
