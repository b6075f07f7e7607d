"""The append-only journal: every command the sequencer stamped, durable before acknowledged.

DESIGN rule 1 (single writer: the journal is the complete history), rule 3 (recovery is a
replay of the journal) and rule 7 (acknowledge only what is durable, group commit).

File format
===========

A journal is a directory holding numbered *segment* files and a lock file::

    journal.lock            flock()ed by the one process that has the journal open
    journal-000001.rjl      segment 1
    journal-000002.rjl      segment 2 ...  (index zero-padded to 6 digits, at least)

Segment indices are consecutive.  Every segment starts with a 16-byte header::

    offset 0   8 bytes   magic b"RONDAJ1\\n"
    offset 8   8 bytes   seq of the segment's first record, unsigned big-endian

followed by zero or more records, each framed as::

    4 bytes   payload length N, unsigned big-endian (N >= 1)
    4 bytes   CRC-32 of the payload (zlib.crc32), unsigned big-endian
    N bytes   payload: msgpack of the array [seq, ts, origin, command]

``seq`` is an int, 1 for the first record of the journal and consecutive without gaps across
all segments (a segment's header carries the seq of its first record, the next one after the
previous segment's last); ``ts`` an int, the sequencer's instant in ms since the epoch
(UTC); ``origin`` a str, the acting user or ``"operator"``, ``"calendar"``, ``"sync"``;
``command`` the command encoded by :mod:`gateway.codec` (``["new_order", ...]``).

A new segment is started before a batch that would take the current segment past
``segment_bytes`` (default 64 MiB; a batch is never split, so a single batch larger than the
limit makes one larger segment), and on an explicit :meth:`Journal.roll` (the sequencer
rolls at each local trading day).  A segment that holds no record is never rolled away from.

Durability
==========

With ``fsync=True`` (the default), :meth:`Journal.append` writes the whole batch with one
``write`` and then calls ``os.fdatasync`` once (group commit; ``os.fsync`` where there is no
``fdatasync``: both make the data and the file's size durable, ``fdatasync`` without the
timestamps); it returns only after that, so *a record is acknowledged exactly when it is
synced*.  A new segment's header is fsynced
and its directory entry made durable (fsync of the directory) before any record is written
into it.  A crash, of the process or of the machine, therefore loses at most the batch that
was being appended (never acknowledged), and can leave that batch torn at the end of the
last segment.  With ``fsync=False`` a process crash loses nothing that ``append`` returned
(it is in the kernel's page cache) but a machine crash can lose any recent batch.
(All of this assumes a disk that honours flushes.)

Opening (:meth:`Journal.open`) validates every record of every segment: the frame, the CRC,
the msgpack payload and its shape, and the seq sequence.  A defect at the *tail*, the last
record of the last segment, is a torn write and is cut off: the file is truncated to the end
of the last good record and :attr:`Journal.recovered_tail_bytes` says how many bytes went.
The tail means: fewer than 8 bytes of frame left, a length running past the end of the
file, a CRC mismatch in the frame that ends exactly at the end of the file, or nothing but
zero bytes from the defect to the end of the file (a filesystem extending a file it had not
written yet).  A last segment whose header itself is incomplete (a crash while rolling) is
removed.  Any other defect is corruption: :class:`JournalCorrupt` names the file and the
offset, and nothing is skipped or repaired.  The commands themselves are decoded by
:meth:`Journal.records`.

The journal is not thread-safe; the sequencer is its only writer.  ``append`` blocks (run it
in the sequencer's writer thread, not on the event loop).
"""

from __future__ import annotations

import fcntl
import itertools
import mmap
import os
import re
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, NamedTuple

import msgpack

from gateway.codec import Codec, CodecError, default_codec

__all__ = [
    "DEFAULT_SEGMENT_BYTES",
    "FRAME_SIZE",
    "HEADER_SIZE",
    "MAGIC",
    "Journal",
    "JournalCorrupt",
    "JournalError",
    "Record",
    "segment_name",
]

MAGIC: Final = b"RONDAJ1\n"
HEADER_SIZE: Final = 16
FRAME_SIZE: Final = 8
DEFAULT_SEGMENT_BYTES: Final = 64 * 1024 * 1024
LOCK_NAME: Final = "journal.lock"

