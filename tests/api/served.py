"""Real Services (an agent on the kernel) with an Api over their app, started per test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from cthm.cli.service import Service
from cthm.settings import load_settings

from .support import Api, TestClient, issue_token


class Served:
    """A started Service and an Api over its app, as its admin."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.client = TestClient(service.app())
        token = issue_token(service.store, "admin", ["admin"])
        self.api = Api(client=self.client, store=service.store, token=token, admin_token=token)


S = TypeVar("S", bound=Served)


def services(tmp_path: Path, kind: type[S]) -> Iterator[Callable[..., S]]:
    """For a fixture: starts Services (each on its own data directory unless given one); all
    stop at the end."""
    started: list[S] = []

    def start(data_dir: Path | None = None, **settings: Any) -> S:
        directory = data_dir or tmp_path / f"data{len(started)}"
        service = Service(
            load_settings(data_dir=directory, sweep_orphans=False, **settings),
            say=lambda _: None,
        )
        service.start()
        served = kind(service)
        started.append(served)
        return served

    yield start
    for served in started:
        served.client.close()
        served.service.stop()
