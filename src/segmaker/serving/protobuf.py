"""SageMaker's RecordIO-protobuf answer, encoded by hand (no generated code, no protobuf runtime needed).

The message is `aialgs.data.Record` from SageMaker's record.proto:

    message Float32Tensor { repeated float values = 1 [packed]; repeated uint64 keys = 2 [packed];
                            repeated uint64 shape = 3 [packed]; }
    message Int32Tensor   { repeated int32 values = 1 [packed]; ... }
    message Value  { oneof value { Float32Tensor float32_tensor = 2; Float64Tensor float64_tensor = 3;
                                   Int32Tensor int32_tensor = 7; Bytes bytes = 9; } }
    message Record { map<string, Value> features = 1; ... }

A map field is a repeated entry message {key = 1; value = 2}. Packed float32 values are the array's
little-endian bytes, so a large probability tensor is one `tobytes()`, not a loop over values.
"""

import io
from typing import Dict

import numpy as np

from segmaker.data.recordio import write_record

_LENGTH_DELIMITED = 2
_RECORD_FEATURES = 1
_MAP_KEY, _MAP_VALUE = 1, 2
_VALUE_FLOAT32_TENSOR, _VALUE_INT32_TENSOR = 2, 7
_TENSOR_VALUES = 1


def varint(value: int) -> bytes:
    """Protobuf base-128 varint; negative numbers as their 64-bit two's complement (int32 semantics)."""
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field: tag, length, bytes."""
    return varint((number << 3) | _LENGTH_DELIMITED) + varint(len(payload)) + payload


def _float32_tensor(array: np.ndarray) -> bytes:
    return _field(_TENSOR_VALUES, np.ascontiguousarray(array, dtype="<f4").tobytes())


def _int32_tensor(array: np.ndarray) -> bytes:
    return _field(_TENSOR_VALUES, b"".join(varint(int(v)) for v in np.asarray(array).ravel()))


def _value(array: np.ndarray) -> bytes:
    if np.issubdtype(array.dtype, np.integer):
        return _field(_VALUE_INT32_TENSOR, _int32_tensor(array))
    return _field(_VALUE_FLOAT32_TENSOR, _float32_tensor(array))


def encode_record(features: Dict[str, np.ndarray]) -> bytes:
    """One serialized `Record` whose features map each name to a dense int32 or float32 tensor."""
    entries = [
        _field(_RECORD_FEATURES, _field(_MAP_KEY, name.encode("utf-8")) + _field(_MAP_VALUE, _value(array)))
        for name, array in features.items()
    ]
    return b"".join(entries)


def recordio_protobuf(features: Dict[str, np.ndarray]) -> bytes:
    """The features as one RecordIO-wrapped `Record`: what SageMaker's `read_records` reads."""
    buffer = io.BytesIO()
    write_record(buffer, encode_record(features))
    return buffer.getvalue()
