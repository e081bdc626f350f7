"""The curated schemas and the contract every stage shares.

  events/schema.pbtxt        the raw events TFDV validates each span against (drift thresholds)
  transitions/schema.pbtxt   the session transitions Transform and the Trainer read
  serving/skew.pbtxt         the training-serving skew thresholds of the logged requests
  gate/*.yaml                the release gate's rules
  contract.py                feature names, the history length and the serving signatures

Paths and plain values only: the configuration (pipeline/configs.py) reads them without loading
TensorFlow, and the pipeline names the files by path, as TFX's ImportSchemaGen takes them.
"""
import pathlib

SCHEMA_DIR = pathlib.Path(__file__).resolve().parent
EVENTS_SCHEMA_PATH = SCHEMA_DIR / "events" / "schema.pbtxt"
TRANSITIONS_SCHEMA_PATH = SCHEMA_DIR / "transitions" / "schema.pbtxt"
SKEW_SCHEMA_PATH = SCHEMA_DIR / "serving" / "skew.pbtxt"
# The release gate's rules (components/evaluation/release_gate.py).
DEFAULT_GATE_CONFIG = SCHEMA_DIR / "gate" / "gate.yaml"
REPORT_ONLY_GATE_CONFIG = SCHEMA_DIR / "gate" / "report_only.yaml"  # never refuses: for benchmarks
