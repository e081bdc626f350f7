"""Sessions, histories, transitions and the time split, in plain Python and on Beam runners."""
import glob
import os

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
import pytest
import tensorflow as tf

from components.data import sessions
from components.data import validation as data_validation
from components.data.config import GLOBAL_TIME_SPLIT
from components.data.config import SessionConfig
from components.data.sessions import Event
from schemas import contract


def _event(user, item, timestamp, event="click", **optional):
  return Event(user, item, timestamp, event, 0.0, optional.pop("price", 10.0), "books", **optional)


def _serialized(event: Event) -> bytes:
  """The event as ingestion writes it: optional fields omitted when None."""
  feature = {}
  for name, value in event._asdict().items():
    if value is None:
      continue
    if isinstance(value, str):
      feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[value.encode()]))
    elif isinstance(value, int):
      feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
    else:
      feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=[value]))
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _parse(serialized: bytes):
  feature = tf.train.Example.FromString(serialized).features.feature
  parsed = {}
  for name, value in feature.items():
    kind = value.WhichOneof("kind")
    values = list(getattr(value, kind).value)
    if kind == "bytes_list":
      values = [v.decode() for v in values]
    parsed[name] = values if name in (contract.HISTORY, contract.NEXT_HISTORY) else values[0]
  return parsed


def _records(user_events, config=SessionConfig()):
  """{kind: [parsed record, ...]} of one user's timeline."""
  out = {sessions.EXAMPLES: [], sessions.TRANSITIONS: []}
  for kind, _, serialized, _, _ in sessions.user_records(user_events[0].user_id, user_events,
                                                          config):
    out[kind].append(_parse(serialized))
  return out


def test_event_round_trips_through_the_ingested_example_format():
  event = _event("u1", "i1", 1_700_000_000, "impression", session_id="s1", position=3,
                 propensity=0.25, title="Dune")
  assert sessions.event_from_example(_serialized(event)) == event
  bare = _event("u1", "i1", 1_700_000_000)
  assert sessions.event_from_example(_serialized(bare)) == bare


def test_timeline_drops_exact_duplicates_and_orders_by_time_then_position():
  a = _event("u", "a", 100, position=1)
  b = _event("u", "b", 100, position=0)
  c = _event("u", "c", 50)
  assert sessions.timeline([a, b, a, c, b]) == [c, b, a]
  # Same user/item/time but another outcome is a different event, not a duplicate.
  assert len(sessions.timeline([a, a._replace(event="purchase")])) == 2


def test_sessions_are_cut_at_gaps_longer_than_the_threshold():
  events = [_event("u", "a", 0), _event("u", "b", 1800), _event("u", "c", 3601),
            _event("u", "d", 3700)]
  cut = sessions.split_sessions(events, gap_seconds=1800)
  assert [[e.item_id for e in session] for session in cut] == [["a", "b"], ["c", "d"]]


def test_history_is_earlier_engagements_across_sessions_and_excludes_the_own_slate():
  slate_time, later = 1_000, 10_000  # `later` starts a new session
  events = [
      _event("u", "x", 500, "purchase", price=20.0),
      _event("u", "a", slate_time, "click", position=0),
      _event("u", "b", slate_time, "impression", position=1),
      _event("u", "c", slate_time, "click", position=2, title="Ball"),
      _event("u", "d", later, "impression", position=0),
  ]
  records = _records(events, SessionConfig(session_gap_seconds=1800))

  by_item = {r[contract.ITEM_ID]: r for r in records[sessions.TRANSITIONS]}
  # Every item of one slate sees the same state: what happened before the slate.
  for item in "abc":
    assert by_item[item][contract.HISTORY] == ["x"]
    assert by_item[item][contract.NEXT_HISTORY] == ["x", "a", "c"]
  # History carries over to the next session; the impression adds nothing to it.
  assert by_item["d"][contract.HISTORY] == ["x", "a", "c"]
  assert by_item["d"][contract.NEXT_HISTORY] == ["x", "a", "c"]
  assert [by_item[i][contract.SESSION] for i in "xabcd"] == ["u/0"] * 4 + ["u/1"]
  # done marks each session's last step; returned those of them after which the user has a
  # later session (x's slate ends session 0 and u comes back; d's session is their last).
  assert [by_item[i][contract.DONE] for i in "xabcd"] == [0, 1, 1, 1, 1]
  assert [by_item[i][contract.RETURNED] for i in "xabcd"] == [0, 1, 1, 1, 0]
  # The slate of a, b and c had two clicks, which share the state it leads to.
  assert [by_item[i][contract.STEP_ENGAGEMENTS] for i in "xabcd"] == [1, 2, 2, 2, 0]

  # Rewards: a purchase is a click with revenue; an impression earns nothing.
  assert (by_item["x"][contract.CLICK], by_item["x"][contract.PURCHASE],
          by_item["x"][contract.REVENUE]) == (1, 1, 20.0)
  assert (by_item["b"][contract.CLICK], by_item["b"][contract.PURCHASE],
          by_item["b"][contract.REVENUE]) == (0, 0, 0.0)
  assert by_item["b"][contract.POSITION] == 1
  assert contract.PROPENSITY not in by_item["b"]
  # The title travels with its transition; an untitled item's transition has none.
  assert by_item["c"][contract.TITLE] == "Ball"
  assert contract.TITLE not in by_item["b"]

  # Retrieval examples are the engagements only.
  assert sorted(r[contract.ITEM_ID] for r in records[sessions.EXAMPLES]) == ["a", "c", "x"]


