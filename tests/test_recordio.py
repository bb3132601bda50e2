"""RecordIO reader and writer, checked against an independent struct-based encoder written here."""

import io
import struct
from typing import List, Optional, Sequence, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segmaker.data.recordio import MAGIC, read_records, write_record
from segmaker.errors import DataError


# --- an independent encoder: the wire format spelled out again, sharing no code with the module ---------
def encode_part(cflag: int, payload: bytes, magic: int = 0xCED7230A) -> bytes:
    header = struct.pack("<I", magic) + struct.pack("<I", (cflag << 29) | len(payload))
    return header + payload + b"\x00" * ((4 - len(payload) % 4) % 4)


def encode_record(payload: bytes, part_sizes: Optional[Sequence[int]] = None) -> bytes:
    """Whole record, or split at the given part sizes (which must add up to len(payload))."""
    if not part_sizes:
        return encode_part(0, payload)
    assert sum(part_sizes) == len(payload) and len(part_sizes) >= 2
    out, start = b"", 0
    for i, size in enumerate(part_sizes):
        cflag = 1 if i == 0 else 3 if i == len(part_sizes) - 1 else 2
        out += encode_part(cflag, payload[start : start + size])
        start += size
    return out


class TrickleReader(io.RawIOBase):
    """A FIFO-like stream: every read returns at most `step` bytes (short reads), and it cannot seek."""

    def __init__(self, data: bytes, step: int):
        self._data, self._pos, self._step = data, 0, step

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = min(self._step, len(buffer), len(self._data) - self._pos)
        buffer[:count] = self._data[self._pos : self._pos + count]
        self._pos += count
        return count


def payloads_of(data: bytes, **kwargs) -> List[bytes]:
    return [r.payload for r in read_records(io.BytesIO(data), **kwargs)]


# --- round trips --------------------------------------------------------------------------------------
@pytest.mark.parametrize("length", [0, 1, 2, 3, 4, 5, 7, 8, 1000, 1001])
def test_whole_records_of_every_padding_length_are_read_back(length):
    payload = bytes(range(256)) * 4
    data = encode_record(payload[:length]) + encode_record(b"next")
    assert payloads_of(data) == [payload[:length], b"next"]


def test_split_records_are_joined_by_plain_concatenation():
    first = b"A" * 5 + b"B" * 6 + b"C" * 3  # parts of 5, 6, 3 bytes: none a multiple of 4
    second = b"0123456789ab"  # parts of 4 and 8 bytes: already aligned
    data = encode_record(first, [5, 6, 3]) + encode_record(b"whole") + encode_record(second, [4, 8])
    records = list(read_records(io.BytesIO(data)))
    assert [r.payload for r in records] == [first, b"whole", second]
    assert [r.index for r in records] == [0, 1, 2]
    first_len = len(encode_record(first, [5, 6, 3]))
    assert [r.offset for r in records] == [0, first_len, first_len + len(encode_record(b"whole"))]


def test_payload_holding_the_magic_number_is_not_mistaken_for_a_header():
    payload = struct.pack("<I", MAGIC) * 3 + b"xy"
    assert payloads_of(encode_record(payload)) == [payload]


@pytest.mark.parametrize("chunk_size", [8, 9, 16, 100, 1 << 20])
@pytest.mark.parametrize("step", [1, 3, 64])
def test_short_reads_and_small_chunks_give_the_same_records(chunk_size, step):
    payloads = [b"x" * 37, b"", b"y" * 300, b"z" * 9]
    data = encode_record(payloads[0]) + encode_record(payloads[1])
    data += encode_record(payloads[2], [100, 150, 50]) + encode_record(payloads[3])
    records = read_records(TrickleReader(data, step), chunk_size=chunk_size)
    assert [r.payload for r in records] == payloads


def test_works_with_a_stream_that_only_has_read():
    class ReadOnly:
        def __init__(self, data):
            self._inner = io.BytesIO(data)

        def read(self, n):
            return self._inner.read(min(n, 5))

    assert [r.payload for r in read_records(ReadOnly(encode_record(b"hello world")))] == [b"hello world"]


record_lists = st.lists(
    st.tuples(st.binary(max_size=80), st.lists(st.integers(1, 30), max_size=4)), max_size=8
)


def _split_sizes(payload: bytes, cuts: List[int]) -> Optional[List[int]]:
    """Turn arbitrary cut lengths into part sizes that add up to the payload (None: keep it whole)."""
    sizes, left = [], len(payload)
    for cut in cuts:
        if cut >= left:
            break
        sizes.append(cut)
        left -= cut
    return sizes + [left] if sizes else None


