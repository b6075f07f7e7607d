"""The journal (DESIGN rules 1, 3, 7): the documented file format, segments and rolling,
reopening, torn tails cut at every byte, corruption refused with file and offset, group
commit, and a writer SIGKILLed mid-batch losing nothing it acknowledged."""

from __future__ import annotations

import contextlib
import os
import runpy
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import engine.commands as c
from engine.model import BasketType, Side
from gateway.codec import Codec, CodecError, encode
from gateway.journal import (
    DEFAULT_SEGMENT_BYTES,
    HEADER_SIZE,
    MAGIC,
    MAX_RECORD,
    MAX_WRITE,
    Journal,
    JournalCorrupt,
    JournalError,
    Record,
    segment_name,
)

T0 = 1_800_000_000_000
ORIGINS = ("trader1", "operator", "calendar", "sync", "trader-ü")


def command(seq: int) -> Any:
    """A deterministic variety of commands, so that any record can be checked by its seq."""
    order = c.NewOrder(f"u{seq % 7}", "A1", "U1", f"PH-20270115-{seq % 24 + 1:02d}",
                       Side.BUY if seq % 2 else Side.SELL, 4000 + seq, seq % 500 + 1,
                       req_id=f"r{seq}")
    kind = seq % 6
    if kind == 0:
        return c.CancelOrder("u1", "A1", seq, f"r{seq}")
    if kind == 1:
        return c.EnterBasket("u1", "A1", BasketType.VALID, (order, order), f"b{seq}")
    if kind == 2:
        return c.Tick()
    if kind == 3:
        return c.Deactivate("u1", "A1", (seq, seq + 1) if seq % 4 else None)
    return order


def record(seq: int) -> Record:
    """Every fifth record carries an AMQP request's idempotency key (a fifth element)."""
    key = (f"m-{seq}", seq.to_bytes(16, "big")) if seq % 5 == 0 else None
    return Record(seq, T0 + seq, ORIGINS[seq % len(ORIGINS)], command(seq), key)


def batch(start: int, n: int) -> list[Record]:
    return [record(s) for s in range(start, start + n)]


def fill(j: Journal, n: int, size: int = 7) -> None:
    """Append ``n`` more records in batches of up to ``size``."""
    end = j.next_seq + n
    while j.next_seq < end:
        j.append(batch(j.next_seq, min(size, end - j.next_seq)))


def check_records(j: Journal, last: int, first: int = 1) -> None:
    got = list(j.records(first))
    assert [r.seq for r in got] == list(range(first, last + 1))
    assert got == [record(s) for s in range(first, last + 1)]


def frames(path: Path) -> list[tuple[int, int]]:
    """(offset, end) of every record frame in a segment file, parsed independently."""
    data = path.read_bytes()
    out, off = [], HEADER_SIZE
    while off < len(data):
        (length,) = struct.unpack_from(">I", data, off)
        out.append((off, off + 8 + length))
        off += 8 + length
    return out


def build(path: Path, n: int, **kw: Any) -> None:
    with Journal(path, fsync=False, **kw) as j:
        fill(j, n)


# --- format, round trip, segments ------------------------------------------------------------


def test_file_format_is_exactly_the_documented_one(tmp_path: Path) -> None:
    """Four elements, or five with a request's key (record 5): [message_id, digest]."""
    with Journal(tmp_path / "j") as j:
        j.append([record(s) for s in range(1, 6)])
    data = (tmp_path / "j" / "journal-000001.rjl").read_bytes()
    assert data[:8] == MAGIC == b"RONDAJ1\n"
    assert struct.unpack(">Q", data[8:16]) == (1,)
    off = 16
    for seq in range(1, 6):
        length, crc = struct.unpack(">II", data[off:off + 8])
        payload = data[off + 8:off + 8 + length]
        assert zlib.crc32(payload) == crc
        rec = record(seq)
        key = [] if seq < 5 else [["m-5", bytes(15) + b"\x05"]]
        assert msgpack.unpackb(payload) == [seq, rec.ts, rec.origin, encode(rec.command),
                                            *key]
        off += 8 + length
    assert off == len(data)


def test_round_trip_across_several_segments(tmp_path: Path) -> None:
    d = tmp_path / "j"
    with Journal(d, fsync=False, segment_bytes=4096) as j:
        for size in (1, 3, 50, 7, 1, 120, 2) * 10:
            j.append(batch(j.next_seq, size))
        last = j.next_seq - 1
        assert last == 1840
        assert len(j.segments) > 10
        assert j.segments == [d / segment_name(i) for i in range(1, len(j.segments) + 1)]
        check_records(j, last)
    with Journal(d, segment_bytes=4096) as j:
        assert (j.next_seq, j.recovered_tail_bytes, j.first_seq) == (last + 1, 0, 1)
        check_records(j, last)
        check_records(j, last, first=777)
        first_seqs = []
        for p in j.segments:
            data = p.read_bytes()
            first_seqs.append(struct.unpack(">Q", data[8:16])[0])
            # a segment only passes the limit through a single batch that started it
            assert len(data) <= 4096 or len(frames(p)) <= 120
        assert first_seqs == sorted(first_seqs) and first_seqs[0] == 1


def test_a_batch_is_never_split_across_segments(tmp_path: Path) -> None:
    with Journal(tmp_path / "a", fsync=False, segment_bytes=1024) as j:
        j.append(batch(1, 100))  # too big for an empty segment: it goes there all the same
        assert [len(frames(p)) for p in j.segments] == [100]
    with Journal(tmp_path / "b", fsync=False, segment_bytes=1024) as j:
        j.append(batch(1, 2))
        j.append(batch(3, 100))  # bigger than a segment: starts one and fills it alone
        j.append(batch(103, 1))
        assert [len(frames(p)) for p in j.segments] == [2, 100, 1]
        check_records(j, 103)


