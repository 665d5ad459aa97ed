"""The real OpenStack clients' configuration for a cthm server, and the `openstack` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLOUD = "cthm"
OPENSTACK = Path(sys.executable).with_name("openstack")  # python-openstackclient's script
CLI_TIMEOUT = 60.0


def clouds_yaml(url: str, token: str) -> str:
    """The clouds.yaml entry docs/api.md documents (OpenStack clients)."""
    return (
        "clouds:\n"
        f"  {CLOUD}:\n"
        "    auth_type: admin_token\n"
        "    auth:\n"
        f"      token: {token}\n"
        f"      endpoint: {url}\n"
        f"    network_endpoint_override: {url}/v2.0\n"
    )


@dataclass(frozen=True)
class CliResult:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        assert self.returncode == 0, self.stderr
        return json.loads(self.stdout)


@dataclass(frozen=True)
class Cli:
    """Runs the `openstack` command against the cloud of `clouds_file`."""

    clouds_file: Path

    def __call__(self, *args: str) -> CliResult:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
        env.update(OS_CLIENT_CONFIG_FILE=str(self.clouds_file), OS_CLOUD=CLOUD)
        done = subprocess.run(
            [str(OPENSTACK), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=CLI_TIMEOUT,
            check=False,
        )
        return CliResult(done.returncode, done.stdout, done.stderr)
