"""Several "network nodes" on one machine: each FakeHost is a mount namespace with a private
tmpfs on /run/netns, so an agent started on it sees only the router namespaces added to that
host, while the API and the test run in the root mount namespace.

```
 root mount ns: /run/netns/<real> (made by NamespaceFactory)     the API (cthm serve --no-agent)
   host A (unshare --mount): /run/netns = tmpfs; <name> = bind of <real>'s nsfs   cthm agent run
   host B (unshare --mount): /run/netns = tmpfs; <name> = bind of <real>'s nsfs   cthm agent run
```

The same name on two hosts can be two different kernel namespaces (two copies of an HA
router), or one namespace can be seen by two hosts. Safety: the root mount namespace is never
changed (apart from creating /run/netns when it is missing, as `ip netns add` would); every
mount lives in the holder's namespace, made private, and goes away with it; processes are
stopped by their pid only.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from cthm.testing.netns import NETNS_DIR
from cthm.testing.service import CTHM, clean_env

READY_TIMEOUT = 10.0
COMMAND_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,254}$")

# The holder: a private mount namespace whose /run/netns is a fresh tmpfs. The root's netns
# mounts copied into it are detached first, or they would keep every namespace that existed at
# start alive until the host closes, after its owner deleted it: `ip netns` makes /run/netns a
# mount point, and one lazy umount detaches it with everything under it; otherwise each one
# goes. The holder waits on its stdin, so it also ends when the test process dies without
# closing it.
_HOLDER = (
    "mkdir -p /run/netns"
    " && { umount -l /run/netns 2>/dev/null"
    ' || for m in /run/netns/*; do umount -l "$m" 2>/dev/null; done; true; }'
    " && mount -t tmpfs -o mode=0755,size=1m cthm-fakehost /run/netns"
    " && echo ready && read -r _"
)
_ADD_SCRIPT = 'touch "/run/netns/$1" && mount --bind /proc/self/ns/net "/run/netns/$1"'
_REMOVE_SCRIPT = 'umount "/run/netns/$1" && rm -f "/run/netns/$1"'


class FakeHostError(RuntimeError):
    """A command preparing or changing a fake host failed; carries its output."""


def _checked_name(value: str, what: str) -> str:
    # The name becomes a path under /run/netns and an argv word: no slash, no leading dash.
    if not _NAME.match(value) or value in (".", ".."):
        raise ValueError(f"invalid {what} {value!r}")
    return value


class AgentProcess:
    """A `cthm agent run` started on a fake host; its pid is the agent's own (nsenter execs)."""

    def __init__(
        self, process: subprocess.Popen[bytes], host: str, stdout: Path, stderr: Path
    ) -> None:
        self.process = process
        self.pid = process.pid
        self.host = host
        self.stdout_path = stdout
        self.stderr_path = stderr

    def alive(self) -> bool:
        return self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after `grace` seconds. Returns the exit code of an agent that
        stopped by itself (or had already exited); None when it had to be killed."""
        if self.process.poll() is not None:
            return self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        """SIGKILL (a crash: no clean stop) and reap."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=STOP_TIMEOUT)

    def log_tail(self, n: int = 4000) -> str:
        """The last `n` characters of its stderr (the log) and stdout."""
        parts = []
        for label, path in (("stderr", self.stderr_path), ("stdout", self.stdout_path)):
            text = path.read_text(errors="replace") if path.exists() else ""
            parts.append(f"--- agent {self.host} pid {self.pid} {label}:\n{text[-n:]}")
        return "\n".join(parts)

    def __repr__(self) -> str:
        return f"AgentProcess(host={self.host!r}, pid={self.pid}, alive={self.alive()})"


