"""The journal's sync helper (gateway/disksync.py), run as a script of its own
(``python -I -S gateway/disksync_helper.py FD``): it imports nothing of the server's.

On the socket ``FD`` (``SOCK_SEQPACKET``) each message is a request to sync: ``b"S"`` the
descriptor it holds, ``b"F"`` with a new descriptor passed along (``SCM_RIGHTS``: the
journal's new segment) first.  Each request is answered, in order, with the ``errno`` of its
``fdatasync`` as four bytes (0: durable).  It exits when the socket closes (the server stopped
or died); SIGINT is ignored (a Ctrl-C at a terminal stops the server, which stops it)."""

from __future__ import annotations

import os
import signal
import socket
import struct
import sys


def main(sock_fd: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    s = socket.socket(fileno=sock_fd)
    sync = getattr(os, "fdatasync", os.fsync)
    reply = struct.Struct("=i").pack
    fd = -1
    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(s, 16, 4)
        except OSError:
            return
        if not msg:
            return
        for extra in fds[1:]:
            os.close(extra)
        if fds:
            if fd >= 0:
                os.close(fd)
            fd = fds[0]
        try:
            sync(fd)
            err = 0
        except OSError as exc:
            err = exc.errno or 5  # EIO: an error without a number is still a failed sync
        try:
            s.send(reply(err))
        except OSError:
            return


if __name__ == "__main__":
    main(int(sys.argv[1]))