def test_roll_starts_a_segment_and_is_a_no_op_on_an_empty_one(tmp_path: Path) -> None:
    with Journal(tmp_path) as j:
        assert j.roll() is False  # nothing in segment 1 yet
        assert len(j.segments) == 1
        fill(j, 5)
        assert j.roll() is True
        assert j.roll() is False
        assert [p.name for p in j.segments] == ["journal-000001.rjl", "journal-000002.rjl"]
        assert j.segments[1].read_bytes() == MAGIC + struct.pack(">Q", 6)
        fill(j, 3)
        assert j.roll() is True
        check_records(j, 8)
    with Journal(tmp_path) as j:
        assert len(j.segments) == 3 and j.next_seq == 9
        fill(j, 1)
        assert [len(frames(p)) for p in j.segments] == [5, 3, 1]
        check_records(j, 9)


def test_reopen_continues_the_sequence(tmp_path: Path) -> None:
    for rounds in range(1, 4):
        with Journal(tmp_path, segment_bytes=2048) as j:
            assert j.next_seq == 1 + 40 * (rounds - 1)
            fill(j, 40)
    with Journal(tmp_path) as j:
        check_records(j, 120)


def test_empty_directory_and_missing_directory(tmp_path: Path) -> None:
    for d in (tmp_path, tmp_path / "a" / "b"):
        with Journal(d) as j:
            assert (j.next_seq, j.first_seq, j.recovered_tail_bytes) == (1, 1, 0)
            assert list(j.records()) == []
            assert j.segments == [d / "journal-000001.rjl"]
        assert (d / "journal-000001.rjl").read_bytes() == MAGIC + struct.pack(">Q", 1)
        with Journal(d) as j:
            assert j.next_seq == 1 and len(j.segments) == 1


def test_other_files_in_the_directory_are_ignored(tmp_path: Path) -> None:
    build(tmp_path, 3)
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "journal-1.rjl").write_bytes(b"junk")  # not a segment name
    with Journal(tmp_path) as j:
        check_records(j, 3)


def test_records_from_a_seq(tmp_path: Path) -> None:
    with Journal(tmp_path, fsync=False, segment_bytes=1024) as j:
        fill(j, 60, size=5)
        check_records(j, 60, first=1)
        for first in (2, 5, 6, 31, 60):
            check_records(j, 60, first=first)
        assert list(j.records(61)) == []
        assert list(j.records(1000)) == []
        with pytest.raises(ValueError, match="from_seq"):
            j.records(0)


def test_records_is_a_snapshot_even_while_appending_and_rolling(tmp_path: Path) -> None:
    with Journal(tmp_path, fsync=False) as j:
        fill(j, 10)
        it = j.records()
        first = next(it)
        fill(j, 5)
        j.roll()
        fill(j, 5)
        rest = list(it)
        assert [first.seq] + [r.seq for r in rest] == list(range(1, 11))
        check_records(j, 20)


def test_archived_leading_segments(tmp_path: Path) -> None:
    with Journal(tmp_path, fsync=False) as j:
        fill(j, 5)
        j.roll()
        fill(j, 5)
    (tmp_path / "journal-000001.rjl").unlink()  # archived away
    with Journal(tmp_path) as j:
        assert (j.first_seq, j.next_seq) == (6, 11)
        with pytest.raises(JournalError, match="records before seq 6 are not in this journal"):
            j.records()
        check_records(j, 10, first=6)


# --- appending -------------------------------------------------------------------------------


def test_append_checks_the_batch_before_writing_anything(tmp_path: Path) -> None:
    with Journal(tmp_path) as j:
        fill(j, 3)
        seg = j.segments[-1]
        size = seg.stat().st_size
        R: Any = Record  # wrong field types are the point
        bad_batches: list[tuple[list[Any], type[Exception], str]] = [
            ([record(4), record(6)], ValueError, "record seq 6, expected 5"),
            ([record(5)], ValueError, "record seq 5, expected 4"),
            ([record(4), Record(5, T0, "u", "not a command")], CodecError, "not a registered"),
            ([Record(4, -1, "u", c.Tick())], ValueError, "ts must be an int"),
            ([R(4, 1.5, "u", c.Tick())], ValueError, "ts must be an int"),
            ([Record(4, T0, "", c.Tick())], ValueError, "origin must be a non-empty str"),
            ([R(4, T0, None, c.Tick())], ValueError, "origin must be a non-empty str"),
            ([Record(4, T0, "u\ud800", c.Tick())], ValueError, "origin is not UTF-8"),
            ([Record(True, T0, "u", c.Tick())], ValueError, "record seq True"),
            ([Record(4, T0, "u", c.Tick(), ("", bytes(16)))], ValueError, "key must be"),
            ([Record(4, T0, "u", c.Tick(), ("m", bytes(15)))], ValueError, "key must be"),
            ([R(4, T0, "u", c.Tick(), ["m", bytes(16)])], ValueError, "key must be"),
            ([R(4, T0, "u", c.Tick(), ("m", "x" * 16))], ValueError, "key must be"),
            ([Record(4, T0, "u", c.Tick(), ("m\ud800", bytes(16)))], ValueError,
             "message_id is not UTF-8"),
        ]
        for records, exc, message in bad_batches:
            with pytest.raises(exc, match=message):
                j.append(records)
            assert seg.stat().st_size == size
            assert j.next_seq == 4
        j.append([])  # an empty batch is nothing
        assert seg.stat().st_size == size
        fill(j, 2)
        check_records(j, 5)


