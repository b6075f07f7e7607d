"""Snapshots: the state a replay of the journal's first records builds, kept on disk so that
a restart replays only the records after them.

A restarting server serves nothing until it has rebuilt its state from the journal
(docs/protocol.md, Durability): about 16 s for a million records (perf/bench_recovery.py).
A snapshot holds what that replay builds up to a record S, so a restart replays only the
records after S.

**Made by a replay of its own, never from the running server.** ``ronda journal snapshot``
(which ``ronda serve`` runs every ``--snapshot-every`` seconds, as a child process at low
priority) loads the newest usable snapshot, reads the journal's records after it, *read
only* (no lock, nothing cut: it stops at the first record not yet whole), applies them to a
core of its own through the same listeners a recovery uses (:class:`Replica`), and writes
the result.  What it writes is therefore, by construction, what a restarting server's
replay would have built at S; nothing is taken from the live server's memory, whose
fan-out and repeat memory hold live forms of the same facts.

**Checked before use** (:func:`load_latest`): the file's checksum; that it was made by this
very code (:func:`fingerprint`: the server's version, the engine profile, and a digest of the
source of every package whose code makes the state); that the journal holds record S and that
this record is the one the snapshot was made from (a digest of its bytes: a record the
snapshotter read before it was synced, and that a machine crash then lost, invalidates the
snapshot); that the core's state hash after loading is the one recorded when it was written;
and that the settlement store has synchronised at least the rounds the snapshot dropped.  A
snapshot failing any check is logged and passed over: the server replays the whole journal,
as without snapshots.  The checkpoints after S are checked by the replay of the tail as
usual, and those before S were checked by the snapshotter's replay (its findings travel in
the snapshot: :class:`gateway.core.CheckpointCheck`).

Format: ``MAGIC``, a header (JSON: seq, the record's digest, state hash, fingerprint, rounds
settled, payload size and BLAKE2b), then the payload (a pickle of :class:`State`).  Files
``snap-<seq>.bin`` in ``DATA_DIR/snapshots``, written to a temporary file, synced and
renamed; the newest :data:`KEEP` are kept.  A pickle is only ever read from the server's
own data folder, written by its own code (the same trust as the journal).
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import pickle
import re
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from gateway.journal import (
    _FRAME,
    _HEADER,
    _SEGMENT_RE,
    FRAME_SIZE,
    HEADER_SIZE,
    Journal,
    JournalCorrupt,
    JournalError,
    Record,
    _check_key,
    _Defect,
    _fsync_dir,
    _read_frame,
)
from gateway.journal import (
    MAGIC as JOURNAL_MAGIC,
)

log = logging.getLogger("ronda.snapshot")

MAGIC = b"RONDASN1"
KEEP = 2
_LEN = struct.Struct(">I")
_NAME = re.compile(r"snap-(\d{12})\.bin")
# the packages whose code makes the state a replay builds
_SOURCES = ("engine", "risk", "auctions", "gateway", "sync")
_ROOT = Path(__file__).resolve().parents[1]
_fingerprints: dict[str, str] = {}


def fingerprint(profile: str) -> str:
    """This code's identity for ``profile``: a snapshot made by other code is not used."""
    fp = _fingerprints.get(profile)
    if fp is None:
        from gateway.core import SERVER

        h = hashlib.blake2b(digest_size=16)
        h.update(f"{SERVER}\0{profile}\0".encode())
        for pkg in _SOURCES:
            for p in sorted((_ROOT / pkg).rglob("*.py")):
                h.update(str(p.relative_to(_ROOT)).encode() + b"\0")
                h.update(p.read_bytes())
        fp = _fingerprints[profile] = h.hexdigest()
    return fp


def record_digest(payload: bytes | memoryview) -> str:
    return hashlib.blake2b(payload, digest_size=16).hexdigest()


# ---------------------------------------------------------------------- reading the journal


