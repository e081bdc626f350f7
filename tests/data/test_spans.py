"""Each run's events become a new span only when they differ from the latest span."""
import tensorflow as tf

from components.data import spans


def _staged(tmp_path, records, name="events.tfrecord.gz"):
  staging = tmp_path / "staging"
  staging.mkdir(exist_ok=True)
  path = staging / name
  with tf.io.TFRecordWriter(str(path), options="GZIP") as writer:
    for record in records:
      writer.write(record)
  return path


def test_new_data_becomes_the_next_span_and_identical_data_reuses_the_latest(tmp_path):
  base = tmp_path / "spans"
  assert spans.publish(_staged(tmp_path, [b"a", b"b"]), base) == 1
  assert spans.publish(_staged(tmp_path, [b"a", b"b", b"c"]), base) == 2
  assert spans.publish(_staged(tmp_path, [b"a", b"b", b"c"]), base) == 2
  assert sorted(spans.spans(base)) == [1, 2]
  span_one = spans.spans(base)[1] / "events.tfrecord.gz"
  assert [bytes(r.numpy()) for r in tf.data.TFRecordDataset(str(span_one), "GZIP")] == [b"a", b"b"]
  # Nothing half-written is left beside the spans, and the staged file was consumed.
  assert sorted(path.name for path in base.iterdir()) == ["span-1", "span-2"]
  assert not list((tmp_path / "staging").iterdir())


def test_only_span_directories_count(tmp_path):
  base = tmp_path / "spans"
  (base / ".staging").mkdir(parents=True)
  (base / "span-x").mkdir()
  (base / "span-3").mkdir()
  assert list(spans.spans(base)) == [3]
  assert spans.spans(tmp_path / "absent") == {}