def test_history_keeps_only_the_most_recent_items():
  events = [_event("u", f"i{n}", n * 60) for n in range(6)]
  records = _records(events, SessionConfig(history_length=3))
  last = max(records[sessions.EXAMPLES], key=lambda r: r[contract.TIMESTAMP])
  assert last[contract.HISTORY] == ["i2", "i3", "i4"]


@pytest.mark.parametrize("timestamps, events, cutoff", [
    # 10 engagements, a fifth held out: the last two.
    (range(10), ["click"] * 10, 8),
    # Impressions are not engagements: the fraction counts engagements only.
    (range(6), ["click", "impression", "click", "click", "impression", "click"], 5),
    # At least one engagement is held out...
    (range(3), ["click"] * 3, 2),
    # ... with the ones of its second, and only when an earlier engagement remains.
    ([0, 1, 1, 1], ["click"] * 4, 1),
    ([4, 4, 4], ["click"] * 3, sessions.NO_EVAL),
    ([0], ["click"], sessions.NO_EVAL),
    ([0, 1], ["click", "impression"], sessions.NO_EVAL),
])
def test_user_cutoff_holds_out_the_last_engagements_and_keeps_earlier_history(timestamps,
                                                                              events, cutoff):
  timeline = [_event("u", f"i{n}", t, event) for n, (t, event) in enumerate(zip(timestamps,
                                                                                events))]
  assert sessions.user_cutoff(timeline, eval_fraction=0.2) == cutoff


def test_per_user_split_holds_out_each_users_last_engagements_without_leaks(tmp_path):
  events = _timelines()
  # A user with a single engagement, and one whose engagements share one second: all train.
  events += [_event("single", "i1", 1_700_000_000)]
  events += [_event("batch", f"i{n}", 1_700_000_000) for n in range(5)]
  result = _run(tmp_path, events, ["--runner=DirectRunner", "--direct_running_mode=in_memory"],
                SessionConfig(eval_fraction=0.2))
  for kind in (sessions.EXAMPLES, sessions.TRANSITIONS):
    train = [_parse(r) for r in result[kind, "train"]]
    evaluation = [_parse(r) for r in result[kind, "eval"]]
    eval_users = {r[contract.USER_ID] for r in evaluation}
    assert eval_users == {f"u{user}" for user in range(30)}
    for user in eval_users:
      user_train = [r[contract.TIMESTAMP] for r in train if r[contract.USER_ID] == user]
      user_eval = [r for r in evaluation if r[contract.USER_ID] == user]
      # No train record of a user after one of their eval records, and earlier history.
      assert max(user_train) < min(r[contract.TIMESTAMP] for r in user_eval)
      assert all(r[contract.HISTORY] for r in user_eval)
  # Each user has 26 distinct clicks (and impressions), and round(0.2 * 26) = 5 are held out.
  eval_examples = [_parse(r) for r in result[sessions.EXAMPLES, "eval"]]
  assert len(eval_examples) == 30 * 5 == result["counts"][sessions.EVAL_EXAMPLES]
  train_users = {_parse(r)[contract.USER_ID] for r in result[sessions.EXAMPLES, "train"]}
  assert {"single", "batch"} <= train_users


def test_time_cutoff_is_the_quantile_and_refuses_a_degenerate_split():
  quantiles = list(range(0, 101))
  assert sessions.time_cutoff(quantiles, eval_fraction=0.2) == 80
  with pytest.raises(ValueError, match="cannot split by time"):
    sessions.time_cutoff([5] * 101, eval_fraction=0.2)


@pytest.mark.parametrize("config", [
    dict(session_gap_seconds=0), dict(history_length=0), dict(eval_fraction=1.0)])
def test_config_rejects_nonsense(config):
  with pytest.raises(ValueError):
    SessionConfig(**config)


