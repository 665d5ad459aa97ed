"""Running the real `cthm` command and a real `cthm serve` process for the CLI tests."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from cthm.testing.service import CTHM, ServerProcess, clean_env, free_port

__all__ = [
    "CTHM",
    "Result",
    "ServerProcess",
    "assert_error",
    "clean_env",
    "free_port",
    "run",
    "serving",
]

RUN_TIMEOUT = 60.0


@dataclass(frozen=True)
class Result:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        assert self.returncode == 0, self
        return json.loads(self.stdout)


def run(
    *args: str,
    url: str | None = None,
    env: dict[str, str] | None = None,
    token: str | None = None,
) -> Result:
    """`cthm ARGS...` with a clean environment; url as CTHM_URL and token as CTHM_TOKEN."""
    full_env = clean_env(**({"CTHM_URL": url} if url else {}))
    if token is not None:
        full_env["CTHM_TOKEN"] = token
    full_env.update(env or {})
    proc = subprocess.run(
        [str(CTHM), *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    return Result(tuple(args), proc.returncode, proc.stdout, proc.stderr)


@contextlib.contextmanager
def serving(process: ServerProcess) -> Iterator[ServerProcess]:
    """Starts `process`; at the end stops it (SIGTERM) and fails unless it exited cleanly."""
    process.start()
    try:
        yield process
    finally:
        code = process.stop()
    assert code == 0, f"cthm serve did not exit cleanly after SIGTERM: {process.logs()}"


def assert_error(result: Result, exit_code: int, *fragments: str) -> str:
    """The command failed with `exit_code` and exactly one `Error: ...` line; returns it."""
    assert result.returncode == exit_code, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("Error: "), line
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    assert result.stdout == "", result.stdout
    return line
