"""The built-in dataset: deterministic, well-formed, and with a signal a recommender can learn."""

import numpy as np
import pandas as pd
import pytest

from components.simulation import generator


@pytest.fixture(scope="module")
def default_dataset(tmp_path_factory):
  """The default-size dataset, read back as (interactions, items) frames of strings and ints."""
  dataset = generator.generate_dataset(tmp_path_factory.mktemp("default"))
  interactions = pd.read_csv(dataset.interactions, dtype={"user_id": str, "item_id": str})
  items = pd.read_csv(dataset.items, dtype={"item_id": str})
  return interactions, items


def _small(out_dir, seed):
  return generator.generate_dataset(out_dir, seed=seed, n_users=50, n_items=40, n_events=2_000)


def test_same_seed_gives_identical_bytes(tmp_path):
  first, second = _small(tmp_path / "a", seed=5), _small(tmp_path / "b", seed=5)
  assert first.interactions.read_bytes() == second.interactions.read_bytes()
  assert first.items.read_bytes() == second.items.read_bytes()


def test_different_seeds_give_different_files(tmp_path):
  first, second = _small(tmp_path / "a", seed=5), _small(tmp_path / "b", seed=6)
  assert first.interactions.read_bytes() != second.interactions.read_bytes()
  assert first.items.read_bytes() != second.items.read_bytes()


def test_files_have_the_generic_format_and_requested_sizes(default_dataset):
  interactions, items = default_dataset
  assert list(interactions.columns) == ["user_id", "item_id", "timestamp", "event", "price",
                                        "session_id", "position", "propensity"]
  assert list(items.columns) == ["item_id", "category", "price", "title"]
  assert len(interactions) == generator.DEFAULT_EVENTS
  assert len(items) == generator.DEFAULT_ITEMS
  assert items["category"].nunique() == generator.DEFAULT_CATEGORIES
  assert interactions["user_id"].str.fullmatch(r"u\d{5}").all()
  assert interactions["session_id"].str.fullmatch(r"s\d{7}").all()
  assert items["item_id"].str.fullmatch(r"i\d{5}").all()
  # Most users are active at the default sizes, and engagements are numerous enough to train on.
  assert interactions["user_id"].nunique() > 0.75 * generator.DEFAULT_USERS
  assert 8_000 < (interactions["event"] != "impression").sum() < 20_000


def test_values_are_in_range(default_dataset):
  interactions, items = default_dataset
  assert set(interactions["item_id"]) <= set(items["item_id"])
  assert items["item_id"].is_unique
  assert (items["price"] > 0).all()
  logged_price = interactions["item_id"].map(items.set_index("item_id")["price"])
  assert np.allclose(interactions["price"], logged_price)
  assert set(interactions["event"]) == {"impression", "click", "purchase"}
  assert interactions["position"].between(0, 9).all()
  assert ((interactions["propensity"] > 0) & (interactions["propensity"] <= 1)).all()
  window_end = generator.WINDOW_START + generator.WINDOW_DAYS * 86_400
  assert interactions["timestamp"].between(generator.WINDOW_START, window_end - 1).all()
  assert interactions["timestamp"].is_monotonic_increasing


def _slates(interactions):
  return interactions.groupby(["session_id", "timestamp"])


def test_a_slate_shares_one_timestamp_and_shows_distinct_items_in_positions(default_dataset):
  interactions, _ = default_dataset
  slates = _slates(interactions)
  assert (slates["item_id"].nunique() == slates.size()).all()
  assert (slates["position"].min() == 0).all()
  full = slates.size() == 10  # all but the cut-short last slate
  assert full.mean() > 0.999
  assert (slates["position"].max()[full] == 9).all()


def test_sessions_are_hours_apart_and_steps_minutes_apart(default_dataset):
  interactions, _ = default_dataset
  sessions = interactions.groupby("session_id").agg(
      user=("user_id", "first"), start=("timestamp", "min"), end=("timestamp", "max"))
  assert (interactions.groupby("session_id")["user_id"].nunique() == 1).all()
  sessions = sessions.sort_values(["user", "start"])
  same_user = sessions["user"].shift(-1) == sessions["user"]
  gaps = (sessions["start"].shift(-1) - sessions["end"])[same_user]
  assert gaps.min() >= generator.MIN_SESSION_GAP
  assert gaps.median() > 86_400  # days apart for a typical user
  step_times = interactions.drop_duplicates(["session_id", "timestamp"])
  step_gaps = step_times.groupby("session_id")["timestamp"].diff().dropna()
  assert step_gaps.min() >= generator.MIN_STEP_SECONDS
  assert step_gaps.max() <= generator.MAX_STEP_SECONDS < 1_800  # the pipeline's session cut


def test_click_and_purchase_rates_are_those_of_a_shop(default_dataset):
  interactions, _ = default_dataset
  clicks = interactions["event"].isin(["click", "purchase"])
  purchases = interactions["event"] == "purchase"
  assert 0.08 < clicks.mean() < 0.2
  assert 0.1 < purchases.sum() / clicks.sum() < 0.4


def test_expensive_items_are_bought_less_often(default_dataset):
  interactions, items = default_dataset
  expensive = interactions["price"] > items["price"].median()
  clicks = interactions["event"].isin(["click", "purchase"])
  purchases = interactions["event"] == "purchase"
  rate = lambda mask: (purchases & mask).sum() / (clicks & mask).sum()
  assert rate(expensive) < 0.8 * rate(~expensive)


