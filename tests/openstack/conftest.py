"""A real `cthm serve` and the real OpenStack clients pointed at it through a clouds.yaml.

The server, its clouds.yaml and the SDK connection are shared by the module (a server start and
the clients' version discovery cost about a second); each test makes its own router.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from openstack.config.loader import OpenStackConfig
from openstack.connection import Connection
from osclients import CLOUD, Cli, clouds_yaml

from cthm.testing.service import ServerProcess


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("openstack")
    with ServerProcess(base / "data", base / "logs") as running:
        yield running


@pytest.fixture(scope="module")
def clouds_file(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("clouds") / "clouds.yaml"
    path.write_text(clouds_yaml(server.url, server.admin_token), encoding="utf-8")
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def conn(clouds_file: Path) -> Iterator[Connection]:
    # Only our file, and no OS_* variable of the caller's environment.
    loader = OpenStackConfig(config_files=[str(clouds_file)], load_envvars=False)
    connection = Connection(config=loader.get_one(cloud=CLOUD))
    try:
        yield connection
    finally:
        connection.close()


@pytest.fixture(scope="module")
def cli(clouds_file: Path) -> Cli:
    return Cli(clouds_file)