@pytest.mark.parametrize("preallocate", [False, True])
def test_group_commit_one_write_and_one_fsync_per_batch(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        preallocate: bool) -> None:
    """One write and one sync per batch: ``fdatasync`` (data and size, not the timestamps)
    on Linux, where these tests run.  (Only this journal's files are counted: another
    test's journal may still be zero-filling a segment in a thread of its own.)"""
    calls: list[tuple[str, int]] = []
    real_write, real_fsync, real_fdatasync = os.pwrite, os.fsync, os.fdatasync

    def note(kind: str, fd: int) -> None:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{fd}").startswith(str(tmp_path)):
                calls.append((kind, fd))

    def write(fd: int, data: Any, at: int) -> int:
        note("write", fd)
        return real_write(fd, data, at)

    def fsync(fd: int) -> None:
        note("fsync", fd)
        real_fsync(fd)

    def fdatasync(fd: int) -> None:
        note("fdatasync", fd)
        real_fdatasync(fd)

    with Journal(tmp_path / "a", preallocate=preallocate, segment_bytes=1 << 20) as j:
        prepared(j)
        monkeypatch.setattr(os, "pwrite", write)
        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "fdatasync", fdatasync)
        j.append(batch(1, 500))
        j.append(batch(501, 1))
        j.append(batch(502, 200))
        monkeypatch.undo()
        fd = j._fd
        assert calls == [("write", fd), ("fdatasync", fd)] * 3
        check_records(j, 701)
    calls.clear()
    with Journal(tmp_path / "b", fsync=False, preallocate=preallocate) as j:
        prepared(j)  # (its next segment zero-filled by a thread of its own: not counted)
        monkeypatch.setattr(os, "pwrite", write)
        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "fdatasync", fdatasync)
        j.append(batch(1, 50))
        j.append(batch(51, 50))
        monkeypatch.undo()
        assert calls == [("write", j._fd)] * 2


