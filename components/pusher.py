"""The stock Pusher with an atomic, versioned, labelled push (serving/push.py).

TFX's Pusher copies the model file by file into `<base_directory>/<version>/`, saved_model.pb
last: a server polling meanwhile can see a partial version, and a crash leaves one behind. This
executor keeps the stock component, its blessing checks (ModelBlessing and InfraBlessing) and
its PushedModel artifact, and replaces only the copy by `push.push`: staged, renamed into place,
labelled stable in models.config (`custom_config["label_delay_seconds"]` apart, for TF Serving),
older versions pruned to `custom_config["versions_kept"]`, request logging configured with
`custom_config["request_log_sampling_rate"]` (absent or None: no logging).
"""
import os
from typing import Any, Dict, List

from tfx import types
from tfx.components.pusher import executor as pusher_executor
from tfx.dsl.components.base import executor_spec
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils
from tfx.types import standard_component_specs
from tfx.utils import io_utils
from tfx.utils import json_utils
from tfx.utils import proto_utils

from serving import push
from serving.config import DEFAULT_VERSIONS_KEPT

VERSIONS_KEPT_KEY = "versions_kept"
LABEL_DELAY_KEY = "label_delay_seconds"
REQUEST_LOG_SAMPLING_RATE_KEY = "request_log_sampling_rate"


class AtomicPushExecutor(pusher_executor.Executor):
  """Pushes a blessed model with `serving.push.push`; an unblessed one is marked not pushed."""

  def Do(self, input_dict: Dict[str, List[types.Artifact]],
         output_dict: Dict[str, List[types.Artifact]], exec_properties: Dict[str, Any]) -> None:
    self._log_startup(input_dict, output_dict, exec_properties)
    pushed_model = artifact_utils.get_single_instance(
        output_dict[standard_component_specs.PUSHED_MODEL_KEY])
    if not self.CheckBlessing(input_dict):
      self._MarkNotPushed(pushed_model)
      return
    model_path = self.GetModelPath(input_dict)
    destination = pusher_pb2.PushDestination()
    proto_utils.json_to_proto(exec_properties[standard_component_specs.PUSH_DESTINATION_KEY],
                              destination)
    # The destination's base_directory is <serving_root>/<model_name>, as for the stock Pusher.
    base_directory = destination.filesystem.base_directory.rstrip("/")
    custom_config = json_utils.loads(
        exec_properties.get(standard_component_specs.CUSTOM_CONFIG_KEY, "null")) or {}
    version = push.push(
        model_path, os.path.dirname(base_directory), os.path.basename(base_directory),
        keep=int(custom_config.get(VERSIONS_KEPT_KEY, DEFAULT_VERSIONS_KEPT)),
        label_delay_seconds=float(custom_config.get(LABEL_DELAY_KEY, 0.0)),
        request_log_sampling_rate=custom_config.get(REQUEST_LOG_SAMPLING_RATE_KEY))
    io_utils.copy_dir(model_path, pushed_model.uri)  # the archive copy the stock Pusher keeps
    self._MarkPushed(pushed_model, pushed_destination=os.path.join(base_directory, str(version)),
                     pushed_version=str(version))


EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(AtomicPushExecutor)