def read_records(journal_dir: Path, from_seq: int, *, decode: Any = None
                 ) -> Iterator[tuple[Record, str]]:
    """The records with ``seq >= from_seq`` and each one's digest, read from a journal
    another process may be appending to: without its lock, changing nothing, and stopping
    at the first record that is not whole yet (or at the zeros of a preallocated segment).
    Each segment is read into memory, not mapped: the server may cut its current segment
    (a roll) while it is read.  Raises :class:`JournalError` when the records from
    ``from_seq`` are not all there (segments archived away, a gap between segments), and
    :class:`JournalCorrupt` on a defect that is not at the end."""
    if decode is None:
        from gateway.codec import default_codec

        decode = default_codec().decode
    found = sorted((int(m.group(1)), p) for p in journal_dir.iterdir()
                   if (m := _SEGMENT_RE.fullmatch(p.name)) and p.is_file())
    # a segment whose successor starts at or before from_seq holds nothing asked for: it is
    # not read, only the headers are (the snapshotter asks for the records after its last
    # snapshot every few minutes, and a journal keeps its earlier days' segments)
    firsts = [_first_seq(path) for _index, path in found]
    expected: int | None = None  # the seq the next segment must start with
    for k, (_index, path) in enumerate(found):
        last = k == len(found) - 1
        nxt = None if last else firsts[k + 1]
        if nxt is not None and nxt <= from_seq:
            expected = nxt
            continue
        with open(path, "rb") as f:
            buf = f.read()
        size = len(buf)
        if size < HEADER_SIZE:
            if last:
                return  # a segment being started
            raise JournalCorrupt(path, 0, "segment header is incomplete")
        magic, first = _HEADER.unpack_from(buf, 0)
        if magic != JOURNAL_MAGIC:
            if last and magic == b"\0" * 8:
                return  # a preallocated segment whose header is not written yet
            raise JournalCorrupt(path, 0, f"bad magic {magic!r}")
        if expected is None and first > from_seq:
            raise JournalError(f"{journal_dir}: records before seq {first} are not in this "
                               f"journal (asked from {from_seq})")
        if expected is not None and first != expected:
            raise JournalError(f"{path}: starts at seq {first}, expected {expected}")
        off, seq = HEADER_SIZE, first
        while off < size:
            if seq < from_seq:  # skip by the frames alone: seqs are consecutive
                if off + FRAME_SIZE > size:
                    break
                length = _FRAME.unpack_from(buf, off)[0]
                if length == 0 or off + FRAME_SIZE + length > size:
                    break
                off += FRAME_SIZE + length
                seq += 1
                continue
            try:
                end, obj = _read_frame(buf, off, size, seq)
            except _Defect as d:
                if buf.count(0, d.offset) == size - d.offset:
                    break  # only zeros follow: where this segment's records end
                if last:
                    return  # not whole yet: the end, for now
                raise JournalCorrupt(path, d.offset, d.reason) from None
            key = None
            if len(obj) == 5:
                key = (obj[4][0], obj[4][1])
                _check_key(seq, key)
            yield (Record(seq, obj[1], obj[2], decode(obj[3]), key),
                   record_digest(buf[off + FRAME_SIZE:end]))
            off = end
            seq += 1
        expected = seq


def _first_seq(path: Path) -> int | None:
    """The first seq of a segment, from its header (None: no whole, valid header)."""
    try:
        with open(path, "rb") as f:
            head = f.read(HEADER_SIZE)
    except OSError:
        return None
    if len(head) < HEADER_SIZE:
        return None
    try:
        return Journal._check_header(path, head, None)
    except JournalCorrupt:
        return None


def digest_at(journal_dir: Path, seq: int) -> str | None:
    """The digest of record ``seq``, read as :func:`read_records` reads (None if the
    journal does not hold it, or not whole yet)."""
    try:
        for rec, digest in read_records(journal_dir, seq):
            return digest if rec.seq == seq else None
    except JournalError:
        return None
    return None


def digest_of(journal: Journal, seq: int) -> str | None:
    """The digest of record ``seq`` of an open journal (None if it does not hold it)."""
    for path, first, count in journal.segment_ranges():
        if not first <= seq < first + count:
            continue
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            off = HEADER_SIZE
            for _ in range(seq - first):
                off += FRAME_SIZE + _FRAME.unpack_from(mm, off)[0]
            length = _FRAME.unpack_from(mm, off)[0]
            return record_digest(mm[off + FRAME_SIZE:off + FRAME_SIZE + length])
    return None


# ---------------------------------------------------------------------- the state


# what SyncJob.observe builds (sync/job.py), besides the rounds it drops once settled
SYNC_FIELDS = ("trades", "trade_refs", "side_refs", "order_refs", "closes", "released_seen",
               "auctions", "session_refs", "auction_rounds", "round_now")


@dataclass
class State:
    """What a recovery's replay builds, up to record ``seq``."""

    seq: int
    last_ts: int
    applied: int
    clock_last: int
    synced_through: int  # the sync job's trades and closes of rounds up to it are dropped
    core: Any
    check: Any
    sync: dict[str, Any]
    hub: tuple[Any, Any, Any]  # Hub._replayed_own, _replayed_public, trade_seq
    audit: tuple[Any, int, int]  # AuditLog.entries, seq, last_ts
    executed: tuple[Any, int]  # Executed.entries, items
    watches: dict[str, int]  # Watches.open