@settings(max_examples=150, deadline=None)
@given(records=record_lists, chunk_size=st.integers(8, 64), step=st.integers(1, 50))
def test_reader_reads_what_the_independent_encoder_wrote(
    records: List[Tuple[bytes, List[int]]], chunk_size, step
):
    data = b"".join(encode_record(p, _split_sizes(p, cuts)) for p, cuts in records)
    got = [r.payload for r in read_records(TrickleReader(data, step), chunk_size=chunk_size)]
    assert got == [p for p, _ in records]


@settings(max_examples=150, deadline=None)
@given(
    payloads=st.lists(st.binary(max_size=100), max_size=6), max_part=st.one_of(st.none(), st.integers(1, 40))
)
def test_writer_output_matches_the_independent_encoder(payloads, max_part):
    out = io.BytesIO()
    sizes = [write_record(out, p, max_part=max_part) for p in payloads]
    expected = b""
    for p in payloads:
        if max_part is None or len(p) <= max_part:
            expected += encode_record(p)
        else:
            whole, rest = divmod(len(p), max_part)
            expected += encode_record(p, [max_part] * whole + ([rest] if rest else []))
    assert out.getvalue() == expected
    assert sum(sizes) == len(expected)
    assert payloads_of(out.getvalue()) == payloads


def test_writer_rejects_a_part_size_below_one():
    with pytest.raises(ValueError, match="max_part"):
        write_record(io.BytesIO(), b"abc", max_part=0)


# --- every error names the record index and the byte offset -------------------------------------------
TWO_GOOD = encode_record(b"good") + encode_record(b"also good!")  # 12 + 20 bytes
OFFSET_AFTER = len(TWO_GOOD)


def _read_error(data: bytes) -> str:
    with pytest.raises(DataError) as caught:
        list(read_records(io.BytesIO(data), source="train_0"))
    return str(caught.value)


def test_bad_magic_names_record_and_offset():
    message = _read_error(TWO_GOOD + encode_part(0, b"abcd", magic=0x12345678))
    assert "train_0" in message and "record 2" in message
    assert f"byte offset {OFFSET_AFTER}" in message and "0x12345678" in message


@pytest.mark.parametrize("cut", [1, 4, 7])
def test_truncated_header(cut):
    message = _read_error(TWO_GOOD + encode_part(0, b"abcd")[:cut])
    assert f"record 2 at byte offset {OFFSET_AFTER}" in message
    assert f"header ({cut} of 8 bytes)" in message


def test_truncated_payload():
    message = _read_error(TWO_GOOD + encode_part(0, b"0123456789")[: 8 + 6])
    assert f"record 2 at byte offset {OFFSET_AFTER}" in message and "6 of 10 bytes" in message


def test_truncated_padding():
    message = _read_error(TWO_GOOD + encode_part(0, b"12345")[: 8 + 5 + 1])
    assert f"record 2 at byte offset {OFFSET_AFTER}" in message and "padding" in message


def test_truncated_large_payload_read_past_the_buffer():
    data = TWO_GOOD + encode_part(0, b"q" * 5000)[:3000]
    with pytest.raises(DataError, match=r"record 2 at byte offset 32: .*2992 of 5000 bytes"):
        list(read_records(io.BytesIO(data), chunk_size=64))


@pytest.mark.parametrize("cflag", [2, 3])
def test_middle_or_last_part_without_a_first_part(cflag):
    message = _read_error(TWO_GOOD + encode_part(cflag, b"part"))
    assert f"record 2 at byte offset {OFFSET_AFTER}" in message and "without its first part" in message


@pytest.mark.parametrize("cflag", [0, 1])
def test_whole_record_or_new_first_part_inside_a_split_record(cflag):
    message = _read_error(TWO_GOOD + encode_part(1, b"half") + encode_part(cflag, b"oops"))
    assert f"record 2 at byte offset {OFFSET_AFTER + 12}" in message
    assert f"started at byte offset {OFFSET_AFTER}" in message


def test_stream_ending_inside_a_split_record():
    message = _read_error(TWO_GOOD + encode_part(1, b"half") + encode_part(2, b"more"))
    assert f"record 2 at byte offset {OFFSET_AFTER}" in message and "last part" in message


def test_invalid_cflag():
    message = _read_error(TWO_GOOD + encode_part(5, b"abcd"))
    assert "invalid cflag 5" in message and "record 2" in message


def test_records_before_an_error_are_still_delivered():
    records = read_records(io.BytesIO(TWO_GOOD + b"\x00" * 8))
    assert next(records).payload == b"good" and next(records).payload == b"also good!"
    with pytest.raises(DataError, match="bad magic"):
        next(records)


def test_reading_leaves_the_callers_stream_open():
    raw = TrickleReader(encode_record(b"one") + encode_record(b"two"), step=64)
    records = read_records(raw)
    assert next(records).payload == b"one"
    records.close()  # stopping early
    assert not raw.closed
