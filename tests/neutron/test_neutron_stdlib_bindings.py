"""Importing Neutron leaves `http.server` bound to eventlet's green copy; the suite's
restore_stdlib_bindings (run before every test, tests/conftest.py) puts it back, so a plain
threaded HTTP server in another test shuts down instead of hanging on an eventlet lock."""

from __future__ import annotations

import http.server
import importlib
import sys
import threading

import pytest

from support.stdlib_bindings import restore_stdlib_bindings

pytest.importorskip("neutron")


def test_neutrons_imports_leave_a_green_http_server_and_it_is_put_back() -> None:
    green = importlib.import_module("eventlet.green.BaseHTTPServer")  # what Neutron pulls in
    # eventlet rebinds the package attribute while it builds its copy (a fresh import of it
    # after a restore does nothing more: bind it as that import did, to test the repair).
    http.server = green
    assert restore_stdlib_bindings() == ["http.server"]
    assert http.server is sys.modules["http.server"]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.shutdown()  # hung with eventlet's lock
    server.server_close()
    thread.join(timeout=10)
    assert not thread.is_alive()
