"""Agent fixtures: a real SQLite store, the real nftables backend, namespaces the test owns."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event

from cthm.agent import Agent, LocalStoreSource
from cthm.domain import HelperBinding, HelperCatalog, Router, new_binding, new_router
from cthm.netfilter import FakeNftables, NftablesBackend, NftOther, make_runner
from cthm.store import Store, deployment_id
from cthm.testing import NamespaceFactory

FOREIGN_RULESET = """
table inet filter {
    chain forward {
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        tcp dport 22 accept
    }
}
table ip nat {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "eth9" masquerade
    }
}
"""


class RefusingFake(FakeNftables):
    """The fake kernel, refusing real (non-dry-run) writes while `refuse` is set."""

    refuse = False

    def run(
        self, namespace: str, commands: str, *, json: bool = False, dry_run: bool = False
    ) -> str:
        if self.refuse and not json and not dry_run:
            raise NftOther("Could not process rule: Cannot allocate memory", namespace=namespace)
        return super().run(namespace, commands, json=json, dry_run=dry_run)


class World:
    """A store, a backend and an agent wired as `cthm serve` wires them (agent not started)."""

    def __init__(self, store: Store, backend: NftablesBackend, netns: NamespaceFactory) -> None:
        self.catalog = HelperCatalog()
        self.store = store
        self.backend = backend
        self.netns = netns
        self.agent = Agent(
            LocalStoreSource(store),
            backend,
            self.catalog,
            resync_interval=3600,
            workers=2,
            sweep_orphans=False,  # a started agent must not touch the host's other namespaces
        )

    def router(self, label: str, *, create_namespace: bool = True) -> Router:
        namespace = self.netns.create(label) if create_namespace else self.netns.name(label)
        with self.store.unit_of_work() as repo:
            return repo.add_router(new_router(name=label, project_id="p1", namespace=namespace))

    def bind(self, router: Router, protocol: str, port: int, helper: str) -> HelperBinding:
        with self.store.unit_of_work() as repo:
            return repo.add_binding(
                new_binding(self.catalog, router, protocol=protocol, port=port, helper=helper)
            )

    def fresh(self, router: Router) -> tuple[Router, list[HelperBinding]]:
        from cthm.domain import ListQuery

        with self.store.unit_of_work(write=False) as repo:
            return repo.get_router(router.id), repo.list_bindings(ListQuery(), router.id)


def nft(namespace: str, *args: str, stdin: str | None = None) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", namespace, "nft", *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    ).stdout


def foreign_ruleset(namespace: str) -> str:
    """The namespace's ruleset without cthm's table (and without handles)."""
    text = nft(namespace, "list", "ruleset")
    return re.sub(r"table inet cthm \{.*?\n\}\n?", "", text, flags=re.S)


def table_handle(namespace: str) -> str | None:
    """The kernel handle of our table: it changes whenever the table is rewritten."""
    text = nft(namespace, "-a", "list", "ruleset")
    match = re.search(r"table inet cthm \{ # handle (\d+)", text)
    return match.group(1) if match else None


@pytest.fixture
def world(tmp_path: Path, netns: NamespaceFactory) -> Iterator[World]:
    store = Store(f"sqlite:///{tmp_path / 'cthm.db'}")
    store.migrate()
    # Marked with the database's identity, as `cthm serve` wires it.
    backend = NftablesBackend(make_runner("auto"), owner=deployment_id(store))
    w = World(store, backend, netns)
    try:
        yield w
    finally:
        w.agent.stop()
        backend.close()
        store.close()


def add_ftp_router(store: Store, ports: list[int], namespace: str) -> tuple[Router, list[str]]:
    """A router in `namespace` with one tcp ftp binding per port, through the repository; the
    router and its bindings' ids."""
    catalog = HelperCatalog()
    with store.unit_of_work() as repo:
        router = repo.add_router(new_router(name="r", project_id="p", namespace=namespace))
        ids = [
            repo.add_binding(new_binding(catalog, router, protocol="tcp", port=p, helper="ftp")).id
            for p in ports
        ]
    return router, ids


class Statements:
    """Every statement any engine runs while in the `with` block."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def _count(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.seen.append(" ".join(statement.split()).lower())

    def __enter__(self) -> Statements:
        event.listen(Engine, "before_cursor_execute", self._count)
        return self

    def __exit__(self, *exc: object) -> None:
        event.remove(Engine, "before_cursor_execute", self._count)

    def touching(self, table: str) -> list[str]:
        return [s for s in self.seen if f" {table}" in s]