def _timelines(n_users=30, n_events=40):
  """Users clicking one item a minute, with some rows logged twice."""
  events = []
  for user in range(n_users):
    for n in range(n_events):
      events.append(_event(f"u{user}", f"i{(user + n) % 17}", 1_700_000_000 + user * 7 + n * 60,
                           "click" if n % 3 else "impression", position=n % 5,
                           propensity=0.1))
  return events + events[::10]


def _run(tmp_path, events, runner_args, config=SessionConfig()):
  source = tmp_path / "events.tfrecord.gz"
  with tf.io.TFRecordWriter(str(source), options="GZIP") as writer:
    for event in events:
      writer.write(_serialized(event))
  out = {kind: str(tmp_path / runner_args[-1].replace("=", "_") / kind)
         for kind in (sessions.EXAMPLES, sessions.TRANSITIONS)}
  with beam.Pipeline(options=PipelineOptions(runner_args)) as pipeline:
    sessions.build_sessions(pipeline, str(source), out[sessions.EXAMPLES],
                            out[sessions.TRANSITIONS], config)
  result = {"counts": {counter.key.metric.name: counter.committed
                       for counter in pipeline.result.metrics().query()["counters"]}}
  for kind, uri in out.items():
    for split in sessions.SPLITS:
      files = glob.glob(os.path.join(sessions.split_dir(uri, split), "*.gz"))
      assert files, f"no {kind} {split} files"
      result[kind, split] = sorted(
          bytes(record.numpy())
          for record in tf.data.TFRecordDataset(files, compression_type="GZIP"))
  return result


def test_global_time_split_is_by_time_with_past_history_in_eval(tmp_path):
  events = _timelines()
  result = _run(tmp_path, events, ["--runner=DirectRunner", "--direct_running_mode=in_memory"],
                SessionConfig(eval_split=GLOBAL_TIME_SPLIT, eval_fraction=0.2))

  unique = set(events)
  n_transitions = len(result[sessions.TRANSITIONS, "train"]) + len(
      result[sessions.TRANSITIONS, "eval"])
  assert n_transitions == len(unique)  # every distinct event once; duplicates dropped
  assert len(result[sessions.EXAMPLES, "train"]) + len(result[sessions.EXAMPLES, "eval"]) == sum(
      e.engaged for e in unique)

  train = [_parse(r) for r in result[sessions.TRANSITIONS, "train"]]
  evaluation = [_parse(r) for r in result[sessions.TRANSITIONS, "eval"]]
  assert max(r[contract.TIMESTAMP] for r in train) < min(
      r[contract.TIMESTAMP] for r in evaluation)
  assert len(evaluation) / n_transitions == pytest.approx(0.2, abs=0.03)
  # Eval records see the users' earlier history, which happened in the train period.
  first_eval = min(evaluation, key=lambda r: r[contract.TIMESTAMP])
  assert first_eval[contract.HISTORY]
  eval_examples = [_parse(r) for r in result[sessions.EXAMPLES, "eval"]]
  assert result["counts"][sessions.EVALUABLE_EVAL_EXAMPLES] == sum(
      r[contract.ITEM_ID] not in r[contract.HISTORY] for r in eval_examples) > 0


def test_multi_process_runner_gives_the_same_records(tmp_path):
  events = _timelines(n_users=12, n_events=20)
  in_memory = _run(tmp_path, events,
                   ["--runner=DirectRunner", "--direct_running_mode=in_memory"])
  multi_process = _run(tmp_path, events, [
      "--runner=DirectRunner", "--direct_num_workers=2",
      "--direct_running_mode=multi_processing"])
  assert multi_process == in_memory


def test_the_split_counts_say_what_there_is_to_train_and_evaluate_on(tmp_path):
  # Each user clicks i0..i9 twice over: the eval period's clicks repeat items of their history.
  events = [_event(f"u{user}", f"i{step % 10}", 1_700_000_000 + 3600 * step)
            for user in range(5) for step in range(20)]
  result = _run(tmp_path, events, ["--runner=DirectRunner", "--direct_running_mode=in_memory"])
  counts = result["counts"]
  evaluation = [_parse(r) for r in result[sessions.EXAMPLES, "eval"]]
  assert counts[sessions.TRAIN_EXAMPLES] == len(result[sessions.EXAMPLES, "train"]) > 0
  assert counts[sessions.EVAL_EXAMPLES] == len(evaluation) > 0
  assert counts.get(sessions.EVALUABLE_EVAL_EXAMPLES, 0) == sum(
      r[contract.ITEM_ID] not in r[contract.HISTORY] for r in evaluation) == 0
  with pytest.raises(data_validation.DegenerateSplitError, match="nothing to evaluate"):
    data_validation.check_split_counts(counts, SessionConfig(eval_fraction=0.2))