_HEADER: Final = struct.Struct(">8sQ")
_FRAME: Final = struct.Struct(">II")
_SEGMENT_RE: Final = re.compile(r"journal-(\d{6,})\.rjl")
_MAX_U32: Final = 2**32 - 1
_TS_MAX: Final = 2**63 - 1


def segment_name(index: int) -> str:
    """The file name of segment ``index`` (``journal-000001.rjl`` for 1)."""
    return f"journal-{index:06d}.rjl"


class JournalError(Exception):
    """The journal cannot do what was asked: not open, locked by another process, or failed
    during a write (then it must be closed and reopened, which recovers the tail)."""


class JournalCorrupt(JournalError):
    """A defect that is not a torn tail: the journal is not trusted, nothing is skipped."""

    def __init__(self, path: Path, offset: int, reason: str) -> None:
        super().__init__(f"{path}: offset {offset}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason


class Record(NamedTuple):
    """One journaled command: its sequence number, the sequencer's instant (ms UTC), who
    sent it (a user, ``"operator"``, ``"calendar"``, ``"sync"``) and the command object."""

    seq: int
    ts: int
    origin: str
    command: Any


@dataclass(slots=True)
class _Segment:
    index: int
    path: Path
    first_seq: int
    count: int  # records in it
    size: int  # bytes of valid content


class _Defect(Exception):
    """Internal: a bad frame at ``offset``; ``torn`` if it looks like an incomplete write."""

    def __init__(self, offset: int, reason: str, torn: bool) -> None:
        super().__init__(reason)
        self.offset = offset
        self.reason = reason
        self.torn = torn


def _valid_shape(obj: Any) -> bool:
    return (type(obj) is list and len(obj) == 4 and type(obj[0]) is int
            and type(obj[1]) is int and type(obj[2]) is str and type(obj[3]) is list
            and len(obj[3]) > 0 and type(obj[3][0]) is str)


def _read_frame(buf: Any, off: int, size: int, seq: int) -> tuple[int, list[Any]]:
    """Parse and check the frame at ``off`` of ``buf[:size]``, expected to hold ``seq``;
    return the offset after it and the unpacked payload, or raise :class:`_Defect`."""
    left = size - off
    if left < FRAME_SIZE:
        raise _Defect(off, f"incomplete frame header ({left} of {FRAME_SIZE} bytes)", True)
    length, crc = _FRAME.unpack_from(buf, off)
    end = off + FRAME_SIZE + length
    if end > size:
        raise _Defect(off, f"record of {length} bytes runs past the end of the file "
                           f"({left - FRAME_SIZE} bytes left)", True)
    payload = buf[off + FRAME_SIZE:end]
    if zlib.crc32(payload) != crc:
        raise _Defect(off, "CRC mismatch", end == size)  # torn only if it is the last frame
    try:
        obj = msgpack.unpackb(payload)
    except Exception as exc:  # any msgpack failure on bytes whose CRC matched
        raise _Defect(off, f"payload is not valid msgpack: {exc}", False) from None
    if not _valid_shape(obj):
        raise _Defect(off, "payload is not [seq:int, ts:int, origin:str, command:list]", False)
    if obj[0] != seq:
        raise _Defect(off, f"record has seq {obj[0]}, expected {seq}", False)
    return end, obj


def _datasync(fd: int) -> None:
    """Make an append durable: ``fdatasync`` where there is one (Linux), which flushes the
    data and the metadata needed to read it back (the file's new size) but not the
    timestamps, sparing a filesystem journal commit per batch (as databases do for their
    write-ahead logs); ``fsync`` elsewhere."""
    sync = getattr(os, "fdatasync", None)
    if sync is None:  # pragma: no cover - macOS, Windows
        os.fsync(fd)
    else:
        sync(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Journal:
    """An append-only journal in directory ``path`` (see the module docstring).

    Use::

        with Journal("data/journal") as j:          # open(): validate, recover the tail
            for rec in j.records():                  # replay
                engine.apply(rec.command, rec.ts)
            j.append([Record(j.next_seq, ts, "trader1", cmd)])   # durable on return
    """

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = True,
                 segment_bytes: int = DEFAULT_SEGMENT_BYTES,
                 codec: Codec | None = None) -> None:
        if type(segment_bytes) is not int or segment_bytes <= HEADER_SIZE:
            raise ValueError(f"segment_bytes must be an int > {HEADER_SIZE}")
        self.path = Path(path)
        self.fsync = fsync
        self.segment_bytes = segment_bytes
        self.codec = codec or default_codec()
        self.recovered_tail_bytes = 0
        """Bytes cut off the torn tail by the last :meth:`open` (0 if it was clean)."""
        self._segments: list[_Segment] = []
        self._fd: int | None = None
        self._lock_fd: int | None = None
        self._next_seq = 1
        self._failed: BaseException | None = None
        self._packer = msgpack.Packer(autoreset=True)

    # --- opening and closing ----------------------------------------------------------

    def open(self) -> Journal:
        """Lock, scan and validate the journal, cut a torn tail, and get ready to append.

        Creates the directory and the first segment if there are none.  Raises
        :class:`JournalCorrupt` on corruption, :class:`JournalError` if another process
        (or another :class:`Journal` object) has it open.
        """
        if self._lock_fd is not None:
            raise JournalError(f"{self.path}: already open")
        missing = [d for d in (self.path, *self.path.parents) if not d.exists()]
        self.path.mkdir(parents=True, exist_ok=True)
        if self.fsync:
            for d in reversed(missing):  # a new directory's entry is durable in its parent
                _fsync_dir(d.parent)
        lock_fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            raise JournalError(f"{self.path}: locked by another writer") from None
        self._lock_fd = lock_fd
        self._failed = None
        self.recovered_tail_bytes = 0
        self._segments = []
        self._next_seq = 1
        try:
            self._segments = self._scan()
            if not self._segments:
                self._segments = [self._create_segment(1, 1)]
            cur = self._segments[-1]
            self._fd = os.open(cur.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            if os.fstat(self._fd).st_size != cur.size:  # pragma: no cover - defensive
                raise JournalError(f"{cur.path}: changed while opening")
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Close the current segment and release the lock (idempotent)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def __enter__(self) -> Journal:
        return self if self.is_open else self.open()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @property
    def is_open(self) -> bool:
        return self._fd is not None

    @property
    def next_seq(self) -> int:
        """The seq the next appended record must carry."""
        return self._next_seq

    @property
    def first_seq(self) -> int:
        """The seq of the first record kept (1 unless old segments were archived away)."""
        return self._segments[0].first_seq if self._segments else 1

    @property
    def segments(self) -> list[Path]:
        """The segment files, oldest first; the last is the one being appended to."""
        return [s.path for s in self._segments]

    def segment_ranges(self) -> list[tuple[Path, int, int]]:
        """(file, first seq, record count) of each segment, oldest first."""
        return [(s.path, s.first_seq, s.count) for s in self._segments]

    # --- scanning -----------------------------------------------------------------------

    def _scan(self) -> list[_Segment]:
        found: list[tuple[int, Path]] = []
        for p in self.path.iterdir():
            m = _SEGMENT_RE.fullmatch(p.name)
            if m and p.is_file():
                found.append((int(m.group(1)), p))
        found.sort()
        for (a, _), (b, pb) in itertools.pairwise(found):
            if b != a + 1:
                raise JournalCorrupt(pb, 0, f"segment {segment_name(a + 1)} is missing "
                                            f"(found {pb.name} after {segment_name(a)})")
        segments: list[_Segment] = []
        for k, (index, p) in enumerate(found):
            expected = segments[-1].first_seq + segments[-1].count if segments else None
            seg = self._scan_segment(index, p, expected, last=k == len(found) - 1)
            if seg is not None:
                segments.append(seg)
        self._next_seq = segments[-1].first_seq + segments[-1].count if segments else 1
        return segments

    def _scan_segment(self, index: int, path: Path, expected: int | None,
                      last: bool) -> _Segment | None:
        """Validate one segment and, if it is the last, cut its torn tail.  Returns None
        when it was the last and only its header had been (partly) written: the file is
        then removed."""
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < HEADER_SIZE:
                head = f.read(HEADER_SIZE)
                if last and head[:8] == MAGIC[:min(len(head), 8)]:
                    os.unlink(path)  # a crash while rolling: no record was ever in it
                    if self.fsync:
                        _fsync_dir(self.path)
                    self.recovered_tail_bytes += size
                    return None
                raise JournalCorrupt(path, 0, f"segment header is incomplete ({size} of "
                                              f"{HEADER_SIZE} bytes)")
            with mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) as mm:
                first = self._check_header(path, mm, expected)
                off, seq = HEADER_SIZE, first
                cut: int | None = None
                while off < size:
                    try:
                        off, _ = _read_frame(mm, off, size, seq)
                    except _Defect as d:
                        if last and (d.torn or mm[d.offset:size].count(0) == size - d.offset):
                            cut = d.offset  # torn tail: an unacknowledged, partial write
                            break
                        raise JournalCorrupt(path, d.offset, d.reason) from None
                    seq += 1
        if cut is not None:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.ftruncate(fd, cut)
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            self.recovered_tail_bytes += size - cut
            size = cut
        return _Segment(index, path, first, seq - first, size)

    @staticmethod
    def _check_header(path: Path, buf: Any, expected: int | None) -> int:
        magic, first = _HEADER.unpack_from(buf, 0)
        if magic != MAGIC:
            raise JournalCorrupt(path, 0, f"bad magic {magic!r} (expected {MAGIC!r})")
        if first < 1:
            raise JournalCorrupt(path, 8, "segment header's first seq is 0")
        if expected is not None and first != expected:
            raise JournalCorrupt(path, 8, f"segment starts at seq {first}, expected "
                                          f"{expected} (gap between segments)")
        return int(first)

    # --- writing ------------------------------------------------------------------------

    def _writable(self) -> int:
        if self._fd is None:
            raise JournalError(f"{self.path}: journal is not open")
        if self._failed is not None:
            raise JournalError(f"{self.path}: an earlier write failed ({self._failed!r}); "
                               "close and reopen the journal")
        return self._fd

    def _create_segment(self, index: int, first_seq: int) -> _Segment:
        path = self.path / segment_name(index)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            _write_all(fd, _HEADER.pack(MAGIC, first_seq))
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        if self.fsync:
            _fsync_dir(self.path)  # the new file's name is durable before any record in it
        return _Segment(index, path, first_seq, 0, HEADER_SIZE)

    def append(self, records: Iterable[Record]) -> None:
        """Append a batch: one ``write`` and, with ``fsync``, one ``os.fdatasync``; when this
        returns the records are durable (acknowledge them then, DESIGN rule 7).

        The records must carry the seqs ``next_seq, next_seq + 1, ...``, an int ``ts``
        (ms UTC, >= 0), a non-empty str ``origin`` and a registered command.  A bad record
        (:class:`ValueError`, :class:`~gateway.codec.CodecError`) rejects the whole batch
        before anything is written.  An I/O failure raises :class:`JournalError` and leaves
        the journal failed (the batch may be partly on disk, unacknowledged: close and
        reopen, which cuts it off).
        """
        fd = self._writable()
        encode = self.codec.encode
        pack = self._packer.pack
        frame = _FRAME.pack
        crc32 = zlib.crc32
        parts: list[bytes] = []
        seq = self._next_seq
        for rec in records:
            rseq, ts, origin, cmd = rec
            if rseq != seq or type(rseq) is not int:
                raise ValueError(f"record seq {rseq!r}, expected {seq}")
            if type(ts) is not int or not 0 <= ts <= _TS_MAX:
                raise ValueError(f"seq {seq}: ts must be an int of ms >= 0, got {ts!r}")
            if type(origin) is not str or not origin:
                raise ValueError(f"seq {seq}: origin must be a non-empty str, got {origin!r}")
            try:
                payload = pack([seq, ts, origin, encode(cmd)])
            except UnicodeEncodeError:
                raise ValueError(f"seq {seq}: origin is not UTF-8 encodable") from None
            if len(payload) > _MAX_U32:  # pragma: no cover - a 4 GiB command
                raise ValueError(f"seq {seq}: record too large")
            parts.append(frame(len(payload), crc32(payload)))
            parts.append(payload)
            seq += 1
        if not parts:
            return
        data = b"".join(parts)
        cur = self._segments[-1]
        if cur.count and cur.size + len(data) > self.segment_bytes:
            self._roll()
            fd = self._writable()
            cur = self._segments[-1]
        try:
            _write_all(fd, data)
            if self.fsync:
                _datasync(fd)
        except OSError as exc:
            self._failed = exc
            raise JournalError(f"{cur.path}: append failed: {exc}") from exc
        except BaseException as exc:  # interrupted mid-write: the file state is unknown
            self._failed = exc
            raise
        cur.size += len(data)
        cur.count += seq - self._next_seq
        self._next_seq = seq

    def roll(self) -> bool:
        """Start a new segment now (the sequencer calls it at each local trading day).  A
        no-op that returns False when the current segment holds no record yet."""
        self._writable()
        if self._segments[-1].count == 0:
            return False
        self._roll()
        return True

    def _roll(self) -> None:
        cur = self._segments[-1]
        try:
            seg = self._create_segment(cur.index + 1, self._next_seq)
            fd = os.open(seg.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        except OSError as exc:
            # A half-made segment is handled by the next open (removed, or valid and empty);
            # appending to the old one now could contradict its header: stop here.
            self._failed = exc
            raise JournalError(f"{self.path}: cannot start segment {cur.index + 1}: {exc}") \
                from exc
        assert self._fd is not None
        os.close(self._fd)
        self._fd = fd
        self._segments.append(seg)

    # --- reading ------------------------------------------------------------------------

    def records(self, from_seq: int = 1) -> Iterator[Record]:
        """The records with ``seq >= from_seq`` in order, across segments, commands decoded.

        Reads what was appended when it is called (later appends are not included).  Raises
        :class:`JournalError` at once if records from ``from_seq`` are no longer kept, and
        :class:`JournalCorrupt` while iterating if a file changed under the journal or a
        command does not decode (e.g. its type was not registered).
        """
        if self._fd is None:
            raise JournalError(f"{self.path}: journal is not open")
        if type(from_seq) is not int or from_seq < 1:
            raise ValueError(f"from_seq must be an int >= 1, got {from_seq!r}")
        if from_seq < self.first_seq:
            raise JournalError(f"{self.path}: records before seq {self.first_seq} are not "
                               f"in this journal (asked from {from_seq})")
        snapshot = [(s.path, s.first_seq, s.count, s.size) for s in self._segments
                    if s.first_seq + s.count > from_seq]
        return self._iter(snapshot, from_seq)

    def _iter(self, snapshot: list[tuple[Path, int, int, int]],
              from_seq: int) -> Iterator[Record]:
        decode = self.codec.decode
        for path, first, count, size in snapshot:
            with _map(path, size) as mm:
                self._check_header(path, mm, first)
                off, seq, stop = HEADER_SIZE, first, first + count
                while seq < from_seq:  # skip by the frames alone: seqs are consecutive
                    if off + FRAME_SIZE > size:
                        raise JournalCorrupt(path, off, "segment shorter than when opened")
                    off += FRAME_SIZE + _FRAME.unpack_from(mm, off)[0]
                    seq += 1
                while seq < stop:
                    try:
                        end, (_, ts, origin, data) = _read_frame(mm, off, size, seq)
                    except _Defect as d:
                        raise JournalCorrupt(path, d.offset, d.reason) from None
                    try:
                        cmd = decode(data)
                    except CodecError as exc:
                        raise JournalCorrupt(path, off, f"seq {seq}: {exc}") from None
                    yield Record(seq, ts, origin, cmd)
                    off = end
                    seq += 1


def _map(path: Path, size: int) -> mmap.mmap:
    """A read-only map of the first ``size`` bytes of a segment the journal already knows."""
    try:
        with open(path, "rb") as f:
            return mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ)  # outlives the fd
    except (OSError, ValueError) as exc:
        raise JournalCorrupt(path, 0, f"segment vanished or shrank: {exc}") from None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


