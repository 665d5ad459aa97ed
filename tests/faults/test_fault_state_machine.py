"""A hypothesis state machine against a real `cthm serve` (one for the whole test; each example
has namespaces and routers of its own): random interleavings of API changes, server restarts
(SIGTERM), kernel tampering and namespace churn.

Invariant, checked after each step once the agent has settled (bounded wait): for every
router the kernel table equals its bindings in the API, everything is ACTIVE, and the
foreign table placed in each namespace is exactly as it was put there.
"""

from __future__ import annotations

import shutil
import signal
import tempfile
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from cthm.testing import NamespaceFactory
from cthm.testing.netns import run_in_namespace
from cthm.testing.service import ServerProcess
from support.faults import (
    FOREIGN_TABLE,
    HELPERS,
    Api,
    add_foreign_table,
    kernel_table,
    nft_text,
    report_counts,
    wait_settled,
)

pytestmark = pytest.mark.kernel

LABELS = ("ma", "mb")
PORTS = st.integers(min_value=5000, max_value=5005)
ROUTER = st.integers(0, len(LABELS) - 1)
PROTOCOL = st.sampled_from(["tcp", "udp"])
HELPER = st.integers(0, 2)
TAMPERING = {
    "flush our table": "flush table inet cthm\n",
    "delete our table": "delete table inet cthm\n",
    "rule added to our chain": "add rule inet cthm prerouting udp dport 9999 counter accept\n",
}
MAX_RESTARTS = 2  # per example
COUNTS: Counter[str] = Counter()


