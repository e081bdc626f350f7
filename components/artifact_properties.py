"""What the custom components record on their artifacts in ML Metadata, by name.

The pipeline's resolvers, `recsys report`, `recsys lineage` and the stock Pusher read these
properties and files back, so their names live in one place.
"""

# Custom properties of DriftGate's output: what it found and whether a person overrode it.
DRIFT_DETECTED = "drift_detected"
DRIFT_OVERRIDDEN = "drift_overridden"
BASELINE_STATISTICS_URI = "baseline_statistics_uri"
# Custom properties of SkewGate's output: the line the run prints, whether the logged requests
# showed skew, and how many were judged (0 when the check was skipped).
SKEW_REPORT = "skew_report"
SKEW_DETECTED = "skew_detected"
SKEW_REQUESTS = "skew_requests"
# The statistics a run's data was judged on (DriftGate's output), and on SessionBuilder's
# `examples`, with their split names, once the data passed every check: the next run's drift
# baseline, so data any check stopped never becomes it.
STATISTICS_URI = "statistics_uri"
STATISTICS_SPLIT_NAMES = "statistics_split_names"
# Custom property of ModelEvaluator's evaluation: whether the gate blessed the model it judged.
BLESSED = "blessed"
# What TFX's InfraValidator writes into an InfraBlessing (private names in its executor), with
# the `blessed` custom property; the stock Pusher reads the property.
INFRA_BLESSED_FILE = "INFRA_BLESSED"
INFRA_NOT_BLESSED_FILE = "INFRA_NOT_BLESSED"
INFRA_REPORT_FILE = "infra_validation.json"
INFRA_REASON = "infra_validation"  # custom property: the one-line outcome
# ModelEvaluator's verdict on a model it already blessed (a cached Trainer output).
UNCHANGED = "unchanged: the candidate is the latest blessed model itself, already pushed"
