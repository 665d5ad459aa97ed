"""Reaching the server: unreachable, silent and foreign servers, --url, and the client library."""

from __future__ import annotations

import http.server
import socket
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator

import pytest
from cthm_cli_harness import CTHM, Result, ServerProcess, assert_error, clean_env, free_port, run

from cthm.cli import client as client_module
from cthm.cli.client import ClientError, CthmClient, ServerUnreachable

Cthm = Callable[..., Result]

# Well formed, known to no server: these tests are about reaching one, and without a token the
# client stops before trying (it would read the default data directory's admin.token, which a
# machine may or may not have).
SOME_TOKEN = "cthm_" + "A" * 43


@pytest.mark.parametrize(
    "args",
    [
        ("router", "list"),
        ("router", "show", "edge"),
        ("router", "create", "edge", "--project", "p"),
        ("helper", "create", "edge", "--protocol", "tcp", "--port", "21", "--helper", "ftp"),
        ("catalog",),
    ],
)
def test_a_server_that_is_down_is_exit_3(args: tuple[str, ...]) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    assert_error(run(*args, url=url, token=SOME_TOKEN), 3, f"cannot reach cthm at {url}", "refused")


def test_a_silent_server_times_out_with_exit_3() -> None:
    # The kernel completes the connection (backlog); nobody ever answers.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        result = run("--timeout", "0.3", "router", "list", url=url, token=SOME_TOKEN)
    assert_error(result, 3, f"cannot reach cthm at {url}", "no answer within 0.3s")


class _Foreign(http.server.BaseHTTPRequestHandler):
    """Some other web server: HTML pages, a 500 on /v2.0/routers/<id>."""

    def do_GET(self) -> None:
        status = 500 if self.path.startswith("/v2.0/routers/") else 200
        body = b"<html><body>hello</body></html>"
        self.send_response(status)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def foreign_url() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Foreign)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def test_a_server_that_is_not_cthm_is_one_line(foreign_url: str) -> None:
    assert_error(
        run("router", "list", url=foreign_url, token=SOME_TOKEN), 1, "is this a cthm server?"
    )
    assert_error(
        run("router", "show", str(uuid.uuid4()), url=foreign_url, token=SOME_TOKEN), 1, "HTTP 500"
    )


@pytest.mark.parametrize("url", ["ftp://127.0.0.1:9797", "not a url", "http://", "127.0.0.1:9797"])
def test_a_bad_url_is_a_usage_error(url: str) -> None:
    assert_error(run("router", "list", url=url), 2, "--url")


def test_the_url_option_wins_over_the_environment(server: ServerProcess, project: str) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    result = run(
        "--url", server.url, "router", "list", "--project", project,
        url=down, token=server.admin_token,
    )  # fmt: skip
    assert result.returncode == 0, result
    assert_error(run("router", "list", url=down, token=server.admin_token), 3, down)


def test_a_closed_stdout_is_not_a_traceback(server: ServerProcess) -> None:
    process = subprocess.Popen(
        [str(CTHM), "catalog"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=clean_env(CTHM_URL=server.url, CTHM_TOKEN=server.admin_token),
    )
    assert process.stdout is not None
    process.stdout.close()  # the reader goes away before the command writes anything
    _, stderr = process.communicate(timeout=60)
    assert b"Traceback" not in stderr
    assert process.returncode == 1


def test_the_client_raises_typed_errors(server: ServerProcess, project: str) -> None:
    with CthmClient(server.url, timeout=10, token=server.admin_token) as client:
        assert client.health()
        missing = str(uuid.uuid4())
        with pytest.raises(ClientError) as not_found:
            client.get_router(missing)
        assert not_found.value.status == 404
        assert missing in not_found.value.message
        assert not_found.value.type

        router = client.create_router(name="lib", project_id=project)
        with pytest.raises(ClientError) as invalid:
            client.create_helper(router["id"], protocol="udp", port=21, helper="ftp")
        assert invalid.value.status == 400
        binding = client.create_helper(router["id"], protocol="tcp", port=21, helper="ftp")
        with pytest.raises(ClientError) as conflict:
            client.create_helper(router["id"], protocol="tcp", port=21, helper="ftp")
        assert conflict.value.status == 409
        assert binding["id"] in conflict.value.message
        updated = client.update_helper(router["id"], binding["id"], port=2121)
        assert updated["port"] == 2121
        client.delete_router(router["id"])
        assert client.list_routers(project_id=project) == []

    with CthmClient(f"http://127.0.0.1:{free_port()}") as down, pytest.raises(ServerUnreachable):
        down.catalog()


def test_lists_are_read_page_by_page(
    server: ServerProcess, project: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_module, "PAGE_SIZE", 2)
    with CthmClient(server.url, token=server.admin_token) as client:
        created = {client.create_router(name=f"r{i}", project_id=project)["id"] for i in range(5)}
        listed = client.list_routers(project_id=project)
    assert sorted(r["id"] for r in listed) == sorted(created)
