"""`cthm serve`: settings, refusals, the data directory, signals and restarts."""

from __future__ import annotations

import signal
import socket
import stat
from pathlib import Path

import pytest
from cthm_cli_harness import ServerProcess, assert_error, free_port, run


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.1", "::", "example.com"])
def test_a_non_loopback_host_is_refused(tmp_path: Path, host: str) -> None:
    data_dir = tmp_path / "data"
    result = run("serve", "--data-dir", str(data_dir), "--host", host)
    assert_error(result, 2, "invalid settings", "host", "loopback")
    assert not data_dir.exists()  # nothing is touched before the settings are valid


def test_a_non_loopback_host_from_the_environment_is_refused(tmp_path: Path) -> None:
    result = run("serve", "--data-dir", str(tmp_path), env={"CTHM_HOST": "0.0.0.0"})
    assert_error(result, 2, "host", "loopback")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--port", "70000"), "port"),
        (("--port", "0"), "port"),
        (("--port", "http"), "--port"),
        (("--resync-interval", "0"), "resync_interval"),
        (("--resync-interval", "soon"), "--resync-interval"),
    ],
)
def test_bad_flags_exit_2_in_one_line(tmp_path: Path, args: tuple[str, ...], fragment: str) -> None:
    assert_error(run("serve", "--data-dir", str(tmp_path), *args), 2, fragment)


def test_bad_config_files_exit_2_in_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    assert_error(run("serve", "--config", str(missing)), 2, str(missing))
    assert_error(run("serve", env={"CTHM_CONFIG": str(missing)}), 2, str(missing))
    broken = tmp_path / "broken.toml"
    broken.write_text("port = [\n")
    assert_error(run("serve", "--config", str(broken)), 2, "TOML")
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('listen = "0.0.0.0"\n')
    assert_error(run("serve", "--config", str(unknown)), 2, "listen")


def test_a_database_url_of_no_known_kind_is_a_settings_error(tmp_path: Path) -> None:
    result = run("serve", "--data-dir", str(tmp_path), env={"CTHM_DATABASE_URL": "nosuchdb://x"})
    assert_error(result, 2, "cannot use database nosuchdb://x")


def test_a_data_dir_that_cannot_be_created_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = run("serve", "--data-dir", str(blocker / "data"), "--port", str(free_port()))
    assert_error(result, 1, "cannot create data directory", str(blocker / "data"))


def test_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = run("serve", "--data-dir", str(tmp_path / "data"), "--port", str(port))
    assert_error(result, 1, f"cannot listen on 127.0.0.1:{port}", "in use")


def test_data_survives_a_restart_and_signals_stop_cleanly(tmp_path: Path) -> None:
    data_dir = tmp_path / "state" / "cthm"  # missing: serve creates it, private
    logs = tmp_path / "logs"
    with ServerProcess(data_dir, logs) as first:
        assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
        token = first.admin_token  # the first start wrote it, and says so before listening
        assert first.stdout.splitlines() == [
            f"cthm created the first admin token: it is in {data_dir / 'admin.token'} "
            "(readable only by its owner); use it as --token or CTHM_TOKEN",
            f"cthm listening on {first.url} (data in {data_dir})",
        ]
        router = run(
            "router", "create", "kept", "--project", "p1", "--json", url=first.url, token=token
        )
        router_id = router.json()["router"]["id"]
        binding = run(
            "helper", "create", "kept", "--protocol", "udp", "--port", "69", "--helper", "tftp",
            "--json", url=first.url, token=token,
        ).json()["conntrack_helper"]  # fmt: skip
        assert (data_dir / "cthm.db-wal").exists()  # the store is open
        assert first.stop(signal.SIGTERM) == 0, first.logs()
    assert "Traceback" not in first.stderr
    # SQLite removes its write-ahead log when the last connection closes: a killed server
    # leaves it behind.
    assert not (data_dir / "cthm.db-wal").exists()

    with ServerProcess(data_dir, logs) as second:
        # no second token: the first one still works
        assert second.stdout.splitlines() == [
            f"cthm listening on {second.url} (data in {data_dir})"
        ]
        assert second.admin_token == token
        shown = run("router", "show", "kept", "--json", url=second.url, token=token).json()[
            "router"
        ]
        assert shown["id"] == router_id
        assert [h["id"] for h in shown["conntrack_helpers"]] == [binding["id"]]
        assert second.stop(signal.SIGINT) == 0, second.logs()
    assert "Traceback" not in second.stderr
    assert not (data_dir / "cthm.db-wal").exists()
    assert_error(run("router", "list", url=second.url, token=token), 3)  # it really stopped


def test_settings_from_a_config_file(tmp_path: Path) -> None:
    port = free_port()
    data_dir = tmp_path / "from-config"
    config = tmp_path / "cthm.toml"
    config.write_text(f'data_dir = "{data_dir}"\nport = {port}\n')
    with ServerProcess(
        data_dir,
        tmp_path / "logs",
        port=port,
        args=("--config", str(config)),
        location_flags=False,  # only the file says where
    ) as server:
        assert server.stdout.splitlines()[-1].startswith(
            f"cthm listening on http://127.0.0.1:{port} "
        )
        assert (data_dir / "cthm.db").exists()
        assert server.stop() == 0, server.logs()
