"""The status page (/ui) in a real headless browser: Debian's chromium driven by Playwright.

A real `cthm serve` (embedded agent, resync every 0.5 s) manages a router in a namespace the
test made. The browser logs in with the admin token through the form, sees the router ACTIVE,
the test deletes the namespace, and the page, refreshing by itself (the test never reloads it),
shows the router in ERROR with the agent's reason. A screenshot of that goes to tmp_path.

Playwright drives the system's /usr/bin/chromium (executable_path); it never downloads a
browser (`playwright install` is not used). `make system-packages` installs chromium.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from cthm.testing import NamespaceFactory
from cthm.testing.service import ServerProcess
from support.faults import Api, wait_settled, wait_until

CHROMIUM = Path("/usr/bin/chromium")
# As the development guide runs it: headless, no sandbox (root), nothing phoning home, a
# fresh profile (--user-data-dir: Playwright's persistent context, in tmp_path).
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
EVIL_NAME = "<script>alert(1)</script>edge"
TIMEOUT_MS = 20_000

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"{CHROMIUM} missing: `make system-packages` installs chromium"
)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    with ServerProcess(
        tmp_path / "data", tmp_path / "logs", args=("--resync-interval", "0.5")
    ) as started:
        yield started


def test_operator_sees_a_router_go_from_active_to_error(
    server: ServerProcess, netns: NamespaceFactory, tmp_path: Path
) -> None:
    namespace = netns.create("ui")
    with Api(server) as api:
        router_id = api.create_router(namespace, EVIL_NAME)
        assert api.create_binding(router_id, "tcp", 21, "ftp").status_code == 201
        settled = wait_settled(api, {router_id: namespace})
        assert settled.ok, (settled.problems, server.logs())

        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                str(tmp_path / "chromium-profile"),
                executable_path=str(CHROMIUM),
                headless=True,
                args=CHROMIUM_FLAGS,
            )
            try:
                page = context.new_page()
                page.set_default_timeout(TIMEOUT_MS)
                dialogs: list[str] = []
                page.on("dialog", lambda dialog: dialogs.append(dialog.message))
                loads: list[str] = []
                page.on("load", lambda loaded: loads.append(loaded.url))

                page.goto(f"{server.url}/ui?refresh=1")  # redirected to /ui/?refresh=1
                page.fill("#token", server.admin_token)
                page.click("button[type=submit]")
                page.wait_for_url(f"{server.url}/ui/?refresh=1")
                status = page.locator(f"#router-{router_id} .status")
                expect(status).to_have_text("ACTIVE", timeout=TIMEOUT_MS)
                name = page.locator(f"#router-{router_id} .name")
                expect(name).to_contain_text(
                    EVIL_NAME, timeout=TIMEOUT_MS
                )  # shown as text, not run

                (cookie,) = [c for c in context.cookies() if c["name"] == "cthm_ui_token"]
                assert cookie["httpOnly"] is True
                assert cookie["sameSite"] == "Strict"
                assert cookie["path"] == "/ui"
                assert cookie["secure"] is False  # plain HTTP on loopback

                # From here on the page reloads itself, every second (?refresh=1).
                loads_before = len(loads)
                netns.delete(namespace)
                expect(status).to_have_text("ERROR", timeout=TIMEOUT_MS)
                reason = page.locator(f"#router-{router_id} .reason")
                expect(reason).to_contain_text(
                    f"namespace {namespace} not found", timeout=TIMEOUT_MS
                )
                assert len(loads) > loads_before, "the page did not reload by itself"
                assert dialogs == [], "a script ran from a router's name"

                screenshot = tmp_path / "status-error.png"
                page.screenshot(path=str(screenshot), full_page=True)
                assert screenshot.read_bytes().startswith(b"\x89PNG")

                page.click("text=Log out")
                expect(page.locator("#token")).to_be_visible(timeout=TIMEOUT_MS)
                assert not [c for c in context.cookies() if c["name"] == "cthm_ui_token"]
            finally:
                context.close()
        assert wait_until(lambda: api.router(router_id)["status"] == "ERROR", 5.0)
