"""The agent's end of a kernel worker's socket (sync_processes.py): pickled messages framed as
multiprocessing.connection frames them (a 4-byte big-endian length, then the pickle), which is
what the worker's own end, a multiprocessing Connection, reads and writes.

Why not a Connection here too: the agent's threads, one GIL, wait for the workers' answers, and
every system call gives the GIL up and takes it back (with four threads, a futex hand-off each
time). A Connection's answer costs a poll through the selectors module and two reads (the
length, then the pickle): ~90 us of the agent's CPU a call, measured in a cold 100 x 10. Here a
call is one send, and an answer one recv that waits in the kernel (SO_RCVTIMEO: the timeout
without a poll) and takes what the worker sent in one piece (its writes are whole frames).

Safe to unpickle only because both ends are this program (the module doc of sync_processes).
One thread sends at a time and one receives at a time (the caller's locks); the two may
overlap."""

from __future__ import annotations

import math
import pickle
import socket
import struct
import time
from typing import Any

_LENGTH = struct.Struct("!i")
_CHUNK = 1 << 16  # read at most this much a call (an answer of a router of 10: ~100 bytes)


class _Nothing:
    """No whole message yet."""


NOTHING: Any = _Nothing()


class Channel:
    """Messages over a connected stream socket (blocking; its receive timeout set here)."""

    def __init__(self, sock: socket.socket) -> None:
        sock.settimeout(None)  # blocking: the kernel keeps the receive timeout (SO_RCVTIMEO)
        self._sock = sock
        self._buffer = bytearray()
        self._timeout_ms: int | None = None  # SO_RCVTIMEO as last set

    def fileno(self) -> int:
        return self._sock.fileno()

    def send(self, message: Any) -> None:
        """Sends one message whole (OSError when the other end is gone)."""
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        self._sock.sendall(_LENGTH.pack(len(data)) + data)

    def receive(self, timeout: float) -> Any:
        """The next message, waiting at most about `timeout` seconds: TimeoutError when none
        came, EOFError when the other end closed (OSError as the socket raises it)."""
        deadline = time.monotonic() + timeout
        while True:
            message = self._take()
            if message is not NOTHING:
                return message
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            self._set_timeout(left)
            try:
                data = self._sock.recv(_CHUNK)
            except BlockingIOError as exc:  # SO_RCVTIMEO expired
                raise TimeoutError from exc
            if not data:
                raise EOFError
            self._buffer += data

    def receive_now(self) -> Any:
        """The next message if it is here already (without waiting), else NOTHING; EOFError
        when the other end closed."""
        message = self._take()
        if message is not NOTHING:
            return message
        try:
            data = self._sock.recv(_CHUNK, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return NOTHING
        if not data:
            raise EOFError
        self._buffer += data
        return self._take()

    def close(self) -> None:
        self._sock.close()

    def _take(self) -> Any:
        """A whole message from the buffer, or NOTHING."""
        buffer = self._buffer
        if len(buffer) < _LENGTH.size:
            return NOTHING
        (size,) = _LENGTH.unpack_from(buffer)
        if size < 0:
            raise OSError("kernel worker: message too large")  # (the -1 of 2 GiB frames)
        end = _LENGTH.size + size
        if len(buffer) < end:
            return NOTHING
        # Both ends are this program (module doc): nothing else writes to this socket.
        message = pickle.loads(bytes(buffer[_LENGTH.size : end]))  # noqa: S301
        del buffer[:end]
        return message

    def _set_timeout(self, seconds: float) -> None:
        # Whole milliseconds up (the kernel's granularity is a jiffy anyway): set only when
        # it changes, so a pool's fixed timeout costs one setsockopt for all its calls.
        millis = max(1, math.ceil(seconds * 1000))
        if self._timeout_ms is not None and abs(self._timeout_ms - millis) <= millis // 10:
            return
        self._timeout_ms = millis
        whole, part = divmod(millis, 1000)
        self._sock.setsockopt(
            socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", whole, part * 1000)
        )
