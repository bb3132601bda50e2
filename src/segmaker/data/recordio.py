"""RecordIO framing as SageMaker Pipe mode sends it: a streaming reader and a writer.

Each part on the wire is: little-endian uint32 magic 0xCED7230A, uint32 `(cflag << 29) | length`,
`length` payload bytes, zero padding up to a multiple of 4. cflag 0 is a whole record; 1, 2, 3 are the
first, middle and last part of a record that was split, and the record is the plain concatenation of
its parts (what SageMaker's own Pipe mode readers do; dmlc's MXNet writer differs: it splits only at
occurrences of the magic in the data and its reader re-inserts the magic between parts).

The reader never seeks and accepts short reads, so it works on a FIFO; it reads in large chunks.
"""

import io
import struct
from typing import BinaryIO, Iterator, List, NamedTuple, Optional, Tuple

from segmaker.errors import DataError

MAGIC = 0xCED7230A
HEADER = struct.Struct("<II")
MAX_PART_LENGTH = (1 << 29) - 1  # the length field has 29 bits
DEFAULT_CHUNK_SIZE = 1 << 20

CFLAG_WHOLE, CFLAG_FIRST, CFLAG_MIDDLE, CFLAG_LAST = 0, 1, 2, 3
_CFLAG_NAMES = {0: "whole record", 1: "first part", 2: "middle part", 3: "last part"}


class Record(NamedTuple):
    """One logical record: its 0-based index in the stream, the byte offset of its first header, its bytes."""

    index: int
    offset: int
    payload: bytes


def _padded(length: int) -> int:
    return (length + 3) & ~3


class _Input:
    """Exact-size reads from a forward-only stream, with the absolute byte offset.

    A raw stream (a FIFO opened unbuffered, a socket) is wrapped in a BufferedReader with a large buffer:
    headers then come out of memory, and a payload longer than what is buffered is read by the kernel
    straight into its bytes object. Measured on a FIFO, that is as fast as `cat` (a hand-rolled
    bytearray buffer cost a third more: one more copy and a zero-fill per payload).
    """

    def __init__(self, fileobj: BinaryIO, chunk_size: int):
        self._wrapped = isinstance(fileobj, io.RawIOBase)
        self._file = io.BufferedReader(fileobj, chunk_size) if self._wrapped else fileobj
        self.offset = 0

    def read(self, count: int) -> bytes:
        """`count` bytes; fewer only at the end of the stream."""
        data = self._read_once(count)
        if 0 < len(data) < count:  # a stream that returns short reads: keep reading
            parts = [data]
            have = len(data)
            while have < count:
                more = self._read_once(count - have)
                if not more:
                    break
                parts.append(more)
                have += len(more)
            data = b"".join(parts)
        self.offset += len(data)
        return data

    def _read_once(self, count: int) -> bytes:
        data = self._file.read(count)
        if data is None:  # only a non-blocking stream with nothing buffered returns None
            raise DataError("the RecordIO stream was opened non-blocking; open it in blocking mode")
        return data

    def release(self) -> None:
        """Let go of our wrapper without closing the caller's stream."""
        if self._wrapped and not self._file.closed:  # closed: the caller closed its stream already
            self._file.detach()
            self._wrapped = False


def read_records(
    fileobj: BinaryIO, *, source: str = "stream", chunk_size: int = DEFAULT_CHUNK_SIZE
) -> Iterator[Record]:
    """Yield the logical records of a RecordIO stream, joining split records.

    `source` names the stream in errors (e.g. the FIFO's path). Every framing problem is a DataError
    that names the record index and the byte offset where it was found.
    """
    stream = _Input(fileobj, chunk_size)
    try:
        yield from _records(stream, source)
    finally:
        stream.release()


