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
from typing import Dict, Iterator

import numpy as np

from segmaker.data.recordio import CFLAG_WHOLE, HEADER, MAGIC, MAX_PART_LENGTH, write_record

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


def _header(number: int, length: int) -> bytes:
    """Tag and length of a length-delimited field whose payload has `length` bytes."""
    return varint((number << 3) | _LENGTH_DELIMITED) + varint(length)


class ProbabilityAnswer:
    """The RecordIO-wrapped `Record` of C x H x W probabilities, laid out in ONE buffer allocated up front.

    `values` is a float32 C x H x W view into that buffer where the probabilities are written in place (the
    view may be unaligned: numpy handles that); `chunks()` yields the bytes to send. So the answer costs one
    copy of its values, however large, plus what the writer needs per class group.
    """

    CHUNK_BYTES = 1 << 20  # gunicorn sends only `bytes`: the buffer goes out in copies of this size

    def __init__(self, num_classes: int, height: int, width: int):
        count = num_classes * height * width
        float_bytes = 4 * count
        tensor_prefix = _header(_TENSOR_VALUES, float_bytes)
        value_prefix = _header(_VALUE_FLOAT32_TENSOR, len(tensor_prefix) + float_bytes)
        value_length = len(value_prefix) + len(tensor_prefix) + float_bytes
        key = _field(_MAP_KEY, b"target")
        map_value_prefix = _header(_MAP_VALUE, value_length)
        entry_prefix = _header(_RECORD_FEATURES, len(key) + len(map_value_prefix) + value_length)
        before = entry_prefix + key + map_value_prefix + value_prefix + tensor_prefix
        after = encode_record({"shape": np.array([1, num_classes, height, width], dtype=np.int32)})
        payload_length = len(before) + float_bytes + len(after)
        if payload_length > MAX_PART_LENGTH:
            raise ValueError(f"{count} probabilities do not fit in one RecordIO record")
        offset = HEADER.size + len(before)
        self.buffer = bytearray(HEADER.size + payload_length + (-payload_length) % 4)
        self.buffer[: offset] = HEADER.pack(MAGIC, (CFLAG_WHOLE << 29) | payload_length) + before
        self.buffer[offset + float_bytes: offset + float_bytes + len(after)] = after
        self.values = np.frombuffer(self.buffer, dtype="<f4", count=count, offset=offset).reshape(
            num_classes, height, width)

    def __len__(self) -> int:
        return len(self.buffer)

    def chunks(self) -> Iterator[bytes]:
        view = memoryview(self.buffer)
        for start in range(0, len(view), self.CHUNK_BYTES):
            yield bytes(view[start: start + self.CHUNK_BYTES])
