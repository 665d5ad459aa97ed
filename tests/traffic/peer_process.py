"""A scripted protocol peer: a Python script run inside a namespace, driven line by line.

The script (a module of tests/traffic run by path, standard library only) writes one JSON
object per line on stdout (`{"event": ...}`) and reads commands, one per line, on stdin. The
test reads events with a bounded wait and stops the process by its pid, whatever happens.
`control_then_go` runs the exchange of a server peer and a client peer through the router that
the peers of peers_h323.py and peers_pptp.py follow.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from catalog_binding import router_conntrack

from cthm.testing import Topology

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

    def __exit__(self, *exc_info: object) -> None:
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


@dataclass(frozen=True)
class Exchange:
    """What a server peer and a client peer reported of one protocol exchange, and the
    router's expectations read between its control flow and its second flow."""

    client_control: dict[str, Any]
    server_control: dict[str, Any]
    expectations: list[str]  # `conntrack -L expect` in the router before the second flow
    client_result: dict[str, Any]
    server_result: dict[str, Any]


def control_then_go(
    topology: Topology,
    script: Path,
    server: Sequence[str],
    client: Sequence[str],
    result: str,
    timeout: float,
) -> Exchange:
    """`script SERVER...` in the server namespace until it is `ready`, then `script CLIENT...`
    in the client namespace; once both report `control`, the router's expectations are read,
    both are told `go` and both report `result` (the second flow's outcome). `timeout` bounds
    each event; both peers are stopped by pid whatever happens."""
    t = topology
    with PeerProcess(t.server_ns, script, *server) as server_peer:
        server_peer.event("ready", timeout)
        with PeerProcess(t.client_ns, script, *client) as client_peer:
            client_control = client_peer.event("control", timeout)
            server_control = server_peer.event("control", timeout)
            # The control messages have crossed the router: the expectations (if any) are
            # there now, and stay until the second flow uses them.
            expectations = router_conntrack(t, "-L", "expect")
            server_peer.send("go")
            client_peer.send("go")
            client_result = client_peer.event(result, timeout)
            server_result = server_peer.event(result, timeout)
    return Exchange(client_control, server_control, expectations, client_result, server_result)