class Replica:
    """A core and the listeners a recovery replays through, as ``Server.start`` wires them
    (``Sequencer.recover``), without any network, store or clock."""

    def __init__(self, profile: str, state: State | None = None, synced_through: int = 0
                 ) -> None:
        from engine.config import PROFILES
        from gateway.audit import AuditLog
        from gateway.codec import default_codec
        from gateway.core import CheckpointCheck, Core, Watches
        from gateway.executed import Executed
        from gateway.fanout import Hub
        from sync.job import SyncJob

        self.core = Core(PROFILES[profile])
        self.sync = SyncJob(self.core, cast(Any, None))
        self.hub = Hub(self.core, 1)
        self.audit = AuditLog(default_codec())
        self.executed = Executed()
        self.watches = Watches()
        self.check = CheckpointCheck()
        self.seq = self.last_ts = self.applied = self.clock_last = 0
        self.synced_through = synced_through
        if state is not None:
            self.seq, self.last_ts, self.applied = state.seq, state.last_ts, state.applied
            self.clock_last = state.clock_last
            install(state, self.core, self.sync, self.hub, self.audit, self.executed,
                    max(synced_through, state.synced_through), self.watches)
            self.check = state.check
            self.synced_through = max(synced_through, state.synced_through)
        self.sync.last_synced = self.synced_through
        from gateway.sequencer import recovery_listeners

        self.listeners = recovery_listeners(self.sync, self.hub, self.audit, self.watches)

    def apply(self, rec: Record) -> None:
        from gateway.sequencer import replay_record

        replay_record(self.core, self.check, rec, self.listeners, self.executed.recovered)
        self.clock_last = max(self.clock_last, rec.ts)
        self.applied += 1
        self.seq, self.last_ts = rec.seq, rec.ts

    def state(self) -> State:
        sync, hub = self.sync, self.hub
        return State(self.seq, self.last_ts, self.applied, self.clock_last,
                     self.synced_through, self.core, self.check,
                     {k: getattr(sync, k) for k in SYNC_FIELDS},
                     (dict(hub._replayed_own), hub._replayed_public, hub.trade_seq),
                     (self.audit.entries, self.audit.seq, self.audit.last_ts),
                     (self.executed.entries, self.executed.items), dict(self.watches.open))


def install(state: State, core: Any, sync: Any, hub: Any, audit: Any, executed: Any,
            synced_through: int, watches: Any) -> None:
    """Put ``state`` into a server's (or a replica's) objects, as if they had replayed the
    journal up to ``state.seq``; the sync job keeps the trades and closes of the rounds
    after ``synced_through`` only, as its replay after that round's synchronisation keeps
    (sync/job.py, ``observe``)."""
    core.__dict__.update(state.core.__dict__)
    for k in SYNC_FIELDS:
        setattr(sync, k, state.sync[k])
    sync.trades = type(sync.trades)(
        sync.trades.default_factory, {r: t for r, t in sync.trades.items() if r > synced_through})
    sync.closes = {r: c for r, c in sync.closes.items() if r > synced_through}
    sync._prune_refs()  # the reference data of the trades it dropped
    own, hub._replayed_public, hub.trade_seq = state.hub
    hub._replayed_own.clear()  # (its default factory, a lambda, is not pickled)
    hub._replayed_own.update(own)
    audit.entries, audit.seq, audit.last_ts = state.audit
    executed.entries, executed.items = state.executed
    watches.open = dict(state.watches)


# ---------------------------------------------------------------------- files


def _path(folder: Path, seq: int) -> Path:
    return folder / f"snap-{seq:012d}.bin"


def write(folder: Path, state: State, record: str, profile: str) -> Path:
    """Write ``state`` (made up to a record whose digest is ``record``) atomically, then
    keep the newest :data:`KEEP` snapshots up to it and drop any beyond it: made from the
    journal as it is, this one is at its end, so a snapshot of a later record was made
    from records the journal no longer holds (a machine crash took them)."""
    folder.mkdir(parents=True, exist_ok=True)
    payload = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
    head = json.dumps({
        "seq": state.seq, "record": record, "state_hash": state.core.state_hash(),
        "fingerprint": fingerprint(profile), "synced_through": state.synced_through,
        "size": len(payload), "payload": hashlib.blake2b(payload, digest_size=16).hexdigest(),
    }).encode()
    path = _path(folder, state.seq)
    tmp = folder / f"{path.stem}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(MAGIC + _LEN.pack(len(head)) + head + _LEN.pack(zlib.crc32(head)))
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(folder)
    kept = [p for p in snapshots(folder) if _seq_of(p) <= state.seq]
    for old in [p for p in snapshots(folder) if _seq_of(p) > state.seq] + kept[:-KEEP]:
        old.unlink(missing_ok=True)
    return path


