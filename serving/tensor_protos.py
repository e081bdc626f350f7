"""TensorProto <-> numpy for the request path, without tf.make_ndarray / tf.make_tensor_proto.

Those two are general (any Python value, every dtype, broadcasting) and cost ~0.1-0.2 ms per
tensor in Python-level checks: more than the rest of the server's per-request work together at
batch 1. What a Predict request carries and what the model answers is narrower: ids as strings,
times as int64, scores as float32, each with exactly as many values as its shape says. These
functions read and write those TensorProto fields directly (`string_val`, `tensor_content` bytes,
the typed `*_val` fields) and leave every other case to TensorFlow's functions, so that their
results are those of tf.make_ndarray / tf.make_tensor_proto, value for value and byte for byte
(tests/serving/test_tensor_protos.py compares them).
"""
import math

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2
from tensorflow.core.framework import types_pb2

# The repeated field a TensorProto holds its values in when `tensor_content` is empty, for the
# dtypes requests carry (tf.make_tensor_proto writes a single value there).
_VALUE_FIELDS = {types_pb2.DT_FLOAT: "float_val", types_pb2.DT_DOUBLE: "double_val",
                 types_pb2.DT_INT32: "int_val", types_pb2.DT_INT64: "int64_val",
                 types_pb2.DT_BOOL: "bool_val"}
# The dtypes tf.make_tensor_proto writes as raw `tensor_content` bytes when a tensor has more than
# one value (tensor_util._TENSOR_CONTENT_TYPES, restricted to those the fast path handles).
_CONTENT_DTYPES = {np.dtype(np.float32): types_pb2.DT_FLOAT,
                   np.dtype(np.float64): types_pb2.DT_DOUBLE,
                   np.dtype(np.int32): types_pb2.DT_INT32,
                   np.dtype(np.int64): types_pb2.DT_INT64}


def _set_shape(proto: tensor_pb2.TensorProto, shape) -> None:
  proto.tensor_shape.SetInParent()  # present even for a scalar, as TensorFlow writes it
  for size in shape:
    proto.tensor_shape.dim.add(size=size)


def to_ndarray(proto: tensor_pb2.TensorProto) -> np.ndarray:
  """The proto's values as an array of its shape, as tf.make_ndarray returns them.

  Raises ValueError or TypeError, as tf.make_ndarray does, for a proto it cannot read.
  """
  shape = [dim.size for dim in proto.tensor_shape.dim]
  size = math.prod(shape)
  if proto.tensor_content:
    if proto.dtype in _VALUE_FIELDS:
      dtype = np.dtype(tf.dtypes.as_dtype(proto.dtype).as_numpy_dtype)
      if len(proto.tensor_content) == size * dtype.itemsize:
        # frombuffer's array is read-only, over the request's bytes: the copy makes it ours.
        return np.frombuffer(proto.tensor_content, dtype=dtype).reshape(shape).copy()
  elif proto.dtype == types_pb2.DT_STRING:
    values = list(proto.string_val)
    if len(values) == size:
      return np.array(values, dtype=object).reshape(shape)
  elif proto.dtype in _VALUE_FIELDS:
    values = list(getattr(proto, _VALUE_FIELDS[proto.dtype]))
    if len(values) == size:
      return np.array(values, dtype=tf.dtypes.as_dtype(proto.dtype).as_numpy_dtype).reshape(shape)
  # Fewer values than the shape (TF pads with the last one), too many, other dtypes: TF's rules.
  return tf.make_ndarray(proto)


def fill_proto(proto: tensor_pb2.TensorProto, array: np.ndarray) -> None:
  """Writes `array` into the empty `proto` as tf.make_tensor_proto(array) would."""
  if array.dtype.kind in "OS":
    values = array.ravel().tolist()
    if all(type(value) is bytes for value in values):  # pylint: disable=unidiomatic-typecheck
      proto.dtype = types_pb2.DT_STRING
      _set_shape(proto, array.shape)
      proto.string_val.extend(values)
      return
  elif array.dtype in _CONTENT_DTYPES and array.size > 1 and array.nbytes < (1 << 31):
    proto.dtype = _CONTENT_DTYPES[array.dtype]
    _set_shape(proto, array.shape)
    proto.tensor_content = array.tobytes()
    return
  # Text to encode, single values, other dtypes, over 2 GB: rare here, TF's function and errors.
  proto.CopyFrom(tf.make_tensor_proto(array))
