"""The curated schemas (schemas/): raw events, validated; retrieval examples, transformed."""
import pathlib

from tensorflow_metadata.proto.v0 import schema_pb2
from tfx.utils import io_utils

SCHEMA_DIR = pathlib.Path(__file__).resolve().parents[1] / "schemas"
EVENTS_SCHEMA_PATH = SCHEMA_DIR / "events" / "schema.pbtxt"
EXAMPLES_SCHEMA_PATH = SCHEMA_DIR / "examples" / "schema.pbtxt"


def load_schema(path: pathlib.Path) -> schema_pb2.Schema:
  return io_utils.parse_pbtxt_file(str(path), schema_pb2.Schema())
