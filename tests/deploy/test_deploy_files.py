"""What the repository ships for running cthm as a service: the systemd units, the example
settings file, the LICENSE.

The units are checked by systemd itself (`systemd-analyze verify`, and `security --offline`
for their exposure) with ExecStart pointed at this environment's `cthm`; the example settings
file must load as cthm loads its config and name every setting there is.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Annotated, Any

import pytest
from pydantic import TypeAdapter

from cthm.settings import Settings, load_settings
from cthm.testing.service import CTHM

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "deploy" / "systemd"
EXAMPLE = ROOT / "deploy" / "cthm.toml.example"
INSTALLED_CTHM = "/usr/local/bin/cthm"
CAPABILITIES = {"CAP_NET_ADMIN", "CAP_SYS_ADMIN"}
# `systemd-analyze security` rates 0 (locked down) to 10 (exposed); its --threshold is x10.
MAX_EXPOSURE = 5.0
# A commented setting: `# name = value` (prose comments have no " = " after one word).
COMMENTED = re.compile(r"^# ([a-z_]+) = (.+)$")
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed"
)


def unit_settings(path: Path) -> dict[str, list[str]]:
    """key -> every value it is given in the [Service] section (systemd allows repeats)."""
    values: dict[str, list[str]] = {}
    section = ""
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
        elif section == "Service":
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


@pytest.mark.parametrize(
    ("unit", "command"),
    [("cthm-api.service", "serve"), ("cthm-agent.service", "agent run")],
)
def test_units_restart_on_failure_with_two_capabilities_and_a_read_only_system(
    unit: str, command: str
) -> None:
    service = unit_settings(UNITS / unit)
    (exec_start,) = service["ExecStart"]
    assert exec_start.startswith(f"{INSTALLED_CTHM} {command}")
    assert service["Restart"] == ["on-failure"]
    for key in ("CapabilityBoundingSet", "AmbientCapabilities"):
        (value,) = service[key]
        assert set(value.split()) == CAPABILITIES, key
    for key, wanted in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "ProtectKernelModules": "yes",
        "RestrictNamespaces": "net",
    }.items():
        assert service[key] == [wanted], key
    writable = " ".join(service["ReadWritePaths"]).split()
    if command == "serve":  # the data directory (root's default) and nothing else of note
        assert "/var/lib/cthm" in writable
        assert service["StateDirectory"] == ["cthm"]
    assert set(writable) <= {"/var/lib/cthm", "-/run/netns"}


@needs_systemd_analyze
def test_systemd_accepts_the_units(tmp_path: Path) -> None:
    """verify fails on a missing binary, warns (exit 0) on an unknown or malformed key: both
    count. ExecStart is pointed at this environment's `cthm`, which verify wants to exist."""
    assert SYSTEMD_ANALYZE is not None
    units = []
    for source in sorted(UNITS.glob("*.service")):
        unit = tmp_path / source.name
        unit.write_text(source.read_text().replace(INSTALLED_CTHM, str(CTHM)))
        units.append(unit)
    assert {u.name for u in units} == {"cthm-api.service", "cthm-agent.service"}
    verified = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", *map(str, units)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert verified.returncode == 0, verified.stderr
    assert (verified.stdout + verified.stderr).strip() == ""
    for unit in units:
        security = subprocess.run(
            [
                SYSTEMD_ANALYZE,
                "security",
                "--offline=yes",
                f"--threshold={round(MAX_EXPOSURE * 10)}",
                "--no-pager",
                str(unit),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert security.returncode == 0, security.stdout[-2000:] + security.stderr


def example_keys() -> tuple[dict[str, Any], dict[str, Any]]:
    """(the settings the example sets, the ones it shows commented out) with their values."""
    text = EXAMPLE.read_text()
    active = tomllib.loads(text)
    commented: dict[str, Any] = {}
    for line in text.splitlines():
        match = COMMENTED.match(line)
        if match:
            key, value = match.groups()
            commented[key] = tomllib.loads(f"{key} = {value}")[key]
    return active, commented


def test_the_example_names_every_setting_once() -> None:
    active, commented = example_keys()
    assert not set(active) & set(commented), "set and shown commented out"
    missing = set(Settings.model_fields) - set(active) - set(commented)
    assert not missing, f"deploy/cthm.toml.example lacks {sorted(missing)}"
    unknown = (set(active) | set(commented)) - set(Settings.model_fields)
    assert not unknown, f"not settings: {sorted(unknown)}"


def test_the_example_loads_and_every_shown_value_is_valid(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in [name for name in os.environ if name.startswith("CTHM_")]:
        monkeypatch.delenv(name)  # the caller's CTHM_* must not decide
    settings = load_settings(EXAMPLE)
    assert settings.data_dir == Path("/var/lib/cthm")
    assert settings.port == 9797
    assert settings.is_loopback
    _, commented = example_keys()
    for key, value in commented.items():
        field = Settings.model_fields[key]
        shape: Any = (
            Annotated[field.annotation, *field.metadata] if field.metadata else field.annotation
        )
        adapter: TypeAdapter[Any] = TypeAdapter(shape)
        adapter.validate_python(value)  # raises if the example shows a value cthm refuses
        if field.default_factory is None and field.default is not None:
            # A setting with a default is shown at its default; the others with an example.
            assert value == field.default, key


def test_license_matches_the_projects_declared_license() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"]
    assert declared == {"text": "Apache-2.0"}
    text = (ROOT / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License")
    assert "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
