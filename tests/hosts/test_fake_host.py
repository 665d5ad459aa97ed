"""FakeHost, alone: each host sees only its own /run/netns, one name on two hosts can be two
kernel namespaces, and close() leaves nothing mounted or running, the root's /run/netns as it
was."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from cthm.testing import FakeHost, FakeHostError, NamespaceFactory
from cthm.testing.netns import NETNS_DIR


def inode_seen_by(host: FakeHost, name: str) -> int:
    out = host.run(["stat", "-L", "-c", "%i", f"/run/netns/{name}"]).stdout
    return int(out.strip())


def root_netns_mounts() -> str:
    """The mount table of the root mount namespace under /run/netns (what `ip netns` made)."""
    done = subprocess.run(
        ["findmnt", "-n", "-R", "-o", "TARGET,SOURCE", str(NETNS_DIR)],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    return done.stdout


def test_each_host_sees_only_its_own_namespaces(netns: NamespaceFactory, tmp_path: Path) -> None:
    first, second = netns.create("r1"), netns.create("r2")
    with FakeHost("A", tmp_path) as a, FakeHost("B", tmp_path) as b:
        assert a.namespaces() == []
        assert b.namespaces() == []
        a.add_namespace("qrouter-a", first)
        b.add_namespace("qrouter-b", second)

        assert a.namespaces() == ["qrouter-a"]
        assert b.namespaces() == ["qrouter-b"]
        # What the tools inside see, not only our reading through /proc/PID/root.
        assert a.run(["ls", "/run/netns"]).stdout.split() == ["qrouter-a"]
        assert b.run(["ls", "/run/netns"]).stdout.split() == ["qrouter-b"]
        assert a.run(["ip", "netns", "exec", "qrouter-b", "true"], check=False).returncode != 0
        # The root mount namespace does not see the hosts' names.
        assert not (NETNS_DIR / "qrouter-a").exists()
        assert not (NETNS_DIR / "qrouter-b").exists()

        a.remove_namespace("qrouter-a")
        assert a.namespaces() == []
        with pytest.raises(FakeHostError):
            a.remove_namespace("qrouter-a")


def test_one_name_on_two_hosts_is_two_kernel_namespaces(
    netns: NamespaceFactory, tmp_path: Path
) -> None:
    first, second = netns.create("ha1"), netns.create("ha2")
    with FakeHost("A", tmp_path) as a, FakeHost("B", tmp_path) as b:
        a.add_namespace("qrouter-ha", first)
        b.add_namespace("qrouter-ha", second)

        on_a, on_b = inode_seen_by(a, "qrouter-ha"), inode_seen_by(b, "qrouter-ha")
        assert on_a != on_b
        assert on_a == os.stat(NETNS_DIR / first).st_ino
        assert on_b == os.stat(NETNS_DIR / second).st_ino
        # A process entering the name on a host is in that kernel namespace.
        entered = a.run(
            ["ip", "netns", "exec", "qrouter-ha", "stat", "-L", "-c", "%i", "/proc/self/ns/net"]
        )
        assert int(entered.stdout) == on_a


def test_close_leaves_nothing_mounted_or_running(netns: NamespaceFactory, tmp_path: Path) -> None:
    real = netns.create("r")
    before = sorted(os.listdir(NETNS_DIR)), root_netns_mounts()
    host = FakeHost("A", tmp_path).start()
    holder = host.pid
    # The root's namespace mounts were not carried into the host: it pins none of them.
    assert _nsfs_mounts(holder) == []
    host.add_namespace("qrouter-x", real)
    assert _nsfs_mounts(holder) == ["/run/netns/qrouter-x"]
    assert "cthm-fakehost" in Path(f"/proc/{holder}/mounts").read_text()
    assert (sorted(os.listdir(NETNS_DIR)), root_netns_mounts()) == before

    host.close()
    host.close()  # idempotent

    assert not Path(f"/proc/{holder}").exists()
    assert (sorted(os.listdir(NETNS_DIR)), root_netns_mounts()) == before
    assert "cthm-fakehost" not in Path("/proc/self/mounts").read_text()
    # The kernel namespace itself belongs to the root's name, untouched.
    assert (NETNS_DIR / real).exists()
    with pytest.raises(FakeHostError):
        host.namespaces()


def test_close_stops_agents_by_pid(netns: NamespaceFactory, tmp_path: Path) -> None:
    # An agent pointed at a port nobody listens on keeps retrying: close() must end it.
    token = tmp_path / "token"
    token.write_text("not-a-real-token\n")
    token.chmod(0o600)
    with FakeHost("A", tmp_path) as host:
        agent = host.start_agent("http://127.0.0.1:9", token)
        pid = agent.pid
        time.sleep(1.0)
        assert agent.alive(), agent.log_tail()
        # nsenter execs: the pid is the agent's, in the host's mount namespace.
        assert os.readlink(f"/proc/{pid}/ns/mnt") == os.readlink(f"/proc/{host.pid}/ns/mnt")
    assert not agent.alive()
    assert not Path(f"/proc/{pid}").exists()


def test_bad_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="invalid host name"):
        FakeHost("../x", tmp_path)
    with FakeHost("A", tmp_path) as host:
        with pytest.raises(ValueError, match="invalid namespace name"):
            host.add_namespace("a/b", "x")
        with pytest.raises(FakeHostError, match="no namespace"):
            host.add_namespace("x", "cthm-no-such-namespace-here")


def _nsfs_mounts(pid: int) -> list[str]:
    """Mount points of namespace files in the process's mount namespace (mountinfo: the mount
    point is field 5, the file system type follows the " - " separator)."""
    found = []
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        before, _, after = line.partition(" - ")
        if after.split()[0] == "nsfs":
            found.append(before.split()[4])
    return found
