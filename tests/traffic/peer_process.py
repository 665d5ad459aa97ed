"""A scripted protocol peer: a Python script run inside a namespace, driven line by line.

The script (a module of tests/traffic run by path, standard library only) writes one JSON
object per line on stdout (`{"event": ...}`) and reads commands, one per line, on stdin. The
test reads events with a bounded wait and stops the process by its pid, whatever happens.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

# `ip netns exec` plus a Python start: added to every wait for a first event.
START_MARGIN = 5.0


class PeerFailed(AssertionError):
    """A peer exited, overran its bound or reported something other than what was awaited."""


class PeerProcess:
    """`python SCRIPT ARGS...` inside `namespace`; events in, commands out, stopped by pid."""

    def __init__(self, namespace: str, script: Path, *args: str) -> None:
        self.namespace = namespace
        self._buffer = b""
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", namespace, sys.executable, str(script), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def __enter__(self) -> PeerProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def event(self, name: str, timeout: float) -> dict[str, Any]:
        """The next event, which must be `name`, waited for at most `timeout` seconds."""
        line = self._readline(timeout)
        if line is None:
            raise PeerFailed(f"no {name!r} event within {timeout}s from {self._describe()}")
        event: dict[str, Any] = json.loads(line)
        if event.get("event") != name:
            raise PeerFailed(f"awaited {name!r}, got {event} from {self._describe()}")
        return event

    def send(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(command.encode() + b"\n")
        self.process.stdin.flush()

    def stop(self, grace: float = 2.0) -> None:
        """Terminates the process by pid, kills it if it outlives `grace`; idempotent."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=grace)
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()

    def _readline(self, timeout: float) -> bytes | None:
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:  # the process closed stdout: it has ended
                return None
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def _describe(self) -> str:
        code = self.process.poll()
        state = "running" if code is None else f"exited {code}"
        err = ""
        if code is not None and self.process.stderr is not None:
            err = self.process.stderr.read().decode(errors="replace")[-2000:]
        return f"peer in {self.namespace} ({state}){': ' + err if err else ''}"
