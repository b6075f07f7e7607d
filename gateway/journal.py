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
                       or [seq, ts, origin, command, [message_id, digest]]

``seq`` is an int, 1 for the first record of the journal and consecutive without gaps across
all segments (a segment's header carries the seq of its first record, the next one after the
previous segment's last); ``ts`` an int, the sequencer's instant in ms since the epoch
(UTC); ``origin`` a str, the acting user or ``"operator"``, ``"calendar"``, ``"sync"``;
``command`` the command encoded by :mod:`gateway.codec` (``["new_order", ...]``).  A fifth
element, present only for a command that came with an idempotency key (an AMQP request's
``message_id``), is that key: ``message_id`` a non-empty str and ``digest`` the 16-byte
BLAKE2b digest of the request as received (its content type and body), so that a repeat
delivered to a restarted server is answered from the journal instead of executed again, and
a different request under the same ``message_id`` is told apart (``gateway/amqp.py``).
Journals written before the key existed hold four-element records only, and read as before.

A new segment is started before a batch that would take the current segment past
``segment_bytes`` (default 64 MiB; a batch is never split, so a single batch larger than the
limit makes one larger segment), and on an explicit :meth:`Journal.roll` (the sequencer
rolls at each local trading day).  A segment that holds no record is never rolled away from.

Durability
==========

With ``fsync=True`` (the default), :meth:`Journal.append` writes the batch and then calls
``os.fdatasync`` (group commit; ``os.fsync`` where there is no ``fdatasync``: both make the
data and what is needed to read it back durable, ``fdatasync`` without the timestamps); it
returns only after that, so *a record is acknowledged exactly when it is synced*.  (With
``defer_sync`` it returns after the write and owes the sync, which its caller makes, here
or in the helper process of gateway/disksync.py, before it acknowledges anything of the
batch; no append or roll is taken until then.)  A batch is
written in pieces of at most :data:`MAX_WRITE` (256 KiB; cut between records, a record
larger than that is a piece of its own), each synced before the next is written: one write
and one sync for any batch below 256 KiB, which is every batch of fewer than about a
thousand requests.  A new segment's header is synced and its directory entry made durable
(fsync of the directory) before any record is written into it.  A crash, of the process or
of the machine, therefore loses at most the batch that was being appended (never
acknowledged; its pieces already synced are replayed, as a batch synced just before a crash
is), and can leave the piece being written torn after the last synced record.  With
``fsync=False`` a process crash loses nothing that ``append`` returned (it is in the
kernel's page cache) but a machine crash can lose any recent batch.  (All of this assumes a
disk that honours flushes.)

Preallocation
=============

With ``preallocate=True`` (what ``ronda serve`` uses whenever it syncs) a segment is filled
with zeros to ``segment_bytes`` when it is started, and records then *overwrite* those
zeros.  The point is the sync: appending to a file changes its size, so every
``fdatasync`` of an append also commits the filesystem's own journal (the inode), while an
overwrite of blocks already written flushes the data alone.  On the project's machine that
takes a 2 KB sync from 120–131 to 82–83 µs at the median and from 194–213 to 130–136 µs at
the 99th percentile (``docs/performance.md``); PostgreSQL zero-fills its WAL segments for
the same reason.  (``fallocate`` does not do it: writing into a fallocated range converts
its extents, a metadata change again.)  The next segment is zero-filled in a thread of its
own as soon as a segment becomes the current one (at :meth:`Journal.open` and after each
roll), so that a roll, the daily one included, only writes the header and renames the file
(``journal-next.tmp`` until then; a leftover one is removed by :meth:`Journal.open`); a
segment that is rolled away from is first cut back to its records.  A disk without room for
the zeros (``ENOSPC``, a quota, a file-size limit) does not stop the journal: the zeros
written are cut off again, a warning is logged, and that segment grows as it is appended
to, as without preallocation.  The
size of a file is then no longer where its records end: they end at the first frame that is
all zeros with nothing but zeros after it, and a segment may end with zeros in either mode.

Opening and torn tails
======================

Opening (:meth:`Journal.open`) validates every record of every segment: the frame, the CRC,
the msgpack payload and its shape, and the seq sequence.  Each segment's records end at the
first frame that is not a valid record:

* If nothing but zero bytes follows it (to the end of the file), that is where the records
  end: preallocated space, or a filesystem having extended a file it had not written yet.
  Nothing is cut and nothing is lost.
* Otherwise, in the *last* segment only, it is a torn write, cut off, when what is left
  could be the piece that was being written and the frame shows the marks of a write that
  did not complete.  What is left: the bytes from the frame to the last non-zero byte of the
  file are no more than one piece (:data:`MAX_WRITE`), or they lie within the frame's own
  claimed size when that is a record larger than a piece (at most :data:`MAX_RECORD`,
  which is the largest record :meth:`Journal.append` takes).
  The marks: the frame is cut short by the end of the file (fewer than 8 bytes left, or a
  length running past the end), or by the end of what was written (it runs past the last
  non-zero byte of the file, or its CRC does not match and it ends exactly at the end of
  the file), or its length is 0 (a written frame's never is), or a sector of it was never
  written: from the frame (or from a 512-byte boundary inside it) to the next 512-byte
  boundary, at least 4 bytes of zeros, the preallocated space that the write did not reach.
  The file is truncated to the end of the last good record (and zero-filled again when
  preallocating), so that nothing of the torn write can be read after the records written
  next; :attr:`Journal.recovered_tail_bytes` says how many bytes the torn write had left
  (from the bad frame to the last non-zero byte).
* Anything else is corruption: :class:`JournalCorrupt` names the file and the offset, and
  nothing is skipped or repaired.  That includes a frame whose CRC matches but whose
  payload is not a record of the expected seq (a torn write cannot match a CRC), damage
  followed by more than one piece of data (acknowledged records lost, not a torn write),
  and a bad frame whose sectors were all written, followed by more data (bit rot, not a
  torn write).

What the rules cannot tell apart, and how they decide: within the last piece, acknowledged
records whose sector reads back as zeros (a disk that lost a write it had confirmed) look
like a torn write and are cut, and so are, within :data:`MAX_RECORD` of the end, the
records after a length field damaged to claim that its frame runs past the end of the
data; a torn write of a record larger than a piece that lost the sector of its frame's
header reads as corruption; and a power cut that loses only the sector holding the
first 3 bytes of a frame of 256 bytes or more, and nothing else of it, looks like bit rot
and stops the opening with :class:`JournalCorrupt` (the frame's other sectors were written,
and a written frame may start with 3 zero bytes).

A last segment whose header itself is incomplete, or that holds nothing but zeros (a crash
while rolling), is removed.  The
commands themselves are decoded by :meth:`Journal.records`.

The journal is not thread-safe; the sequencer is its only writer.  ``append`` blocks for
its write and, unless the sync is deferred, for its sync (the sequencer calls it on the
event loop's thread: gateway/sequencer.py says why).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import logging
import mmap
import os
import re
import struct
import threading
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, NamedTuple, NoReturn

import msgpack

from gateway.codec import Codec, CodecError, default_codec

__all__ = [
    "DEFAULT_SEGMENT_BYTES",
    "FRAME_SIZE",
    "HEADER_SIZE",
    "MAGIC",
    "MAX_RECORD",
    "MAX_WRITE",
    "NEXT_NAME",
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
NEXT_NAME: Final = "journal-next.tmp"
MAX_WRITE: Final = 256 * 1024
"""The most a write puts after the last synced record (one record larger than this is
written alone): what a torn write can leave behind."""
MAX_RECORD: Final = 4 * 1024 * 1024
"""The largest record :meth:`Journal.append` takes (a command of 4 MiB: far above any
request, whose messages are at most 64 KiB, or a market's reference data)."""
SECTOR: Final = 512
_ZERO_BYTES: Final = bytes(1024 * 1024)
_ZEROS: Final = memoryview(_ZERO_BYTES)  # written in slices without copying
_NO_ROOM: Final = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)

log = logging.getLogger("ronda.journal")

_HEADER: Final = struct.Struct(">8sQ")
_FRAME: Final = struct.Struct(">II")
_SEGMENT_RE: Final = re.compile(r"journal-(\d{6,})\.rjl")
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


RequestKey = tuple[str, bytes]
"""A request's idempotency key: its ``message_id`` and the digest of what was received."""

DIGEST_SIZE = 16


class Record(NamedTuple):
    """One journaled command: its sequence number, the sequencer's instant (ms UTC), who
    sent it (a user, ``"operator"``, ``"calendar"``, ``"sync"``), the command object, and
    the idempotency key of the request that carried it, if it had one."""

    seq: int
    ts: int
    origin: str
    command: Any
    key: RequestKey | None = None


@dataclass(slots=True)
class _Segment:
    index: int
    path: Path
    first_seq: int
    count: int  # records in it
    size: int  # bytes of valid content


class _Defect(Exception):
    """Internal: a bad frame at ``offset``; ``torn`` if it looks like an incomplete write."""

    def __init__(self, offset: int, reason: str, torn: bool, crc_ok: bool = False) -> None:
        super().__init__(reason)
        self.offset = offset
        self.reason = reason
        self.torn = torn
        self.crc_ok = crc_ok  # the frame's bytes are the ones written: never a torn write


def _valid_shape(obj: Any) -> bool:
    if not (type(obj) is list and 4 <= len(obj) <= 5 and type(obj[0]) is int
            and type(obj[1]) is int and type(obj[2]) is str and type(obj[3]) is list
            and len(obj[3]) > 0 and type(obj[3][0]) is str):
        return False
    if len(obj) == 4:
        return True
    key = obj[4]
    return (type(key) is list and len(key) == 2 and type(key[0]) is str and len(key[0]) > 0
            and type(key[1]) is bytes and len(key[1]) == DIGEST_SIZE)


def _check_key(seq: int, key: Any) -> None:
    if not (type(key) is tuple and len(key) == 2 and type(key[0]) is str and key[0]
            and type(key[1]) is bytes and len(key[1]) == DIGEST_SIZE):
        raise ValueError(f"seq {seq}: key must be (message_id: non-empty str, digest: "
                         f"{DIGEST_SIZE} bytes), got {key!r}")
    try:
        key[0].encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"seq {seq}: the key's message_id is not UTF-8 encodable") from None


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
        raise _Defect(off, f"payload is not valid msgpack: {exc}", False, True) from None
    if not _valid_shape(obj):
        raise _Defect(off, "payload is not [seq:int, ts:int, origin:str, command:list"
                           "(, [message_id:str, digest:bin16])]", False, True)
    if obj[0] != seq:
        raise _Defect(off, f"record has seq {obj[0]}, expected {seq}", False, True)
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
                 codec: Codec | None = None, preallocate: bool = False) -> None:
        if type(segment_bytes) is not int or segment_bytes <= HEADER_SIZE:
            raise ValueError(f"segment_bytes must be an int > {HEADER_SIZE}")
        self.path = Path(path)
        self.fsync = fsync
        self.preallocate = preallocate
        """Zero-fill segments ahead of the records (see the module docstring)."""
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
        self._preparing: threading.Thread | None = None  # zero-filling NEXT_NAME
        self._prepared: BaseException | bool = False  # its outcome: True when ready
        self._owed = False  # an append written with defer_sync, not yet synced

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
            with contextlib.suppress(OSError):  # a crash while preparing it (if it cannot
                os.unlink(self.path / NEXT_NAME)  # go, rolls make their segments inline)
            self._segments = self._scan()
            if not self._segments:
                self._segments = [self._create_segment(1, 1)]
            cur = self._segments[-1]
            self._fd = os.open(cur.path, os.O_WRONLY | os.O_CLOEXEC)
            if self.preallocate:
                _zero_fill_room(self._fd, cur.path, max(cur.size, os.fstat(self._fd).st_size),
                                self.segment_bytes, sync=self.fsync)
                self._start_preparing()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Close the current segment and release the lock (idempotent); waits for a next
        segment being zero-filled, and makes a sync still owed (its caller stopped waiting
        for it) unless the journal failed."""
        if self._preparing is not None:
            self._preparing.join()
            self._preparing = None
        if self._fd is not None:
            if self._owed and self._failed is None:  # a sync left owed (a task cancelled)
                with contextlib.suppress(OSError):
                    _datasync(self._fd)
            self._owed = False
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
                if last and _nonzero_end(mm, 0, size) == 0:  # zeros, its header never written
                    os.unlink(path)  # (a crash while rolling, as above)
                    if self.fsync:
                        _fsync_dir(self.path)
                    return None
                first = self._check_header(path, mm, expected)
                off, seq = HEADER_SIZE, first
                cut: int | None = None
                while off < size:
                    try:
                        off, _ = _read_frame(mm, off, size, seq)
                    except _Defect as d:
                        left = _nonzero_end(mm, d.offset, size)
                        if left == d.offset:
                            break  # only zeros follow: where the records end
                        if last and _torn(mm, d, size, left):
                            cut = d.offset  # an unacknowledged write that did not complete
                            self.recovered_tail_bytes += left - cut
                            break
                        raise JournalCorrupt(path, d.offset, d.reason) from None
                    seq += 1
                end = off if cut is None else cut
        if cut is not None:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.ftruncate(fd, cut)
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
        return _Segment(index, path, first, seq - first, end)

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
        header = _HEADER.pack(MAGIC, first_seq)
        if self._take_prepared():
            if path.exists():
                raise FileExistsError(errno.EEXIST, "segment exists", str(path))
            ready = self.path / NEXT_NAME
            fd = os.open(ready, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.pwrite(fd, header, 0)  # 16 bytes into zeros already durable
                if self.fsync:
                    _datasync(fd)
            finally:
                os.close(fd)
            os.rename(ready, path)
        else:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                _write_all(fd, header, 0)
                if self.preallocate:
                    _zero_fill_room(fd, path, HEADER_SIZE, self.segment_bytes, sync=False)
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
        if self.fsync:
            _fsync_dir(self.path)  # the new file's name is durable before any record in it
        return _Segment(index, path, first_seq, 0, HEADER_SIZE)

    def _start_preparing(self) -> None:
        """Zero-fill the next segment in a thread of its own (see the module docstring)."""
        self._prepared = False
        t = threading.Thread(target=self._prepare, name="journal-prealloc", daemon=True)
        self._preparing = t
        t.start()

    def _prepare(self) -> None:
        path = self.path / NEXT_NAME
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                _zero_fill(fd, 0, self.segment_bytes, sync=self.fsync)
            finally:
                os.close(fd)
            self._prepared = True
        except BaseException as exc:  # the roll makes its segment itself
            self._prepared = exc
            log.warning("journal: the next segment could not be zero-filled ahead (%r); "
                        "it will be made when it is needed", exc)
            with contextlib.suppress(OSError):  # its space back
                os.unlink(path)

    def _take_prepared(self) -> bool:
        """Whether a zero-filled next segment is ready (waiting for it if it is being
        made).  A preparation that failed leaves the roll to make its segment inline."""
        t = self._preparing
        if t is None:
            return False
        t.join()
        self._preparing = None
        ok = self._prepared is True
        self._prepared = False
        return ok

    def append(self, records: Iterable[Record], *, defer_sync: bool = False) -> bool:
        """Append a batch: one ``write`` and, with ``fsync``, one ``os.fdatasync`` per piece
        of at most :data:`MAX_WRITE` bytes (one piece for any batch smaller than that); when
        this returns the records are durable (acknowledge them then, DESIGN rule 7).

        ``defer_sync``: a batch of one piece is written and not synced; this returns True
        and the sync is *owed*: the caller makes it, by :meth:`sync_owed` or with the sync's
        outcome from elsewhere (:meth:`owed_synced`: gateway/disksync.py, a process of its
        own), before it acknowledges the records, and no append or roll is taken meanwhile,
        so that at most one piece is ever written and not synced (what the torn-tail rule
        assumes).  A batch of several pieces is synced piece by piece as without it (False).

        The records must carry the seqs ``next_seq, next_seq + 1, ...``, an int ``ts``
        (ms UTC, >= 0), a non-empty str ``origin`` and a registered command.  A bad record
        (:class:`ValueError`, :class:`~gateway.codec.CodecError`) rejects the whole batch
        before anything is written.  An I/O failure raises :class:`JournalError` and leaves
        the journal failed (part of the batch may be on disk, unacknowledged: close and
        reopen, which keeps its whole records and cuts a torn one off).
        """
        fd = self._writable()
        if self._owed:
            raise JournalError(f"{self.path}: the append before is waiting for its sync")
        encode = self.codec.encode
        pack = self._packer.pack
        frame = _FRAME.pack
        crc32 = zlib.crc32
        parts: list[bytes] = []
        pieces: list[int] = []  # where each piece of at most MAX_WRITE bytes starts in parts
        piece = total = 0
        seq = self._next_seq
        for rec in records:
            rseq, ts, origin, cmd, key = rec
            if rseq != seq or type(rseq) is not int:
                raise ValueError(f"record seq {rseq!r}, expected {seq}")
            if type(ts) is not int or not 0 <= ts <= _TS_MAX:
                raise ValueError(f"seq {seq}: ts must be an int of ms >= 0, got {ts!r}")
            if type(origin) is not str or not origin:
                raise ValueError(f"seq {seq}: origin must be a non-empty str, got {origin!r}")
            if key is not None:
                _check_key(seq, key)
            try:
                payload = pack([seq, ts, origin, encode(cmd)] if key is None
                               else [seq, ts, origin, encode(cmd), list(key)])
            except UnicodeEncodeError:
                raise ValueError(f"seq {seq}: origin is not UTF-8 encodable") from None
            n = len(payload)
            if n + FRAME_SIZE > MAX_RECORD:
                raise ValueError(f"seq {seq}: record of {n} bytes, more than the journal "
                                 f"takes ({MAX_RECORD - FRAME_SIZE})")
            if piece + n + FRAME_SIZE > MAX_WRITE and piece:
                pieces.append(len(parts))
                total += piece
                piece = 0
            parts.append(frame(n, crc32(payload)))
            parts.append(payload)
            piece += n + FRAME_SIZE
            seq += 1
        if not parts:
            return False
        total += piece
        defer = defer_sync and self.fsync and not pieces
        cur = self._segments[-1]
        if cur.count and cur.size + total > self.segment_bytes:
            self._roll()
            fd = self._writable()
            cur = self._segments[-1]
        try:
            at = cur.size
            for a, b in itertools.pairwise([0, *pieces, len(parts)]):
                data = b"".join(parts[a:b])
                _write_all(fd, data, at)
                if self.fsync and not defer:
                    _datasync(fd)
                at += len(data)
        except OSError as exc:
            self._failed = exc
            raise JournalError(f"{cur.path}: append failed: {exc}") from exc
        except BaseException as exc:  # interrupted mid-write: the file state is unknown
            self._failed = exc
            raise
        cur.size = at
        cur.count += seq - self._next_seq
        self._next_seq = seq
        self._owed = defer
        return defer

    @property
    def sync_owed_fd(self) -> int:
        """The descriptor of the segment an owed sync is made on."""
        return self._writable()

    def sync_owed(self) -> None:
        """Make the owed sync here (``fdatasync`` on this thread): the records of the last
        append are durable when this returns."""
        if not self._owed:
            return
        fd = self._writable()
        try:
            _datasync(fd)
        except OSError as exc:
            self._sync_failed(exc)
        self._owed = False

    def owed_synced(self, error: int) -> None:
        """The outcome of the owed sync, made elsewhere on the same file (the process of
        gateway/disksync.py): ``error`` 0, the records of the last append are durable; an
        ``errno``, the sync failed and so does the journal, as if it had failed here."""
        if not self._owed:
            raise JournalError(f"{self.path}: no sync is owed")
        if error:
            self._sync_failed(OSError(error, os.strerror(error)))
        self._owed = False

    def _sync_failed(self, exc: OSError) -> NoReturn:
        """An owed sync failed: so does the journal (nothing more is appended)."""
        self._failed = exc
        raise JournalError(f"{self._segments[-1].path}: sync failed: {exc}") from exc

    def roll(self) -> bool:
        """Start a new segment now (the sequencer calls it at each local trading day).  A
        no-op that returns False when the current segment holds no record yet."""
        self._writable()
        if self._owed:
            raise JournalError(f"{self.path}: the append before is waiting for its sync")
        if self._segments[-1].count == 0:
            return False
        self._roll()
        return True

    def _roll(self) -> None:
        cur = self._segments[-1]
        if self.preallocate:  # the old segment's zeros beyond its records: room for the new
            assert self._fd is not None
            with contextlib.suppress(OSError):  # any left are read as the end of records
                os.ftruncate(self._fd, cur.size)
        try:
            seg = self._create_segment(cur.index + 1, self._next_seq)
            fd = os.open(seg.path, os.O_WRONLY | os.O_CLOEXEC)
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
        if self.preallocate:
            self._start_preparing()

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
                        end, obj = _read_frame(mm, off, size, seq)
                    except _Defect as d:
                        raise JournalCorrupt(path, d.offset, d.reason) from None
                    try:
                        cmd = decode(obj[3])
                    except CodecError as exc:
                        raise JournalCorrupt(path, off, f"seq {seq}: {exc}") from None
                    yield Record(seq, obj[1], obj[2], cmd,
                                 None if len(obj) == 4 else (obj[4][0], obj[4][1]))
                    off = end
                    seq += 1


def _map(path: Path, size: int) -> mmap.mmap:
    """A read-only map of the first ``size`` bytes of a segment the journal already knows."""
    try:
        with open(path, "rb") as f:
            return mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ)  # outlives the fd
    except (OSError, ValueError) as exc:
        raise JournalCorrupt(path, 0, f"segment vanished or shrank: {exc}") from None


def _write_all(fd: int, data: bytes | memoryview, at: int) -> None:
    """Write ``data`` whole at offset ``at`` of the file."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, at)
        at += n
        view = view[n:]


def _zero_fill(fd: int, start: int, end: int, sync: bool = True) -> None:
    """Write zeros over ``[start, end)`` of the file (nothing if ``end <= start``), then
    ``fsync`` it if ``sync``: space that records later overwrite without changing the
    file's size (see Preallocation in the module docstring)."""
    if end <= start:
        return
    at = start
    while at < end:
        _write_all(fd, _ZEROS[:min(len(_ZEROS), end - at)], at)
        at = min(end, at + len(_ZEROS))
    if sync:
        os.fsync(fd)


def _zero_fill_room(fd: int, path: Path, start: int, end: int, sync: bool) -> None:
    """:func:`_zero_fill`, if the disk has room: on a full disk (or a quota, or a file-size
    limit) the zeros written are cut off again and the segment goes on unpreallocated (its
    appends then grow the file, as without preallocation); any other error is raised."""
    try:
        _zero_fill(fd, start, end, sync)
    except OSError as exc:
        if exc.errno not in _NO_ROOM:
            raise
        os.ftruncate(fd, start)
        if sync:
            os.fsync(fd)
        log.warning("journal: no room to zero-fill %s (%s); appending without", path, exc)


def _nonzero_end(buf: Any, start: int, end: int) -> int:
    """The offset just after the last non-zero byte of ``buf[start:end]`` (``start`` if
    there is none), read backwards in chunks: a preallocated segment is mostly zeros."""
    hi = end
    step = len(_ZEROS)
    while hi > start:
        lo = max(start, hi - step)
        chunk = buf[lo:hi]
        if chunk != (_ZERO_BYTES if hi - lo == step else _ZERO_BYTES[:hi - lo]):
            return lo + len(chunk.rstrip(b"\0"))
        hi = lo
    return start


def _torn(buf: Any, d: _Defect, size: int, left: int) -> bool:
    """Whether the bad frame at ``d.offset`` of the last segment is a write that did not
    complete, ``left`` being the end of the file's non-zero bytes (module docstring:
    Opening and torn tails)."""
    off = d.offset
    length = _FRAME.unpack_from(buf, off)[0] if off + FRAME_SIZE <= size else 0
    if d.crc_ok and length:
        return False  # its bytes are the ones written: a bug or a forgery, not a torn write
    end = off + FRAME_SIZE + length
    if left - off > MAX_WRITE and not (end - off <= MAX_RECORD and left <= end):
        # more than one piece after it (a record larger than a piece is written alone: its
        # claimed frame may hold what is left): acknowledged data is damaged
        return False
    if d.torn or length == 0 or end > left:
        return True  # cut short by the end of the file or of what was written; a written
                     # frame's length is never 0
    end = min(size, end)
    sector = off - off % SECTOR
    while sector < end:  # a sector of it never written: the zeros are still there
        lo, hi = max(off, sector), min(size, sector + SECTOR)
        if hi - lo >= 4 and not any(buf[lo:hi]):
            return True
        sector += SECTOR
    return False


