"""The journal's sync helper (gateway/disksync.py), run as a script of its own
(``python -I -S gateway/disksync_helper.py FD``): it imports nothing of the server's.

On the socket ``FD`` (``SOCK_SEQPACKET``) each message is a request to sync: ``b"S"`` the
segment it holds, ``b"F"`` with the journal's new segment's descriptor passed along
(``SCM_RIGHTS``) first.  Each request is answered, in order, with the ``errno`` of its
``fdatasync`` as four bytes (0: durable).

The segment is opened again through the descriptor it was passed (``/proc/self/fd``): an open
file of the helper's own, not the server's.  Linux tells a failed write-back to each open
file of the inode once; with one shared between them, an error the helper saw (and could not
report, killed before it answered) would leave the server's own ``fdatasync``, its fallback,
returning 0 for data that never reached the disk.  With one each, the server's sees it too.

Anything it cannot make sense of (a request that is neither, a descriptor that did not come
with its ``b"F"``, control data cut short, a sync asked before any segment, a segment it
cannot open) makes it exit without answering: the server then syncs on its own thread, as it
does when the helper goes away.  It exits when the socket closes (the server stopped or
died); SIGINT and SIGTERM are ignored (a Ctrl-C at a terminal, or a service manager stopping
every process of the service, stops the server, which then stops the helper)."""

from __future__ import annotations

import os
import signal
import socket
import struct
import sys


def main(sock_fd: int) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    s = socket.socket(fileno=sock_fd)
    sync = getattr(os, "fdatasync", os.fsync)
    reply = struct.Struct("=i").pack
    fd = -1
    while True:
        try:
            msg, fds, flags, _ = socket.recv_fds(s, 16, 4)
        except OSError:
            return 0
        if not msg and not fds:
            return 0  # the server closed its end
        if msg == b"F" and len(fds) == 1 and not flags & socket.MSG_CTRUNC:
            try:
                own = os.open(f"/proc/self/fd/{fds[0]}", os.O_WRONLY | os.O_CLOEXEC)
            except OSError:
                return 3
            finally:
                os.close(fds[0])
            if fd >= 0:
                os.close(fd)
            fd = own
        else:
            for extra in fds:
                os.close(extra)
            if msg != b"S" or fds or fd < 0:
                return 2
        try:
            sync(fd)
            err = 0
        except OSError as exc:
            err = exc.errno or 5  # EIO: an error without a number is still a failed sync
        try:
            s.send(reply(err))
        except OSError:
            return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1])))
