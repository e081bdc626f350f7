"""The resolver strategy the pipeline uses to read earlier runs' artifacts."""
from tfx.dsl.components.common import resolver


class RecentArtifactsStrategy(resolver.ResolverStrategy):
  """Up to `limit` newest artifacts of each channel, however few exist.

  TFX's LatestArtifactStrategy resolves nothing unless all it asks for exist, and a first run
  has no earlier artifacts at all. With `flag`, only artifacts whose int custom property of
  that name is 1 count.
  """

  def __init__(self, limit: int, flag: str = ""):
    self._limit = limit
    self._flag = flag

  def resolve_artifacts(self, store, input_dict):
    del store  # the channels' artifacts are all it needs
    return {key: sorted((artifact for artifact in artifacts
                         if not self._flag or artifact.get_int_custom_property(self._flag) == 1),
                        key=lambda artifact: artifact.id, reverse=True)[:self._limit]
            for key, artifacts in input_dict.items()}