def _seq_of(path: Path) -> int:
    m = _NAME.fullmatch(path.name)
    assert m is not None
    return int(m.group(1))


def _sweep(folder: Path) -> None:
    """Remove the temporary files of snapshotters that died while writing."""
    if not folder.is_dir():
        return
    for p in folder.glob("snap-*.tmp"):
        pid = p.suffixes[-2][1:] if len(p.suffixes) >= 2 else ""
        if not pid.isdigit() or not Path(f"/proc/{pid}").exists():
            p.unlink(missing_ok=True)


def snapshots(folder: Path) -> list[Path]:
    """The snapshot files of ``folder``, oldest first."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _NAME.fullmatch(p.name))


class Unusable(Exception):
    """A snapshot that must not be used, and why."""


def read(path: Path) -> tuple[dict[str, Any], bytes]:
    """The header and payload of a snapshot file, their checksums verified."""
    data = path.read_bytes()
    if data[:8] != MAGIC or len(data) < 12:
        raise Unusable(f"{path.name}: not a snapshot (it starts {data[:8]!r})")
    n = _LEN.unpack_from(data, 8)[0]
    head = data[12:12 + n]
    if len(head) != n or len(data) < 16 + n or \
            _LEN.unpack_from(data, 12 + n)[0] != zlib.crc32(head):
        raise Unusable(f"{path.name}: damaged header")
    meta = json.loads(head)
    payload = data[16 + n:]
    if len(payload) != meta["size"] or \
            hashlib.blake2b(payload, digest_size=16).hexdigest() != meta["payload"]:
        raise Unusable(f"{path.name}: damaged payload")
    return meta, payload


Digest = Callable[[int], "str | None"]


def load(path: Path, profile: str, digest: Digest | None = None,
         synced_through: int | None = None) -> State:
    """A snapshot's state, if it may be used: see the module docstring.  ``digest`` (the
    journal's record digest by seq: :func:`digest_of`, :func:`digest_at`) and
    ``synced_through`` (the settlement store's last synchronised round) are checked when
    given."""
    meta, payload = read(path)
    if meta["fingerprint"] != fingerprint(profile):
        raise Unusable(f"{path.name}: made by other code or another engine profile")
    if digest is not None:
        have = digest(meta["seq"])
        if have is None:
            raise Unusable(f"{path.name}: the journal does not hold its record {meta['seq']}")
        if have != meta["record"]:
            raise Unusable(f"{path.name}: the journal's record {meta['seq']} is not the one "
                           "it was made from")
    if synced_through is not None and synced_through < meta["synced_through"]:
        raise Unusable(f"{path.name}: it dropped the trades of rounds up to "
                       f"{meta['synced_through']}, and the settlement store has only "
                       f"{synced_through}")
    state = cast(State, pickle.loads(payload))
    if state.core.state_hash() != meta["state_hash"]:
        raise Unusable(f"{path.name}: its state does not give the hash it was written with")
    return state


def load_latest(folder: Path, profile: str, digest: Digest | None = None,
                synced_through: int | None = None) -> State | None:
    """The newest usable snapshot's state, or None; each unusable one is logged.  Whatever
    goes wrong with a file (its checks, or an error reading or unpickling it) makes it
    unusable, never stops the caller."""
    for path in reversed(snapshots(folder)):
        try:
            return load(path, profile, digest, synced_through)
        except Exception as exc:
            log.warning("snapshot %s not used: %s", path.name, exc)
    return None


def make(data_dir: Path, profile: str, synced_through: int = 0) -> tuple[int, int] | None:
    """``ronda journal snapshot``: from the newest usable snapshot (checked against the
    journal as a start checks it), or the start, replay the journal's whole records after
    it and write a snapshot of the result.  Returns (the snapshot's seq, records replayed),
    or None when there was nothing new."""
    folder = data_dir / "snapshots"
    journal_dir = data_dir / "journal"
    _sweep(folder)
    base = load_latest(folder, profile, lambda seq: digest_at(journal_dir, seq))
    rep = Replica(profile, base, synced_through)
    start = rep.seq + 1
    last_digest = None
    n = 0
    for rec, digest in read_records(journal_dir, start):
        rep.apply(rec)
        last_digest = digest
        n += 1
    if last_digest is None:
        return None
    write(folder, rep.state(), last_digest, profile)
    return rep.seq, n