class KernelMachine(RuleBasedStateMachine):
    # One server for the whole run (the test sets it): a start is most of a step's cost, and
    # each example brings namespaces and routers of its own, deleted at its end.
    shared: ServerProcess | None = None

    def __init__(self) -> None:
        super().__init__()
        self.factory = NamespaceFactory()
        assert KernelMachine.shared is not None
        self.server = KernelMachine.shared
        self.api: Api | None = None
        self.routers: dict[str, str] = {}  # router id -> namespace
        self.labels: dict[str, str] = {}  # namespace -> factory label
        self.foreign: dict[str, str] = {}  # namespace -> its foreign table's text
        self.restarts = 0

    @initialize()
    def start(self) -> None:
        if self.server.process is None or self.server.process.poll() is not None:
            self.server.start()  # the first example, or one after a failed one
            COUNTS["servers"] += 1
        self.api = Api(self.server)
        for label in LABELS:
            namespace = self.factory.create(label)
            self.labels[namespace] = label
            self.foreign[namespace] = add_foreign_table(namespace)
            self.routers[self.api.create_router(namespace, label)] = namespace

    def teardown(self) -> None:
        try:
            if self.api is not None:
                alive = self.server.process is not None and self.server.process.poll() is None
                for router_id in self.routers if alive else ():
                    deleted = self.api.client.delete(f"/v2.0/routers/{router_id}")
                    assert deleted.status_code == 204, deleted.text
                self.api.close()
        finally:
            leftovers = self.factory.cleanup()
            assert not leftovers, leftovers

    @property
    def client(self) -> Api:
        assert self.api is not None
        return self.api

    def _bindings(self) -> list[tuple[str, dict[str, object]]]:
        return [(r, b) for r in sorted(self.routers) for b in self.client.bindings(r)]

    # --- API -----------------------------------------------------------------------------

    def _create(self, index: int, protocol: str, port: int, choice: int) -> None:
        router_id = sorted(self.routers)[index]
        response = self.client.create_binding(router_id, protocol, port, HELPERS[protocol][choice])
        assert response.status_code in (201, 409), response.text  # 409: (protocol, port) taken
        COUNTS[f"create_{response.status_code}"] += 1

    # Rules are drawn uniformly: two ways to create keep the tables from staying empty.
    @rule(index=ROUTER, protocol=PROTOCOL, port=PORTS, choice=HELPER)
    def create(self, index: int, protocol: str, port: int, choice: int) -> None:
        self._create(index, protocol, port, choice)

    @rule(index=ROUTER, protocol=PROTOCOL, port=PORTS, choice=HELPER)
    def create_more(self, index: int, protocol: str, port: int, choice: int) -> None:
        self._create(index, protocol, port, choice)

    @rule(data=st.data(), choice=HELPER, port=st.none() | PORTS)
    def update(self, data: st.DataObject, choice: int, port: int | None) -> None:
        bindings = self._bindings()
        if not bindings:
            return
        router_id, binding = data.draw(st.sampled_from(bindings))
        changes: dict[str, object] = {"helper": HELPERS[str(binding["protocol"])][choice]}
        if port is not None:
            changes["port"] = port
        response = self.client.update_binding(
            router_id,
            str(binding["id"]),
            changes,
            revision=int(binding["revision_number"]),  # type: ignore[call-overload]
        )
        assert response.status_code in (200, 409), response.text
        COUNTS[f"update_{response.status_code}"] += 1

    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        bindings = self._bindings()
        if not bindings:
            return
        router_id, binding = data.draw(st.sampled_from(bindings))
        response = self.client.delete_binding(router_id, str(binding["id"]))
        assert response.status_code == 204, response.text
        COUNTS["delete_204"] += 1

    # --- faults --------------------------------------------------------------------------

    # A restart (a `cthm serve` start: ~2 s, the rest of a step ~0.1 s) was drawn in about a
    # third of the steps; capped per example, so the 8 examples fit the test's timeout.
    @precondition(lambda self: self.restarts < MAX_RESTARTS)
    @rule()
    def restart(self) -> None:
        self.client.close()
        assert self.server.stop(signal.SIGTERM) == 0, self.server.logs()
        self.server.start()
        self.api = Api(self.server)
        self.restarts += 1
        COUNTS["restarts"] += 1
        COUNTS["faults_injected"] += 1

    @precondition(lambda self: bool(self.routers))
    @rule(index=ROUTER, how=st.sampled_from(sorted(TAMPERING)))
    def tamper(self, index: int, how: str) -> None:
        namespace = sorted(self.labels)[index]
        before = kernel_table(namespace)
        done = run_in_namespace(namespace, ["nft", "-f", "-"], input=TAMPERING[how], check=False)
        # An empty table has no chain to add a rule to: then nothing was tampered with.
        if done.returncode == 0 and kernel_table(namespace) != before:
            COUNTS["tampered"] += 1
            COUNTS["faults_injected"] += 1

    @rule(index=ROUTER)
    def churn_namespace(self, index: int) -> None:
        namespace = sorted(self.labels)[index]
        self.factory.delete(namespace)
        assert self.factory.create(self.labels[namespace]) == namespace
        self.foreign[namespace] = add_foreign_table(namespace)
        COUNTS["namespaces_churned"] += 1
        COUNTS["faults_injected"] += 1

    # --- the invariant ---------------------------------------------------------------------

    @invariant()
    def kernel_equals_desired(self) -> None:
        if self.api is None:
            return
        settled = wait_settled(self.client, self.routers)
        assert settled.ok, (settled.problems, self.server.logs())
        COUNTS["invariant_checks"] += 1
        for namespace, text in self.foreign.items():
            assert nft_text(namespace, FOREIGN_TABLE) == text, (
                f"foreign table changed in {namespace}"
            )


def test_random_interleavings_of_changes_and_faults_converge() -> None:
    COUNTS.clear()
    tmp = Path(tempfile.mkdtemp(prefix="cthm-faults-sm-"))
    KernelMachine.shared = ServerProcess(
        tmp / "data", tmp / "logs", args=("--resync-interval", "0.5")
    )
    try:
        run_state_machine_as_test(
            KernelMachine,
            settings=settings(
                max_examples=8,
                stateful_step_count=15,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            ),
        )
    finally:
        server, KernelMachine.shared = KernelMachine.shared, None
        if server.process is not None:
            server.kill()
        shutil.rmtree(tmp, ignore_errors=True)
        report_counts(
            "tests/faults/test_fault_state_machine.py::"
            "test_random_interleavings_of_changes_and_faults_converge",
            dict(COUNTS),
        )
