"""`recsys ingest-logs` and `recsys run --latest-span`: the command line around the feedback loop."""
from click.testing import CliRunner
import pandas as pd

from components.data import ingest
from components.data import spans
from pipeline import cli
from schemas import contract
from tests.data import test_serving_logs as logs


def _home_with_a_span(tmp_path, users=12, items=10):
  """A home whose latest span holds enough engagements to train on."""
  home = tmp_path / "home"
  input_base = home / "data" / "spans"
  events = pd.DataFrame(
      [(f"u{user}", f"i{item}", 1_700_000_000 + 60 * (user * items + item), "click", 0.0, 5.0,
        "books") for user in range(users) for item in range(items)],
      columns=list(contract.REQUIRED_EVENT_COLUMNS))
  ingest.write_examples(events, input_base / spans.STAGING_DIR / ingest.EXAMPLES_FILE)
  spans.publish(input_base / spans.STAGING_DIR / ingest.EXAMPLES_FILE, input_base)
  return home, input_base, len(events)


def test_ingest_logs_publishes_a_span_and_says_what_it_joined(tmp_path):
  home, input_base, previous = _home_with_a_span(tmp_path)
  predictions = logs.write_logs(tmp_path / "logs", logs.LOGS)
  feedback = logs.write_feedback(tmp_path / "feedback.csv",
                                 ["r1/0,i2,click,", "r2,i7,purchase,9.5", "gone,i1,click,"])

  result = CliRunner().invoke(cli.main, ["ingest-logs", "--predictions", str(predictions),
                                         "--feedback", str(feedback), "--home", str(home)])

  assert result.exit_code == 0, result.output
  assert result.output == (
      "Joined 3 served slates with 2 engagements; 1 feedback rows name requests the log does "
      "not hold (not sampled) and were skipped: span 2 of "
      f"{input_base.resolve()} holds {previous + 9} events; `recsys run --latest-span` trains "
      "on it\n")
  assert sorted(spans.spans(input_base)) == [1, 2]


def test_ingest_logs_refuses_bad_feedback_in_one_line_and_publishes_nothing(tmp_path):
  home, input_base, _ = _home_with_a_span(tmp_path)
  predictions = logs.write_logs(tmp_path / "logs", logs.LOGS)
  feedback = logs.write_feedback(tmp_path / "feedback.csv", ["r1/0,i2,click,", "r2,i7,like,"])

  result = CliRunner().invoke(cli.main, ["ingest-logs", "--predictions", str(predictions),
                                         "--feedback", str(feedback), "--home", str(home)])

  assert result.exit_code == 1
  assert result.output == ("Error: feedback.csv line 3: field 'event' has value 'like', "
                           "expected click or purchase\n")
  assert sorted(spans.spans(input_base)) == [1]


def test_ingest_logs_refuses_data_too_small_to_train_on(tmp_path):
  home, input_base, _ = _home_with_a_span(tmp_path, users=3, items=3)
  predictions = logs.write_logs(tmp_path / "logs", logs.LOGS)
  feedback = logs.write_feedback(tmp_path / "feedback.csv", ["r1/0,i2,click,"])

  result = CliRunner().invoke(cli.main, ["ingest-logs", "--predictions", str(predictions),
                                         "--feedback", str(feedback), "--home", str(home)])

  assert result.exit_code == 1
  assert "training and evaluating a recommender needs at least 10 users" in result.output
  assert sorted(spans.spans(input_base)) == [1]


def test_run_on_the_latest_span_needs_one_and_no_files(tmp_path):
  result = CliRunner().invoke(cli.main, ["run", "--latest-span", "--home", str(tmp_path)])
  assert result.exit_code == 1
  assert "holds no span yet" in result.output
  events = tmp_path / "events.csv"
  events.write_text("user_id,item_id,timestamp\nu1,i1,1\n")
  result = CliRunner().invoke(cli.main, ["run", "--latest-span", "--interactions", str(events),
                                         "--home", str(tmp_path)])
  assert result.exit_code == 1
  assert "give it no --interactions" in result.output