def _consecutive_clicks(interactions, items):
  """Clicked items with the category and item of the user's previous click."""
  clicks = interactions[interactions["event"] != "impression"].copy()
  clicks["category"] = clicks["item_id"].map(items.set_index("item_id")["category"])
  by_user = clicks.groupby("user_id")
  clicks["previous_item"] = by_user["item_id"].shift()
  clicks["previous_category"] = by_user["category"].shift()
  return clicks.dropna(subset=["previous_item"])


def test_previous_category_predicts_the_next_one(default_dataset):
  clicks = _consecutive_clicks(*default_dataset)
  train_users = set(clicks["user_id"].unique()[::2])
  train = clicks[clicks["user_id"].isin(train_users)]
  test = clicks[~clicks["user_id"].isin(train_users)]
  most_likely_next = train.groupby("previous_category")["category"].agg(
      lambda categories: categories.value_counts().idxmax())
  history_accuracy = (test["previous_category"].map(most_likely_next) == test["category"]).mean()
  majority_accuracy = (test["category"] == train["category"].value_counts().idxmax()).mean()
  assert history_accuracy > 0.4
  # Less than the 3x of the independent dynamics: clickbait draws clicks whatever the history.
  assert history_accuracy > 2 * majority_accuracy


def test_recent_history_beats_popularity_at_next_item(default_dataset):
  clicks = _consecutive_clicks(*default_dataset)
  cut = clicks["timestamp"].quantile(0.8)
  train, test = clicks[clicks["timestamp"] < cut], clicks[clicks["timestamp"] >= cut]
  popular = set(train["item_id"].value_counts().index[:10])
  # Top 10 items clicked right after each item in the training period.
  co_clicked = train.groupby("previous_item")["item_id"].agg(
      lambda items: set(items.value_counts().index[:10]))
  popularity_hits = test["item_id"].isin(popular).mean()
  history_hits = np.mean([item in co_clicked.get(previous, popular)
                          for item, previous in zip(test["item_id"], test["previous_item"])])
  # Less than the 2x of the independent dynamics: clickbait is popular whatever the history.
  assert history_hits > 1.5 * popularity_hits


def test_generates_the_number_of_events_asked_for(tmp_path):
  # Its speed is bench/bench_simulator.py's to measure.
  dataset = generator.generate_dataset(tmp_path, n_events=100_000)
  assert dataset.interactions.read_text().count("\n") == 100_001


def test_ensure_dataset_generates_only_once(tmp_path):
  dataset = generator.ensure_dataset(tmp_path)
  mtimes = [path.stat().st_mtime_ns for path in (dataset.interactions, dataset.items)]
  again = generator.ensure_dataset(tmp_path)
  assert again == dataset
  assert [path.stat().st_mtime_ns for path in (again.interactions, again.items)] == mtimes
  assert sorted(path.name for path in tmp_path.iterdir()) == ["interactions.csv", "items.csv"]


def test_command_line(tmp_path, capsys):
  generator.main([str(tmp_path), "--seed", "3", "--users", "20", "--items", "15",
                  "--events", "300"])
  interactions = pd.read_csv(tmp_path / "interactions.csv")
  assert len(interactions) == 300 and interactions["user_id"].nunique() <= 20
  assert len(pd.read_csv(tmp_path / "items.csv")) == 15
  assert "interactions.csv" in capsys.readouterr().out


def test_users_who_stop_coming_back_before_n_events_are_an_error(tmp_path):
  with pytest.raises(ValueError, match="3 users stop coming back after .* n_events = 100000"):
    generator.generate_dataset(tmp_path, n_users=3, n_items=20, n_events=100_000)
  assert not list(tmp_path.iterdir())  # nothing half-written


def test_tiny_catalog_still_works(tmp_path):
  # Users who always return (independent dynamics): one user's sessions fill any n_events.
  dataset = generator.generate_dataset(tmp_path, n_users=1, n_items=1, n_events=50,
                                       n_categories=1, dynamics="independent")
  interactions = pd.read_csv(dataset.interactions)
  assert len(interactions) == 50 and set(interactions["item_id"]) == {"i00000"}
  assert (interactions["propensity"] == 1.0).all()  # a one-item slate is certain


@pytest.mark.parametrize("argument", ["n_users", "n_items", "n_events", "n_categories"])
def test_rejects_empty_sizes(tmp_path, argument):
  with pytest.raises(ValueError, match=argument):
    generator.generate_dataset(tmp_path, **{argument: 0})


def test_dynamics_are_chosen_by_name(tmp_path):
  satisfaction = _small(tmp_path / "a", seed=5)
  independent = generator.generate_dataset(tmp_path / "b", seed=5, n_users=50, n_items=40,
                                           n_events=2_000, dynamics="independent")
  assert satisfaction.interactions.read_bytes() != independent.interactions.read_bytes()
  with pytest.raises(ValueError, match="'moody'"):
    generator.generate_dataset(tmp_path / "c", dynamics="moody")


def test_users_for_keeps_the_default_ratio_of_events_to_users(tmp_path):
  assert generator.users_for(generator.DEFAULT_EVENTS) == generator.DEFAULT_USERS
  dataset = generator.generate_dataset(tmp_path, n_users=generator.users_for(5_000),
                                       n_items=40, n_events=5_000)
  assert len(pd.read_csv(dataset.interactions)) == 5_000
