"""TLS: with a certificate and key, `cthm serve` speaks HTTPS only, and says so."""

from __future__ import annotations

import signal
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from cthm.settings import load_settings
from cthm.testing.service import CTHM, clean_env, free_port


def make_certificate(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def test_serve_with_tls_answers_https_with_hsts_and_refuses_plain_http(tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path)
    port = free_port()
    process = subprocess.Popen(
        [
            str(CTHM),
            "serve",
            "--data-dir",
            str(tmp_path / "data"),
            "--port",
            str(port),
            "--tls-cert",
            str(cert),
            "--tls-key",
            str(key),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=clean_env(),
    )
    try:
        response = None
        for _ in range(300):  # bounded: at most ~30 s
            try:
                response = httpx.get(
                    f"https://127.0.0.1:{port}/healthz",
                    verify=ssl.create_default_context(cafile=str(cert)),
                )
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert response is not None, "server never answered over TLS"
        assert response.status_code == 200
        assert response.headers["Strict-Transport-Security"].startswith("max-age=")
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=3)
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=20)
    assert process.returncode == 0, err
    assert f"https://127.0.0.1:{port}" in out.decode()


def test_a_bad_certificate_is_one_clear_error(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("not a certificate")
    key.write_text("not a key")
    result = subprocess.run(
        [
            str(CTHM),
            "serve",
            "--data-dir",
            str(tmp_path / "data"),
            "--port",
            str(free_port()),
            "--tls-cert",
            str(cert),
            "--tls-key",
            str(key),
        ],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("Error: cannot use TLS certificate"), result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("overrides", "ok"),
    [
        ({"host": "0.0.0.0"}, False),
        ({"host": "0.0.0.0", "allow_insecure_listen": True}, True),
        ({"host": "0.0.0.0", "tls_cert_file": "/c.pem", "tls_key_file": "/k.pem"}, True),
        ({"host": "127.0.0.1", "tls_cert_file": "/c.pem"}, False),
        ({"host": "::1"}, True),
    ],
)
def test_listening_beyond_loopback_needs_tls_or_an_explicit_opt_out(
    overrides: dict[str, Any], ok: bool
) -> None:
    if ok:
        load_settings(**overrides)
    else:
        with pytest.raises(ValueError, match=r"tls|loopback"):
            load_settings(**overrides)