def record_syncs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """From now on, every ``fsync`` and ``fdatasync``: (which, the file's path)."""
    synced: list[tuple[str, str]] = []
    real_fsync, real_fdatasync = os.fsync, os.fdatasync

    def fsync(fd: int) -> None:
        synced.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def fdatasync(fd: int) -> None:
        synced.append(("fdatasync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "fdatasync", fdatasync)
    return synced


def test_a_new_segment_is_durable_before_records_go_in(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    with Journal(tmp_path, segment_bytes=1024) as j:
        j.append(batch(1, 5))
        synced = record_syncs(monkeypatch)
        j.append(batch(6, 20))  # rolls first
        monkeypatch.undo()
    seg2 = str(tmp_path / "journal-000002.rjl")
    # the new file whole (header), its directory entry, then the batch's data
    assert synced == [("fsync", seg2), ("fsync", str(tmp_path)), ("fdatasync", seg2)]


def test_a_failed_write_stops_the_journal_until_reopened(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    with Journal(tmp_path) as j:
        fill(j, 3)

        def broken(fd: int) -> None:
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(os, "fdatasync", broken)
        with pytest.raises(JournalError, match="append failed"):
            j.append(batch(4, 2))
        monkeypatch.undo()
        assert j.next_seq == 4  # not acknowledged
        with pytest.raises(JournalError, match="an earlier write failed"):
            j.append(batch(4, 1))
        with pytest.raises(JournalError, match="an earlier write failed"):
            j.roll()
    with Journal(tmp_path) as j:  # the written but unacknowledged batch may stay: it is whole
        assert j.next_seq == 6
        fill(j, 1)
        check_records(j, 6)


def test_closed_journal_refuses_work(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    for call in (lambda: j.append(batch(1, 1)), j.roll, j.records):
        with pytest.raises(JournalError, match="not open"):
            call()
    j.open()
    assert j.is_open
    j.close()
    j.close()  # idempotent
    assert not j.is_open
    with pytest.raises(JournalError, match="not open"):
        j.append(batch(1, 1))


def test_one_writer_at_a_time(tmp_path: Path) -> None:
    with Journal(tmp_path) as j:
        other = Journal(tmp_path)
        with pytest.raises(JournalError, match="locked by another writer"):
            other.open()
        with pytest.raises(JournalError, match="already open"):
            j.open()
        assert not other.is_open
    with Journal(tmp_path) as j:  # released on close
        assert j.next_seq == 1


def test_constructor_checks_its_arguments(tmp_path: Path) -> None:
    assert Journal(tmp_path).segment_bytes == DEFAULT_SEGMENT_BYTES == 64 * 1024 * 1024
    for bad in (0, 16, -1, 1.5):
        with pytest.raises(ValueError, match="segment_bytes"):
            Journal(tmp_path, segment_bytes=bad)  # type: ignore[arg-type]


# --- torn tails ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def five(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The bytes of a one-segment journal of five records."""
    d = tmp_path_factory.mktemp("five")
    build(d, 5)
    return (d / "journal-000001.rjl").read_bytes()


def reopen(tmp: Path, data: bytes, name: str = "journal-000001.rjl") -> Journal:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / name).write_bytes(data)
    return Journal(tmp).open()


def test_cut_at_every_byte_inside_the_last_record(tmp_path: Path, five: bytes) -> None:
    start, end = frames_of(five)[-1]
    assert end == len(five)
    for cut in range(start, end):
        d = tmp_path / f"cut{cut}"
        j = reopen(d, five[:cut])
        try:
            # what the write had left: a frame's first bytes are the zeros of a small length
            left = five[start:cut].rstrip(b"\0")
            assert j.recovered_tail_bytes == len(left)
            assert j.next_seq == 5
            on_disk = (d / "journal-000001.rjl").read_bytes()
            assert on_disk == (five[:start] if left else five[:cut])  # zeros alone: not cut
            check_records(j, 4)
            j.append([record(5)])
        finally:
            j.close()
        with Journal(d) as j:  # the repaired journal is clean and whole again
            assert j.recovered_tail_bytes == 0
            check_records(j, 5)
        shutil.rmtree(d)


def frames_of(data: bytes) -> list[tuple[int, int]]:
    out, off = [], HEADER_SIZE
    while off < len(data):
        (length,) = struct.unpack_from(">I", data, off)
        out.append((off, off + 8 + length))
        off += 8 + length
    return out


def test_the_cut_is_made_durable(tmp_path: Path, five: bytes,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[tuple[str, int]] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append((os.readlink(f"/proc/self/fd/{fd}"), os.fstat(fd).st_size))
        real_fsync(fd)

    (tmp_path / "journal-000001.rjl").write_bytes(five[:-1])
    monkeypatch.setattr(os, "fsync", fsync)
    with Journal(tmp_path) as j:
        assert j.recovered_tail_bytes > 0
    start = frames_of(five)[-1][0]
    assert (str(tmp_path / "journal-000001.rjl"), start) in synced


def test_a_torn_multi_record_batch_keeps_its_whole_records(tmp_path: Path, five: bytes) -> None:
    # records 3..5 were one batch; the write stopped inside record 4
    spans = frames_of(five)
    cut = spans[3][0] + 11
    with reopen(tmp_path, five[:cut]) as j:
        assert j.recovered_tail_bytes == 11
        check_records(j, 3)  # record 3 is whole: kept (it was never acknowledged either)


@pytest.mark.parametrize("where", ["crc", "payload_first", "payload_mid", "payload_last"])
def test_a_flipped_byte_in_the_last_record_is_cut(tmp_path: Path, five: bytes,
                                                  where: str) -> None:
    start, end = frames_of(five)[-1]
    pos = {"crc": start + 5, "payload_first": start + 8, "payload_mid": (start + end) // 2,
           "payload_last": end - 1}[where]
    data = bytearray(five)
    data[pos] ^= 0x40
    with reopen(tmp_path, bytes(data)) as j:
        assert j.recovered_tail_bytes == end - start
        check_records(j, 4)
    assert (tmp_path / "journal-000001.rjl").stat().st_size == start


def test_every_flipped_payload_byte_of_the_last_record_is_cut(tmp_path: Path,
                                                              five: bytes) -> None:
    start, end = frames_of(five)[-1]
    for pos in range(start + 8, end):
        data = bytearray(five)
        data[pos] ^= 0xFF
        d = tmp_path / str(pos)
        with reopen(d, bytes(data)) as j:
            assert (j.recovered_tail_bytes, j.next_seq) == (end - start, 5)


def test_zeros_after_the_records_are_where_they_end(tmp_path: Path, five: bytes) -> None:
    """Zeros to the end of the file are space not written yet (preallocated, or a size that
    grew before its data came): the records end there, nothing is cut, and the next records
    are written over them."""
    start, end = frames_of(five)[-1]
    for name, data, last in [("grown", five + bytes(4096), 5),
                             ("unwritten", five[:start] + bytes(end - start), 4)]:
        d = tmp_path / name
        with reopen(d, data) as j:
            assert (j.recovered_tail_bytes, j.next_seq) == (0, last + 1)
            check_records(j, last)
            assert (d / "journal-000001.rjl").read_bytes() == data
            fill(j, 3)
        with Journal(d) as j:
            check_records(j, last + 3)


def test_torn_header_of_a_new_last_segment_is_removed(tmp_path: Path) -> None:
    with Journal(tmp_path, fsync=False) as j:
        fill(j, 4)
    seg2 = tmp_path / "journal-000002.rjl"
    for partial in (b"", MAGIC[:3], MAGIC, MAGIC + b"\x00\x00"):  # crash while rolling
        seg2.write_bytes(partial)
        with Journal(tmp_path) as j:
            assert j.recovered_tail_bytes == len(partial)
            assert not seg2.exists()
            assert (j.next_seq, len(j.segments)) == (5, 1)
            check_records(j, 4)
    with Journal(tmp_path) as j:
        fill(j, 1)
        assert j.roll()
        fill(j, 1)
        assert j.segments[-1] == seg2
        check_records(j, 6)


def test_a_last_segment_of_zeros_is_a_roll_that_never_happened(tmp_path: Path) -> None:
    """A preallocated segment whose header was never written (a crash while rolling) is
    removed; in any other place it is corruption (a bad magic)."""
    with Journal(tmp_path, fsync=False) as j:
        fill(j, 4)
    seg2 = tmp_path / "journal-000002.rjl"
    seg2.write_bytes(bytes(4096))
    with Journal(tmp_path) as j:
        assert not seg2.exists() and (j.next_seq, len(j.segments)) == (5, 1)
        fill(j, 1)
        assert j.roll()
    seg1 = tmp_path / "journal-000001.rjl"
    seg1.write_bytes(bytes(4096))
    with pytest.raises(JournalCorrupt, match="bad magic"):
        Journal(tmp_path).open()


def test_a_torn_header_alone_starts_a_fresh_journal(tmp_path: Path) -> None:
    (tmp_path / "journal-000001.rjl").write_bytes(MAGIC[:5])
    with Journal(tmp_path) as j:
        assert (j.recovered_tail_bytes, j.next_seq) == (5, 1)
        fill(j, 2)
        check_records(j, 2)


# --- corruption ------------------------------------------------------------------------------


def test_corruption_in_the_middle_names_file_and_offset(tmp_path: Path, five: bytes) -> None:
    spans = frames_of(five)
    for k in range(4):  # every record but the last
        start, end = spans[k]
        data = bytearray(five)
        data[(start + 8 + end) // 2] ^= 0x01
        d = tmp_path / str(k)
        with pytest.raises(JournalCorrupt) as info:
            reopen(d, bytes(data))
        err = info.value
        assert (err.path, err.offset) == (d / "journal-000001.rjl", start)
        assert f"journal-000001.rjl: offset {start}: CRC mismatch" in str(err)
        assert (d / "journal-000001.rjl").read_bytes() == bytes(data)  # nothing cut
        with pytest.raises(JournalCorrupt):
            Journal(d).open()  # and the lock was released for the next attempt


def test_a_shortened_length_in_the_last_record_is_corruption(tmp_path: Path,
                                                             five: bytes) -> None:
    start, end = frames_of(five)[-1]
    data = bytearray(five)
    struct.pack_into(">I", data, start, end - start - 8 - 3)  # frame ends 3 bytes early
    with pytest.raises(JournalCorrupt) as info:
        reopen(tmp_path, bytes(data))
    assert info.value.offset == start


def test_damage_to_a_non_last_segment_is_never_a_torn_tail(tmp_path: Path) -> None:
    with Journal(tmp_path / "src", fsync=False) as j:
        fill(j, 5)
        j.roll()
        fill(j, 5)
    seg1 = (tmp_path / "src" / "journal-000001.rjl").read_bytes()
    seg2 = (tmp_path / "src" / "journal-000002.rjl").read_bytes()
    start, end = frames_of(seg1)[-1]
    flipped = bytearray(seg1)
    flipped[end - 1] ^= 0x10
    unwritten = seg1[:start] + bytes(end - start)  # its last record's sector lost
    for name, bad, offset in [("cut", seg1[:end - 3], start), ("flip", bytes(flipped), start),
                              ("unwritten", unwritten, 8)]:
        d = tmp_path / name
        d.mkdir()
        (d / "journal-000002.rjl").write_bytes(seg2)
        with pytest.raises(JournalCorrupt) as info:
            reopen(d, bad)
        bad_file = "journal-000002.rjl" if name == "unwritten" else "journal-000001.rjl"
        assert (info.value.path, info.value.offset) == (d / bad_file, offset)
    # zeros after a rolled segment's records: preallocated space not cut back before a crash
    d = tmp_path / "zeros"
    d.mkdir()
    (d / "journal-000002.rjl").write_bytes(seg2)
    with reopen(d, seg1 + bytes(4096)) as j:
        check_records(j, 10)


def test_a_crc_valid_but_meaningless_tail_is_corruption(tmp_path: Path, five: bytes) -> None:
    """A torn write cannot produce a matching CRC: a bad record with a good CRC is a bug."""
    for payload in (msgpack.packb({"seq": 6}), msgpack.packb([7, T0, "u", ["tick"]]),
                    msgpack.packb([6, T0, 5, ["tick"]]), b"\xc1",
                    msgpack.packb([6, T0, "u", ["tick"], ["m", bytes(15)]]),  # short digest
                    msgpack.packb([6, T0, "u", ["tick"], ["", bytes(16)]]),  # empty id
                    msgpack.packb([6, T0, "u", ["tick"], ["m", "x" * 16]]),  # str digest
                    msgpack.packb([6, T0, "u", ["tick"], ["m", bytes(16)], 1]),  # six
                    msgpack.packb([6, T0, "u", 0])):  # ends in a zero byte, as unwritten space
        frame = struct.pack(">II", len(payload), zlib.crc32(payload)) + payload
        d = tmp_path / str(zlib.crc32(payload))
        with pytest.raises(JournalCorrupt) as info:
            reopen(d, five + frame)
        assert info.value.offset == len(five)


def test_a_seq_gap_inside_a_segment_is_corruption(tmp_path: Path, five: bytes) -> None:
    payload = msgpack.packb([7, T0, "u", ["tick"]])
    frame = struct.pack(">II", len(payload), zlib.crc32(payload)) + payload
    with pytest.raises(JournalCorrupt, match="record has seq 7, expected 6"):
        reopen(tmp_path, five + frame + frame)


def test_seq_gap_between_segments(tmp_path: Path) -> None:
    with Journal(tmp_path, fsync=False) as j:
        fill(j, 5)
        j.roll()
        fill(j, 5)
    seg2 = tmp_path / "journal-000002.rjl"
    data = bytearray(seg2.read_bytes())
    struct.pack_into(">Q", data, 8, 7)
    seg2.write_bytes(bytes(data))
    with pytest.raises(JournalCorrupt) as info:
        Journal(tmp_path).open()
    assert (info.value.path, info.value.offset) == (seg2, 8)
    assert "segment starts at seq 7, expected 6" in str(info.value)


def test_a_missing_segment_is_corruption(tmp_path: Path) -> None:
    with Journal(tmp_path, fsync=False) as j:
        for _ in range(3):
            fill(j, 2)
            j.roll()
    (tmp_path / "journal-000002.rjl").unlink()
    with pytest.raises(JournalCorrupt, match=r"segment journal-000002\.rjl is missing"):
        Journal(tmp_path).open()


@pytest.mark.parametrize(
    ("header", "message", "offset"),
    [
        (b"RONDAJ2\n" + struct.pack(">Q", 1), "bad magic", 0),
        (b"ronda j1" + struct.pack(">Q", 1), "bad magic", 0),
        (MAGIC + struct.pack(">Q", 0), "first seq is 0", 8),
    ],
)
def test_header_mismatch(tmp_path: Path, five: bytes, header: bytes, message: str,
                         offset: int) -> None:
    with pytest.raises(JournalCorrupt, match=message) as info:
        reopen(tmp_path, header + five[HEADER_SIZE:])
    assert info.value.offset == offset


def test_an_incomplete_header_is_a_torn_tail_only_in_the_last_segment(tmp_path: Path) -> None:
    with Journal(tmp_path, fsync=False) as j:
        fill(j, 2)
        j.roll()
        fill(j, 2)
    (tmp_path / "journal-000001.rjl").write_bytes(MAGIC[:4])
    with pytest.raises(JournalCorrupt, match="segment header is incomplete"):
        Journal(tmp_path).open()
    (tmp_path / "journal-000001.rjl").unlink()
    (tmp_path / "journal-000003.rjl").write_bytes(b"XYZ")  # not a prefix of the magic
    with pytest.raises(JournalCorrupt, match="segment header is incomplete"):
        Journal(tmp_path).open()


def test_an_undecodable_command_is_reported_when_read(tmp_path: Path) -> None:
    """open() checks frames and record shapes; the commands are decoded by records()."""
    with Journal(tmp_path) as j:
        fill(j, 3)
    bare = Codec(engine_commands=False)  # e.g. the module registering a command not loaded
    with Journal(tmp_path, codec=bare) as j:
        assert j.next_seq == 4
        it = j.records()
        with pytest.raises(JournalCorrupt, match="seq 1: unknown command str 'enter_basket'"):
            next(it)


def test_a_file_changed_under_an_open_journal_is_detected(tmp_path: Path) -> None:
    with Journal(tmp_path) as j:
        fill(j, 5)
        seg = j.segments[0]
        data = bytearray(seg.read_bytes())
        start, end = frames(seg)[2]
        data[end - 1] ^= 0x01
        seg.write_bytes(bytes(data))
        got: list[int] = []
        with pytest.raises(JournalCorrupt) as info:
            got.extend(r.seq for r in j.records())
        assert got == [1, 2] and info.value.offset == start
        os.truncate(seg, start)
        with pytest.raises(JournalCorrupt, match="segment vanished or shrank"):
            list(j.records())


# --- preallocated segments -------------------------------------------------------------------

SEG = 64 * 1024


def prepared(j: Journal) -> Journal:
    """``j`` once its next segment's zero-filling (a thread of its own) is done."""
    if j._preparing is not None:
        j._preparing.join()
    return j


def content(data: bytes) -> list[tuple[int, int]]:
    """(offset, end) of every record frame before the zeros of a preallocated segment."""
    out, off = [], HEADER_SIZE
    while off + 8 <= len(data):
        (length,) = struct.unpack_from(">I", data, off)
        if length == 0:
            break
        out.append((off, off + 8 + length))
        off += 8 + length
    return out


def test_a_preallocated_segment_is_zeros_that_records_overwrite(tmp_path: Path) -> None:
    """The file is zero-filled to ``segment_bytes`` at once; appends write over the zeros
    (its size never changes: the sync flushes data alone) and read back in either mode."""
    with Journal(tmp_path, preallocate=True, segment_bytes=SEG) as j:
        seg = j.segments[0]
        assert seg.read_bytes()[HEADER_SIZE:] == bytes(SEG - HEADER_SIZE)
        sizes = set()
        for _ in range(6):
            fill(j, 5)
            sizes.add(seg.stat().st_size)
        assert sizes == {SEG}
        check_records(j, 30)
    data = seg.read_bytes()
    spans = content(data)
    assert len(spans) == 30 and not any(data[spans[-1][1]:])
    for k, preallocate in enumerate((True, False)):
        with Journal(tmp_path, preallocate=preallocate, segment_bytes=SEG) as j:
            assert (j.next_seq, j.recovered_tail_bytes) == (31 + k, 0)
            check_records(j, j.next_seq - 1)
            fill(j, 1)  # written where the records end, in both modes
    assert seg.stat().st_size == SEG
    with Journal(tmp_path) as j:
        check_records(j, 32)


def test_the_next_segment_is_zero_filled_ahead_and_a_roll_renames_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nxt = tmp_path / "journal-next.tmp"
    with Journal(tmp_path, preallocate=True, segment_bytes=4096) as j:
        assert j._preparing is not None  # from the start: a daily roll is cheap too
        prepared(j)
        assert nxt.read_bytes() == bytes(4096)
        fill(j, 3)
        records_end = content(j.segments[0].read_bytes())[-1][1]
        synced = record_syncs(monkeypatch)
        assert j.roll()
        fill(j, 1)
        monkeypatch.undo()
        seg1, seg2 = j.segments
        assert seg1.stat().st_size == records_end  # cut back to its records
        prepared(j)
        assert nxt.read_bytes() == bytes(4096)  # and the one after is being made
        data = seg2.read_bytes()
        last = j.next_seq - 1
        assert len(data) == 4096 and data[:HEADER_SIZE] == MAGIC + struct.pack(">Q", last)
        check_records(j, last)
    # the header is synced in the prepared file, its new name made durable, then the data
    # (the one after it, zero-filled meanwhile in its own thread, ends with an fsync)
    assert [x for x in synced if x != ("fsync", str(nxt))] == [
        ("fdatasync", str(nxt)), ("fsync", str(tmp_path)), ("fdatasync", str(seg2))]


def test_a_roll_without_a_prepared_segment_makes_it_inline(tmp_path: Path) -> None:
    """A preparation that failed (here: a directory in the way) leaves the roll to make
    its segment itself."""
    (tmp_path / "journal-next.tmp").mkdir()
    with Journal(tmp_path, preallocate=True, segment_bytes=4096) as j:
        prepared(j)
        fill(j, 30)
        assert j.roll()
        fill(j, 2)
        assert j.segments[-1].stat().st_size == 4096
        check_records(j, 32)
    (tmp_path / "journal-next.tmp").rmdir()


def test_a_leftover_next_segment_is_removed_on_open(tmp_path: Path) -> None:
    with Journal(tmp_path, preallocate=True, segment_bytes=SEG) as j:
        fill(j, 3)
    (tmp_path / "journal-next.tmp").write_bytes(b"half-made")  # a crash while preparing
    with Journal(tmp_path, preallocate=False, segment_bytes=SEG) as j:
        assert not (tmp_path / "journal-next.tmp").exists()
        check_records(j, 3)


@pytest.mark.parametrize("preallocate", [False, True])
def test_a_batch_is_written_in_pieces_each_synced(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 preallocate: bool) -> None:
    """A torn write leaves at most one piece (MAX_WRITE) after the last synced record; a
    record larger than that is a piece of its own."""
    calls: list[tuple[str, int]] = []
    real_pwrite, real_fdatasync = os.pwrite, os.fdatasync

    def pwrite(fd: int, data: Any, at: int) -> int:
        calls.append(("write", len(data)))
        return real_pwrite(fd, data, at)

    def fdatasync(fd: int) -> None:
        calls.append(("sync", 0))
        real_fdatasync(fd)

    big = c.NewOrder("u1", "A1", "U1", "PH-20270115-01", Side.BUY, 4000, 1,
                     req_id="x" * (MAX_WRITE + 10))
    records = [*batch(1, 3000), Record(3001, T0, "u1", big), *batch(3002, 10)]
    with Journal(tmp_path, preallocate=preallocate, segment_bytes=8 << 20) as j:
        prepared(j)
        monkeypatch.setattr(os, "pwrite", pwrite)
        monkeypatch.setattr(os, "fdatasync", fdatasync)
        j.append(records)
        monkeypatch.undo()
        writes = [n for kind, n in calls if kind == "write"]
        assert [k for k, _ in calls] == ["write", "sync"] * len(writes)
        assert len(writes) >= 4
        assert sum(writes) == j._segments[-1].size - HEADER_SIZE
        oversize = [n for n in writes if n > MAX_WRITE]
        assert len(oversize) == 1 and oversize[0] < MAX_WRITE + 200  # the big record alone
        # cut between records: every piece ends where a frame ends
        ends = {e for _, e in content(j.segments[0].read_bytes())}
        at = HEADER_SIZE
        for n in writes:
            at += n
            assert at in ends
        assert [r.seq for r in j.records()] == list(range(1, 3012))


@pytest.fixture(scope="module")
def torn_case(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    """A preallocated segment holding records 1..20 (acknowledged), and the same segment
    after a batch of records 21..40 was written into it (the write a crash may tear)."""
    d = tmp_path_factory.mktemp("torn")
    with Journal(d, preallocate=True, segment_bytes=SEG) as j:
        fill(j, 20)
        before = j.segments[0].read_bytes()
        j.append(batch(21, 20))
        after = j.segments[0].read_bytes()
    return before, after


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_torn_write_into_preallocated_space_is_cut_and_never_read_again(
        tmp_path: Path, torn_case: tuple[bytes, bytes], data: st.DataObject) -> None:
    """A crash in the middle of a batch leaves its bytes partly on disk: a power cut loses
    any of its 512-byte sectors, a killed write stops anywhere.  Reference model: the
    records kept are the acknowledged ones and then the batch's records that came through
    whole, up to the first that did not; the rest is cut and zeroed, so that it can never
    be read after the records written next."""
    before, after = torn_case
    spans = content(after)
    acked, written = spans[19][1], spans[-1][1]
    first, last = acked // 512, (written - 1) // 512
    lost = data.draw(st.sets(st.integers(first, last)), label="lost sectors")
    stop = data.draw(st.integers(acked, written), label="the write stopped at")
    disk = bytearray(after)
    disk[stop:written] = bytes(written - stop)
    for s in lost:  # a lost sector keeps what it held before the write
        lo, hi = s * 512, (s + 1) * 512
        disk[lo:hi] = before[lo:hi]
    whole = 0
    for off, end in spans[20:]:
        if disk[off:end] != after[off:end]:
            break
        whole += 1
    cut = spans[19 + whole][1]
    if whole < 20:
        # the one case the rules read as bit rot (module docstring): of the first frame
        # that did not come through, only the first 3 bytes were lost
        damaged = [i for i in range(cut, spans[20 + whole][1]) if disk[i] != after[i]]
        assume(damaged[-1] >= cut + 3)
    left = len(bytes(disk).rstrip(b"\0"))
    d = tmp_path / f"t{len(list(tmp_path.iterdir()))}"
    d.mkdir()
    (d / "journal-000001.rjl").write_bytes(bytes(disk))
    with Journal(d, preallocate=True, segment_bytes=SEG) as j:
        assert j.next_seq == 21 + whole
        assert j.recovered_tail_bytes == max(0, left - cut)
        check_records(j, 20 + whole)
        on_disk = (d / "journal-000001.rjl").read_bytes()
        assert on_disk[:cut] == after[:cut] and not any(on_disk[cut:])
        assert len(on_disk) == SEG
        fill(j, 2)  # shorter than what was torn: nothing of it may follow these
    with Journal(d) as j:
        assert j.recovered_tail_bytes == 0
        check_records(j, 22 + whole)


def test_lost_data_far_from_the_end_is_corruption_not_a_torn_write(tmp_path: Path) -> None:
    """Zeros where acknowledged records were, followed by more than one piece of data, are
    not a torn write: the opening stops, naming the place."""
    with Journal(tmp_path / "src", preallocate=True, segment_bytes=4 << 20) as j:
        fill(j, 8000, size=50)
    data = bytearray((tmp_path / "src" / "journal-000001.rjl").read_bytes())
    spans = content(bytes(data))
    end = spans[-1][1]
    near = next(s for s in spans if s[0] > end - MAX_WRITE + 2048)
    far = next(s for s in spans if s[0] > end - MAX_WRITE - 4096)
    for name, (off, _) in (("near", near), ("far", far)):
        bad = bytearray(data)
        sector = off - off % 512 + 512
        bad[sector:sector + 512] = bytes(512)  # a sector of records reads as zeros
        frame = next(s for s in spans if s[0] <= sector < s[1])
        d = tmp_path / name
        d.mkdir()
        (d / "journal-000001.rjl").write_bytes(bytes(bad))
        if name == "far":
            with pytest.raises(JournalCorrupt) as info:
                Journal(d).open()
            assert info.value.offset == frame[0]
        else:  # within the last piece: indistinguishable from a torn write (documented)
            with Journal(d) as j:
                assert j.next_seq == spans.index(frame) + 1


# --- a writer killed mid-batch ---------------------------------------------------------------


CHILD = '''
import sys
from engine.commands import NewOrder, Tick
from engine.model import Side
from gateway.journal import Journal, Record

T0 = 1_800_000_000_000


def expected(seq):
    if seq % 5 == 0:
        return Record(seq, T0 + seq // 3, "calendar", Tick())
    return Record(seq, T0 + seq // 3, f"trader{seq % 3}", NewOrder(
        f"trader{seq % 3}", "A1", "U1", "PH-20270115-10", Side.BUY if seq % 2 else Side.SELL,
        1000 + seq % 9000, 1 + seq % 97, req_id=f"r{seq}"))


if __name__ == "__main__":
    j = Journal(sys.argv[1], fsync=True, segment_bytes=int(sys.argv[2]),
                preallocate=sys.argv[3] == "1").open()
    print("open", j.next_seq - 1, j.recovered_tail_bytes, flush=True)
    k = 0
    while True:
        k += 1
        size = 1 + (k * 7919) % 1500
        s = j.next_seq
        j.append([expected(q) for q in range(s, s + size)])
        print("ack", j.next_seq - 1, flush=True)  # acknowledged: append returned
'''


def acks(proc: subprocess.Popen[str], want: int, timeout: float = 60) -> Iterator[int]:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    n = 0
    while n < want:
        line = proc.stdout.readline()
        assert line, "the writer died early"
        assert time.monotonic() < deadline, "the writer is too slow"
        kind, value = line.split()[:2]
        if kind == "ack":
            n += 1
            yield int(value)


@pytest.mark.parametrize("preallocate", [False, True])
def test_sigkill_mid_batch_loses_nothing_acknowledged(tmp_path: Path, preallocate: bool) -> None:
    script = tmp_path / "writer.py"
    script.write_text(CHILD)
    expected = runpy.run_path(str(script))["expected"]
    d = tmp_path / "journal"
    acknowledged = 0
    for round_, (n_acks, pause) in enumerate([(5, 0.0), (12, 0.003), (20, 0.0117)]):
        proc = subprocess.Popen([sys.executable, str(script), str(d), str(256 * 1024),
                                 str(int(preallocate))],
                                stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            opened = proc.stdout.readline().split()
            assert opened[0] == "open" and int(opened[1]) >= acknowledged
            for seq in acks(proc, n_acks):
                assert seq > acknowledged
                acknowledged = seq
            time.sleep(pause)  # land somewhere in the next batch (write or fsync)
            proc.send_signal(signal.SIGKILL)
            for line in proc.stdout:  # acknowledged before it died, still in the pipe
                acknowledged = int(line.split()[1])
        finally:
            proc.kill()
            proc.wait()
        assert proc.returncode == -signal.SIGKILL
        with Journal(d, segment_bytes=256 * 1024) as j:
            last = j.next_seq - 1
            assert last >= acknowledged, (round_, last, acknowledged)
            n = 0
            for n, rec in enumerate(j.records(), 1):
                assert rec == expected(n)
            assert n == last
            assert len(j.segments) > 1 or round_ == 0


def test_a_damaged_length_far_from_the_end_is_corruption(tmp_path: Path) -> None:
    """A bit flipped in a record's length, with more than a piece of records after it:
    the frame claims more than any record may be, so what follows it is not a torn write
    but acknowledged records, and the opening stops there."""
    with Journal(tmp_path / "src", preallocate=True, segment_bytes=1 << 20) as j:
        fill(j, 3500, size=100)
    data = bytearray((tmp_path / "src" / "journal-000001.rjl").read_bytes())
    spans = content(bytes(data))
    off = spans[100][0]
    data[off] ^= 0x01  # the length's top byte: 16 MiB more
    (tmp_path / "journal-000001.rjl").write_bytes(bytes(data))
    with pytest.raises(JournalCorrupt) as info:
        Journal(tmp_path).open()
    assert info.value.offset == off


def test_a_record_larger_than_the_journal_takes_is_refused(tmp_path: Path) -> None:
    huge = c.NewOrder("u1", "A1", "U1", "PH-20270115-01", Side.BUY, 4000, 1,
                      req_id="x" * MAX_RECORD)
    with Journal(tmp_path) as j:
        fill(j, 2)
        size = j.segments[0].stat().st_size
        with pytest.raises(ValueError, match=r"seq 4: record of \d+ bytes, more than"):
            j.append([record(3), Record(4, T0, "u1", huge)])
        assert (j.next_seq, j.segments[0].stat().st_size) == (3, size)


def test_a_disk_without_room_for_the_zeros_does_not_stop_the_journal(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No room to zero-fill (here: each zero-fill fails half-way with ENOSPC): the zeros
    written are cut off again, the next segment is not left behind half-made, and the
    journal appends, rolls and reopens, its segments growing as they are appended to."""
    import errno

    import gateway.journal as journal_mod

    real = journal_mod._zero_fill

    def full(fd: int, start: int, end: int, sync: bool = True) -> None:
        real(fd, start, (start + end) // 2, False)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(journal_mod, "_zero_fill", full)
    with Journal(tmp_path, preallocate=True, segment_bytes=SEG) as j:
        prepared(j)
        assert not (tmp_path / "journal-next.tmp").exists()
        assert j.segments[0].stat().st_size == HEADER_SIZE
        fill(j, 10)
        assert j.roll()
        fill(j, 10)
        assert [p.stat().st_size for p in j.segments] == [
            content(p.read_bytes())[-1][1] for p in j.segments]
        prepared(j)
    monkeypatch.undo()
    with Journal(tmp_path, preallocate=True, segment_bytes=SEG) as j:
        check_records(j, 20)
        assert j.segments[-1].stat().st_size == SEG  # room again: preallocated
