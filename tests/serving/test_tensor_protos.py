"""The request path's TensorProto conversions give tf.make_ndarray's and tf.make_tensor_proto's
results exactly, including the edge cases they hand back to TensorFlow."""
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2
from tensorflow.core.framework import types_pb2

from serving import tensor_protos

ARRAYS = {
    "ids": np.array([b"u1", b"", "é".encode()], dtype=object),
    "histories": np.array([[b"i1", b"i2", b""], [b"i3", b"", b""]], dtype=object),
    "no history": np.empty((2, 0), dtype=object),
    "one id": np.array([b"u1"], dtype=object),
    "string scalar": np.array(b"u1", dtype=object),
    "fixed-width bytes": np.array([b"ab", b"a\x00", b""]),
    "text": np.array(["u1", "é"], dtype=object),
    "numpy text": np.array(["u1", "é"]),
    "mixed text and bytes": np.array([b"u1", "u2"], dtype=object),
    "scores": np.random.default_rng(0).normal(size=(2, 10)).astype(np.float32),
    "transposed scores": np.arange(12, dtype=np.float32).reshape(3, 4).T,
    "one score": np.array([[0.5]], dtype=np.float32),
    "float scalar": np.array(1.5, dtype=np.float32),
    "no scores": np.empty((0, 10), dtype=np.float32),
    "big-endian floats": np.arange(3, dtype=">f4"),
    "doubles": np.array([1.0, np.nan, -np.inf]),
    "times": np.array([1_700_000_000, 0, -1], dtype=np.int64),
    "one time": np.array([1_700_000_000], dtype=np.int64),
    "int32": np.array([[1, 2], [3, 4]], dtype=np.int32),
    "bools": np.array([True, False]),
    "halves": np.array([1.0, 2.0], dtype=np.float16),
}


@pytest.mark.parametrize("name", sorted(ARRAYS))
def test_fill_proto_writes_what_make_tensor_proto_writes(name):
  proto = tensor_pb2.TensorProto()
  tensor_protos.fill_proto(proto, ARRAYS[name])
  expected = tf.make_tensor_proto(ARRAYS[name])
  assert proto == expected
  assert proto.SerializeToString(deterministic=True) == expected.SerializeToString(
      deterministic=True)


@pytest.mark.parametrize("name", sorted(ARRAYS))
def test_to_ndarray_reads_what_make_ndarray_reads(name):
  proto = tf.make_tensor_proto(ARRAYS[name])
  _assert_same_array(tensor_protos.to_ndarray(proto), tf.make_ndarray(proto))


def _assert_same_array(actual: np.ndarray, expected: np.ndarray) -> None:
  assert actual.dtype == expected.dtype
  assert actual.shape == expected.shape
  np.testing.assert_array_equal(actual, expected)


def _proto(dtype, shape, **values) -> tensor_pb2.TensorProto:
  proto = tensor_pb2.TensorProto(dtype=dtype, **values)
  for size in shape:
    proto.tensor_shape.dim.add(size=size)
  return proto


@pytest.mark.parametrize("proto", [
    # As clients that fill the fields themselves send them: typed values rather than bytes.
    _proto(types_pb2.DT_INT64, [3], int64_val=[1, 2, 3]),
    _proto(types_pb2.DT_FLOAT, [2, 2], float_val=[0.25, 1.5, -2.0, 3.0]),
    _proto(types_pb2.DT_INT32, [2], int_val=[7, 8]),
    _proto(types_pb2.DT_BOOL, [2], bool_val=[True, False]),
    _proto(types_pb2.DT_INT64, [2], tensor_content=np.array([5, 6], np.int64).tobytes()),
    # Fewer values than the shape holds: TensorFlow repeats the last one.
    _proto(types_pb2.DT_STRING, [1, 3], string_val=[b"i1"]),
    _proto(types_pb2.DT_INT64, [4], int64_val=[9]),
    _proto(types_pb2.DT_STRING, [2], string_val=[]),
])
def test_to_ndarray_reads_hand_made_protos_as_make_ndarray(proto):
  _assert_same_array(tensor_protos.to_ndarray(proto), tf.make_ndarray(proto))


@pytest.mark.parametrize("proto", [
    _proto(types_pb2.DT_STRING, [1], string_val=[b"a", b"b"]),
    _proto(types_pb2.DT_INT64, [3], tensor_content=b"\x00" * 5),
    _proto(types_pb2.DT_FLOAT, [1], float_val=[1.0, 2.0]),
])
def test_to_ndarray_refuses_what_make_ndarray_refuses(proto):
  with pytest.raises(ValueError):
    tf.make_ndarray(proto)
  with pytest.raises(ValueError):
    tensor_protos.to_ndarray(proto)


def test_to_ndarray_returns_a_writable_copy():
  proto = tf.make_tensor_proto(np.array([1.0, 2.0], np.float32))
  array = tensor_protos.to_ndarray(proto)
  array[0] = 5.0
  assert tf.make_ndarray(proto)[0] == 1.0
