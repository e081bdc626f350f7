"""Shared test setup."""
import os
import pathlib

import pytest

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
MOVIELENS_DIR = REPO_ROOT.parent / "shared" / "data" / "movielens-latest-small"


@pytest.fixture
def movielens_dir():
  """The shared MovieLens ml-latest-small copy; tests that need it skip when it is absent."""
  if not (MOVIELENS_DIR / "ratings.csv").exists():
    pytest.skip(f"MovieLens data not found at {MOVIELENS_DIR}")
  return MOVIELENS_DIR
