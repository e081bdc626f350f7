"""Drift between spans: TFDV comparators with the curated schema's thresholds."""
import numpy as np
import pandas as pd
import pytest
import tensorflow_data_validation as tfdv
from tfx.types import standard_artifacts

from components import artifact_properties
from components import data_gates
from components.data import validation as data_validation
import schemas


def _span(seed, n=2000, click_share=0.1, price_scale=1.0, category_shares=(0.5, 0.3, 0.2)):
  rng = np.random.default_rng(seed)
  return pd.DataFrame({
      "user_id": [f"u{n}" for n in rng.integers(100, size=n)],
      "item_id": [f"i{n}" for n in rng.integers(50, size=n)],
      "timestamp": rng.integers(1_704_067_200, 1_711_843_200, size=n),
      "event": rng.choice(["impression", "click"], p=[1 - click_share, click_share], size=n),
      "rating": np.zeros(n),
      "price": rng.lognormal(np.log(30), 0.5, size=n) * price_scale,
      "category": rng.choice(["books", "toys", "home"], p=category_shares, size=n),
  })


@pytest.fixture(scope="module")
def schema():
  return data_validation.load_schema(schemas.EVENTS_SCHEMA_PATH)


def _drifted_features(current, baseline, schema):
  anomalies = data_validation.drift_anomalies(
      tfdv.generate_statistics_from_dataframe(current),
      tfdv.generate_statistics_from_dataframe(baseline), schema)
  return sorted(anomalies.anomaly_info)


def test_a_fresh_sample_of_the_same_distribution_does_not_drift(schema):
  assert _drifted_features(_span(1), _span(2), schema) == []


def test_a_changed_event_mix_drifts(schema):
  assert _drifted_features(_span(1, click_share=0.5), _span(2), schema) == ["event"]


def test_prices_in_another_unit_drift(schema):
  assert _drifted_features(_span(1, price_scale=100.0), _span(2), schema) == ["price"]


def test_a_changed_category_mix_drifts_and_is_named_with_its_distance(schema):
  anomalies = data_validation.drift_anomalies(
      tfdv.generate_statistics_from_dataframe(_span(1, category_shares=(0.1, 0.2, 0.7))),
      tfdv.generate_statistics_from_dataframe(_span(2)), schema)
  (message,) = data_validation.anomaly_messages(anomalies)
  assert message.startswith("feature 'category': ")
  assert "Linfty distance" in message and "threshold 0.25" in message


def test_schema_violations_are_left_to_the_example_validator(schema):
  current = _span(1)
  current.loc[0, "event"] = "teleport"  # breaks the schema's domain, barely moves the mix
  current_stats = tfdv.generate_statistics_from_dataframe(current)
  baseline_stats = tfdv.generate_statistics_from_dataframe(_span(2))
  assert "event" in tfdv.validate_statistics(current_stats, schema).anomaly_info
  assert not data_validation.drift_anomalies(current_stats, baseline_stats, schema).anomaly_info


def test_the_baseline_is_what_the_newest_accepted_run_passed():
  def accepted(artifact_id, statistics_uri):
    """An earlier run's SessionBuilder examples, as it records the statistics it was judged on."""
    artifact = standard_artifacts.Examples()
    artifact.id = artifact_id
    artifact.split_names = '["train", "eval"]'  # the examples' own splits, not the statistics'
    artifact.set_string_custom_property(artifact_properties.STATISTICS_URI, statistics_uri)
    artifact.set_string_custom_property(artifact_properties.STATISTICS_SPLIT_NAMES, '["events"]')
    return artifact

  baseline = data_gates.accepted_baseline([accepted(3, "/stats/3"), accepted(9, "/stats/9")])
  assert baseline.uri == "/stats/9" and baseline.split_names == '["events"]'
  assert data_gates.accepted_baseline(None) is None  # the first run
  assert data_gates.accepted_baseline([]) is None