class FakeHost:
    """A "network node": a mount namespace with a private tmpfs on /run/netns."""

    def __init__(self, name: str, log_dir: Path) -> None:
        self.name = _checked_name(name, "host name")
        self.log_dir = log_dir
        self._holder: subprocess.Popen[bytes] | None = None
        self._agents: list[AgentProcess] = []
        self._closed = False

    @property
    def pid(self) -> int:
        """The holder's pid: `nsenter -t PID -m` enters this host."""
        if self._holder is None or self._closed:
            raise FakeHostError(f"host {self.name} is not running")
        return self._holder.pid

    @property
    def agents(self) -> tuple[AgentProcess, ...]:
        return tuple(self._agents)

    def start(self) -> FakeHost:
        if self._holder is not None:
            raise FakeHostError(f"host {self.name} was started already")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if not NETNS_DIR.exists():
            NETNS_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        stderr = self.log_dir / f"host-{self.name}.err"
        with stderr.open("wb") as err:
            holder = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", _HOLDER],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
            )
        self._holder = holder
        try:
            line = _read_line(holder, READY_TIMEOUT)
        except BaseException:
            self.close()
            raise
        if line.strip() != b"ready":
            self.close()
            raise FakeHostError(
                f"host {self.name} did not start (got {line!r}): "
                f"{stderr.read_text(errors='replace')}"
            )
        assert holder.stdout is not None
        holder.stdout.close()  # nothing more comes from it
        return self

    def add_namespace(self, name: str, real: str) -> None:
        """Makes /run/netns/<name> on this host the kernel namespace of /run/netns/<real> of
        the root mount namespace."""
        _checked_name(name, "namespace name")
        real_path = NETNS_DIR / _checked_name(real, "namespace name")
        if not real_path.exists():
            raise FakeHostError(f"no namespace {real} in the root mount namespace")
        if name in self.namespaces():
            raise FakeHostError(f"host {self.name} has a namespace {name} already")
        # nsenter opens --net's file before it enters the mount namespace, so <real> is the
        # root's; the bind then runs in the host's mount namespace.
        self._nsenter(["-m", f"--net={real_path}", "--", "sh", "-c", _ADD_SCRIPT, "sh", name])
        if self._inode(name) != os.stat(real_path).st_ino:
            raise FakeHostError(f"{name} on host {self.name} is not the namespace {real}")

    def remove_namespace(self, name: str) -> None:
        """Unmounts and deletes /run/netns/<name> on this host (the kernel namespace stays)."""
        _checked_name(name, "namespace name")
        if name not in self.namespaces():
            raise FakeHostError(f"host {self.name} has no namespace {name}")
        self._nsenter(["-m", "--", "sh", "-c", _REMOVE_SCRIPT, "sh", name])

    def namespaces(self) -> list[str]:
        """The names under this host's /run/netns, sorted."""
        return sorted(os.listdir(self._netns_dir()))

    def namespace_inode(self, name: str) -> int:
        """The nsfs inode /run/netns/<name> on this host resolves to (as `stat -L -c %i`)."""
        return self._inode(_checked_name(name, "namespace name"))

    def run(
        self, argv: Sequence[str], *, check: bool = True, timeout: float = COMMAND_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        """Runs argv in this host's mount namespace (network namespace: the root's)."""
        return subprocess.run(
            ["nsenter", "-t", str(self.pid), "-m", "--", *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
            stdin=subprocess.DEVNULL,
        )

    def start_agent(
        self,
        url: str,
        token_file: Path,
        *,
        backend: str = "nftables",
        report_interval: float = 1.0,
        resync_interval: float = 60.0,
        extra_args: Sequence[str] = (),
    ) -> AgentProcess:
        """Starts `cthm agent run --host <this host's name>` inside this host."""
        index = len(self._agents)
        stdout = self.log_dir / f"agent-{self.name}-{index}.out"
        stderr = self.log_dir / f"agent-{self.name}-{index}.err"
        argv = [
            *("nsenter", "-t", str(self.pid), "-m", "--"),
            *(str(CTHM), "agent", "run", "--url", url, "--token-file", str(token_file)),
            *("--host", self.name, "--backend", backend),
            *("--report-interval", str(report_interval)),
            *("--resync-interval", str(resync_interval)),
            *extra_args,
        ]
        with stdout.open("wb") as out, stderr.open("wb") as err:
            process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=clean_env()
            )
        agent = AgentProcess(process, self.name, stdout, stderr)
        self._agents.append(agent)
        return agent

    def close(self) -> None:
        """Stops its agents (SIGTERM, then SIGKILL), then ends the holder: the mount namespace
        and its mounts go with the last process in it. Idempotent."""
        if self._closed:
            return
        for agent in self._agents:
            agent.stop()
        self._end_holder()
        self._closed = True

    def __enter__(self) -> FakeHost:
        if self._holder is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        pid = self._holder.pid if self._holder is not None else None
        return f"FakeHost({self.name!r}, pid={pid}, closed={self._closed})"

    def _netns_dir(self) -> Path:
        # /proc/PID/root resolves paths in the holder's mount namespace: read without nsenter.
        return Path(f"/proc/{self.pid}/root") / NETNS_DIR.relative_to("/")

    def _inode(self, name: str) -> int:
        return os.stat(self._netns_dir() / name).st_ino

    def _nsenter(self, args: Sequence[str]) -> None:
        done = subprocess.run(
            ["nsenter", "-t", str(self.pid), *args],
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if done.returncode != 0:
            raise FakeHostError(
                f"host {self.name}: {' '.join(args)} failed ({done.returncode}): "
                f"{done.stderr.strip()}"
            )

    def _end_holder(self) -> None:
        holder = self._holder
        if holder is None:
            return
        for stream in (holder.stdin, holder.stdout):
            if stream is not None and not stream.closed:
                stream.close()
        if holder.poll() is None:
            holder.kill()
        holder.wait(timeout=STOP_TIMEOUT)


def _read_line(process: subprocess.Popen[bytes], timeout: float) -> bytes:
    """One line of the process's stdout, or b"" when it ends or `timeout` passes first."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            break
        chunk = os.read(fd, 256)
        if not chunk:
            break
        data += chunk
    return data
