"""The journal's sync in a process of its own, so that the event loop serves while the disk
flushes.

Why a process: the sequencer writes each batch on the event loop's thread, and until this
module it also waited there for the batch's ``fdatasync``: 12.6 % of the loop's time at
saturation over WebSocket (docs/performance.md), time in which the sockets' reads, the
decoding of requests and the answers of the batch before could have run.  Handing the sync to
a thread of the server's own was worse (the same measurements): when ``fdatasync`` returns,
the thread must take the GIL back from a loop that is busy with Python to say so.  A helper
process has a GIL of its own: it waits in ``fdatasync`` and answers on a socket, and the loop
learns of it as of any socket's data, at its next turn.

How: :class:`DiskSync` starts the helper (``python -I -S gateway/disksync_helper.py``,
nothing of the server imported) with one end of a ``socketpair`` (``SOCK_SEQPACKET``: one
request, one message). A sync request is ``b"S"``; when the journal's segment changed since
the last one it is ``b"F"`` with the segment's descriptor passed along (``SCM_RIGHTS``): the
helper's descriptor is then the same open file as the journal's, and ``fdatasync`` flushes
the file's data whoever calls it. The helper answers each request with the ``errno`` of its
sync (0: durable), four bytes, in order. The bytes were written by the server before it
asked (``Journal.append(..., defer_sync=True)``), so they are in the file's page cache when
the helper's ``fdatasync`` runs: the durability guarantee is the journal's own
(gateway/journal.py, Durability). An error the helper reports fails the journal as a failed
sync here would.

If the helper cannot be started or goes away (killed, its socket closed), the server logs
it once and syncs on the loop's thread from then on, as before: the bytes are written, an
``fdatasync`` of our own makes them durable.  If the server dies, the helper reads the end of
its socket and exits; it ignores SIGINT (a Ctrl-C at a terminal stops the server, which stops
it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
import subprocess
import sys
from collections import deque
from pathlib import Path

from gateway.journal import Journal

log = logging.getLogger("ronda.disksync")

# the helper's script (it imports nothing of the server's)
HELPER = Path(__file__).with_name("disksync_helper.py")

_REPLY = struct.Struct("=i")


def helper_command(sock_fd: int) -> list[str]:
    """How the helper is run, its end of the socket being descriptor ``sock_fd``."""
    return [sys.executable, "-I", "-S", str(HELPER), str(sock_fd)]


# how long the helper may take to answer before the server gives up on it (kills it and
# syncs on the loop's thread): a helper alive and not answering (stopped, frozen) would
# otherwise hold every acknowledgement while the server looks alive
ANSWER_TIMEOUT_S = 5.0


class HelperGone(Exception):
    """The helper process went away before it answered: the sync is made here instead."""


class DiskSync:
    """The journal's owed syncs made by a helper process (see the module).  ``start`` it on
    the event loop that will ``await sync(journal)``; ``close`` it when done."""

    def __init__(self, answer_timeout: float = ANSWER_TIMEOUT_S) -> None:
        self.answer_timeout = answer_timeout
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting: deque[asyncio.Future[int]] = deque()
        self._timer: asyncio.TimerHandle | None = None  # the oldest request's deadline
        # the file the helper holds (device, inode): a descriptor's number is used again by
        # later segments, and a segment's index may name another file after a reopen
        self._file: tuple[int, int] | None = None
        self.broken = False  # True: syncs made on the loop's thread (the helper is gone)
        self.syncs = 0  # syncs the helper made

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the helper (on failure, log it and sync on the loop's thread)."""
        self._loop = loop
        try:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                self._proc = subprocess.Popen(
                    helper_command(theirs.fileno()),
                    pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                    start_new_session=True)
            except BaseException:
                ours.close()
                raise
            finally:
                theirs.close()
            self._sock = ours
            ours.setblocking(False)
            loop.add_reader(ours.fileno(), self._readable)
        except OSError as exc:
            log.error("the journal's sync process could not be started (%r): syncing on the "
                      "event loop's thread", exc)
            self.broken = True
            self._detach()
            self._reap()

    async def sync(self, journal: Journal) -> None:
        """Make ``journal``'s owed sync durable: by the helper, the loop serving meanwhile;
        on the loop's thread if the helper is gone.  Raises what the journal raises for a
        failed sync (:class:`~gateway.journal.JournalError`)."""
        loop = self._loop
        if self.broken or self._sock is None or loop is None:
            journal.sync_owed()
            return
        fd = journal.sync_owed_fd
        try:
            st = os.fstat(fd)
            file = (st.st_dev, st.st_ino)
            if file != self._file:
                socket.send_fds(self._sock, [b"F"], [fd])
                self._file = file
            else:
                self._sock.send(b"S")
        except OSError as exc:  # gone (EPIPE), or, never seen, a full socket
            self._gone(f"sending to it failed ({exc!r})")
            journal.sync_owed()
            return
        fut: asyncio.Future[int] = loop.create_future()
        self._waiting.append(fut)
        if self._timer is None:
            self._timer = loop.call_later(self.answer_timeout, self._overdue)
        try:
            error = await fut
        except HelperGone:
            journal.sync_owed()
            return
        self.syncs += 1
        journal.owed_synced(error)

    def _readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        while True:
            try:
                data = sock.recv(16)
            except BlockingIOError:
                return
            except OSError as exc:
                self._gone(f"reading from it failed ({exc!r})")
                return
            if not data:
                self._gone("it closed its socket")
                return
            if len(data) != _REPLY.size or not self._waiting:
                self._gone(f"it answered {data!r} to no request")
                return
            fut = self._waiting.popleft()
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self._waiting and self._loop is not None:
                self._timer = self._loop.call_later(self.answer_timeout, self._overdue)
            if not fut.done():
                fut.set_result(_REPLY.unpack(data)[0])

    def _overdue(self) -> None:
        self._timer = None
        self._gone(f"it did not answer within {self.answer_timeout:g} s")

    def _gone(self, why: str) -> None:
        if self.broken:
            return
        self.broken = True
        proc = self._proc
        code = proc.poll() if proc is not None else None
        if proc is not None and code is None:
            with contextlib.suppress(OSError):
                proc.kill()  # a helper that misbehaved or stopped answering: no more of it
        log.error("the journal's sync process is gone: %s (exit status %s); syncing on the "
                  "event loop's thread from now on", why, code)
        self._detach()
        self._fail_waiting(why)

    def _fail_waiting(self, why: str) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._waiting:
            fut = self._waiting.popleft()
            if not fut.done():
                fut.set_exception(HelperGone(why))

    def _detach(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            if self._loop is not None and not self._loop.is_closed():
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(sock.fileno())
            sock.close()

    def _reap(self, wait: float = 0.0) -> None:
        proc = self._proc
        if proc is None:
            return
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                proc.kill()
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:  # in the kernel (a sync on a dead disk)
                log.warning("the journal's sync process %d did not exit", proc.pid)
                return
        self._proc = None

    def close(self) -> None:
        """Stop the helper (it exits when its socket closes) and reap it: at most a couple
        of seconds (it is killed if it has not exited by then)."""
        self.broken = True
        self._detach()
        self._fail_waiting("closed")
        self._reap(wait=2.0)
