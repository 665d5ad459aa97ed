"""Runs one of scripts/bench*.py with `--tiny --json` for the benchmarks' smoke tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def run_tiny_json(
    script: str, timeout: float, extra: tuple[str, ...] = ()
) -> tuple[dict[str, Any], str, int]:
    """(its JSON object, its stderr, its pid): exit 0 and `ok` asserted; `extra`: more
    arguments. On a timeout it is
    terminated (it unwinds: namespaces deleted, servers and extensions stopped) and the test
    fails with its stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CTHM_")}
    process = subprocess.Popen(
        [sys.executable, str(SCRIPTS / script), "--tiny", "--json", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.terminate()
        stdout, stderr = process.communicate(timeout=60)
        pytest.fail(f"{script} did not finish in time: {stderr[-3000:]}")
    assert process.returncode == 0, stderr[-3000:]
    out: dict[str, Any] = json.loads(stdout)  # the whole of stdout: one object
    assert out["ok"] is True, out.get("error")
    assert out["tiny"] is True
    return out, stderr, process.pid