def _records(stream: "_Input", source: str) -> Iterator[Record]:
    index = 0
    parts: List[bytes] = []  # the parts of a split record seen so far
    record_offset = 0  # where the current (possibly split) record started
    while True:
        part = _read_part(stream, source, index)
        if part is None:
            if parts:
                raise _error(
                    source,
                    index,
                    record_offset,
                    "the stream ends inside a split record (its last part, cflag 3, is missing)",
                )
            return
        cflag, part_offset, payload = part
        _check_cflag_sequence(cflag, bool(parts), source, index, part_offset, record_offset)
        if cflag in (CFLAG_WHOLE, CFLAG_FIRST):
            record_offset = part_offset
        parts.append(payload)
        if cflag in (CFLAG_WHOLE, CFLAG_LAST):
            yield Record(index, record_offset, parts[0] if len(parts) == 1 else b"".join(parts))
            parts = []
            index += 1


def _read_part(stream: _Input, source: str, index: int) -> Optional[Tuple[int, int, bytes]]:
    """(cflag, byte offset, payload) of the next part; None at a clean end of stream."""
    offset = stream.offset
    header = stream.read(HEADER.size)
    if not header:
        return None
    if len(header) < HEADER.size:
        raise _error(
            source, index, offset, f"the stream ends inside a record header ({len(header)} of 8 bytes)"
        )
    magic, flag_and_length = HEADER.unpack(header)
    if magic != MAGIC:
        raise _error(
            source,
            index,
            offset,
            f"bad magic number 0x{magic:08X} (expected 0x{MAGIC:08X}): "
            "not RecordIO, or the stream is out of step",
        )
    cflag, length = flag_and_length >> 29, flag_and_length & MAX_PART_LENGTH
    payload = stream.read(length)
    if len(payload) < length:
        raise _error(
            source, index, offset, f"the stream ends inside the payload ({len(payload)} of {length} bytes)"
        )
    padding = _padded(length) - length
    if padding and len(stream.read(padding)) < padding:
        raise _error(source, index, offset, "the stream ends inside the padding after the payload")
    return cflag, offset, payload


def _check_cflag_sequence(
    cflag: int, inside_split: bool, source: str, index: int, part_offset: int, record_offset: int
) -> None:
    """Whole/first parts may only start a record; middle/last parts may only continue a split one."""
    if cflag not in _CFLAG_NAMES:
        raise _error(source, index, part_offset, f"invalid cflag {cflag} (allowed: 0 to 3)")
    name = _CFLAG_NAMES[cflag]
    if inside_split and cflag in (CFLAG_WHOLE, CFLAG_FIRST):
        raise _error(
            source,
            index,
            part_offset,
            f"a {name} (cflag {cflag}) inside the split record that "
            f"started at byte offset {record_offset}; its last part (cflag 3) is missing",
        )
    if not inside_split and cflag in (CFLAG_MIDDLE, CFLAG_LAST):
        raise _error(
            source,
            index,
            part_offset,
            f"a {name} (cflag {cflag}) of a split record without its first part (cflag 1)",
        )


def _error(source: str, index: int, offset: int, problem: str) -> DataError:
    return DataError(f"RecordIO {source}: record {index} at byte offset {offset}: {problem}")


def write_record(fileobj: BinaryIO, payload: bytes, max_part: Optional[int] = None) -> int:
    """Write one record; split it into parts (cflag 1/2/3) of at most `max_part` bytes. Return bytes written.

    Payloads longer than the 29-bit length field allows are always split.
    """
    if max_part is not None and max_part < 1:
        raise ValueError(f"max_part must be at least 1, not {max_part}")
    part_size = min(max_part or MAX_PART_LENGTH, MAX_PART_LENGTH)
    view = memoryview(payload)
    if len(view) <= part_size:
        return _write_part(fileobj, CFLAG_WHOLE, view)
    starts = range(0, len(view), part_size)
    written = 0
    for number, start in enumerate(starts):
        cflag = CFLAG_FIRST if number == 0 else CFLAG_LAST if number == len(starts) - 1 else CFLAG_MIDDLE
        written += _write_part(fileobj, cflag, view[start : start + part_size])
    return written


def _write_part(fileobj: BinaryIO, cflag: int, data: memoryview) -> int:
    length = len(data)
    padding = _padded(length) - length
    fileobj.write(HEADER.pack(MAGIC, (cflag << 29) | length))
    fileobj.write(data)
    if padding:
        fileobj.write(b"\0" * padding)
    return HEADER.size + length + padding
