"""The curated schemas (schemas/): raw events, validated; session transitions, transformed."""
import pathlib

from tensorflow_metadata.proto.v0 import schema_pb2
from tfx.utils import io_utils

SCHEMA_DIR = pathlib.Path(__file__).resolve().parents[1] / "schemas"
EVENTS_SCHEMA_PATH = SCHEMA_DIR / "events" / "schema.pbtxt"
TRANSITIONS_SCHEMA_PATH = SCHEMA_DIR / "transitions" / "schema.pbtxt"


def load_schema(path: pathlib.Path) -> schema_pb2.Schema:
  return io_utils.parse_pbtxt_file(str(path), schema_pb2.Schema())
