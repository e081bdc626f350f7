"""The curated schema of the event data (schemas/schema.pbtxt)."""
import pathlib

from tensorflow_metadata.proto.v0 import schema_pb2
from tfx.utils import io_utils

SCHEMA_DIR = pathlib.Path(__file__).resolve().parents[1] / "schemas"
SCHEMA_PATH = SCHEMA_DIR / "schema.pbtxt"


def load_schema(path: pathlib.Path = SCHEMA_PATH) -> schema_pb2.Schema:
  return io_utils.parse_pbtxt_file(str(path), schema_pb2.Schema())
