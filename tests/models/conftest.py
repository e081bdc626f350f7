"""Fixtures of the models' tests."""
import pytest
from tensorflow.python.autograph.core import ag_ctx


@pytest.fixture
def autograph_statuses(monkeypatch):
  """`record(cls, method)`: a list that gets, at each call of `cls.method`, whether AutoGraph is
  converting the code that calls it (ENABLED) or not (DISABLED). A Keras layer's `call` must be
  patched before the layer is made (Keras reads its signature then), and one without a
  `training` argument not at all (this one takes **kwargs, so Keras would pass it one)."""
  def record(cls, method: str):
    statuses = []
    original = getattr(cls, method)

    def recording(self, *args, **kwargs):
      statuses.append(ag_ctx.control_status_ctx().status)
      return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, method, recording)
    return statuses
  return record
