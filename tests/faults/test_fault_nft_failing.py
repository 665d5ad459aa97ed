"""nft failing on demand: a wrapper first on the server's PATH fails in one namespace.

While it fails, a new binding on that router is ERROR with nft's message in the API, the
router's previous kernel table stays byte for byte, and another router keeps working. When
the failure goes away the router returns to ACTIVE by itself (backoff retry) and the kernel
holds the new binding.
"""

from __future__ import annotations

import os
import secrets
from collections import Counter
from pathlib import Path

import pytest

from cthm.testing import NamespaceFactory
from support.faults import (
    FOREIGN_TABLE,
    Api,
    ServerFactory,
    add_foreign_table,
    clear_nft_failure,
    nft_text,
    nft_wrapper,
    set_nft_failure,
    table_handle,
    wait_settled,
    wait_until,
)

pytestmark = pytest.mark.kernel

ERROR_TIMEOUT = 10.0
# Capped exponential backoff: the failure lasts about two seconds, so the next retry is a
# few seconds away; the bound leaves room without relying on the periodic resync (60 s).
RECOVERY_TIMEOUT = 30.0


@pytest.mark.parametrize("mode", ["write", "all"])
def test_failing_nft_keeps_the_old_table_reports_the_reason_and_recovers(
    mode: str,
    make_server: ServerFactory,
    netns: NamespaceFactory,
    tmp_path: Path,
    counts: Counter[str],
) -> None:
    bin_dir, fail_dir = nft_wrapper(tmp_path / "wrapper")
    server = make_server(
        env={"CTHM_NFT_BACKEND": "subprocess", "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    )
    bad_ns, good_ns = netns.create("bad"), netns.create("good")
    foreign = add_foreign_table(bad_ns)
    with Api(server) as api:
        bad, good = api.create_router(bad_ns, "bad"), api.create_router(good_ns, "good")
        assert api.create_binding(bad, "tcp", 21, "ftp").status_code == 201
        assert api.create_binding(good, "udp", 69, "tftp").status_code == 201
        settled = wait_settled(api, {bad: bad_ns, good: good_ns})
        assert settled.ok, (settled.problems, server.logs())
        before, handle = nft_text(bad_ns), table_handle(bad_ns)
        assert before is not None
        assert handle is not None
        assert "ftp" in before

        marker = f"injected fault {secrets.token_hex(4)}"
        set_nft_failure(fail_dir, bad_ns, mode, marker)
        counts["faults_injected"] += 1
        created = api.create_binding(bad, "udp", 69, "tftp")
        assert created.status_code == 201, created.text
        new_id = created.json()["conntrack_helper"]["id"]

        def bad_in_error() -> bool:
            router = api.router(bad)
            binding = {b["id"]: b for b in api.bindings(bad)}[new_id]
            return (
                router["status"] == "ERROR"
                and marker in router["status_reason"]
                and binding["status"] == "ERROR"
                and marker in binding["status_reason"]
            )

        assert wait_until(bad_in_error, ERROR_TIMEOUT), (
            api.router(bad),
            api.bindings(bad),
            server.logs(),
        )
        # The previous state is intact, byte for byte, and so is the foreign table.
        assert nft_text(bad_ns) == before, (before, nft_text(bad_ns), server.logs())
        assert table_handle(bad_ns) == handle
        assert nft_text(bad_ns, FOREIGN_TABLE) == foreign

        # One bad router does not block the others.
        assert api.create_binding(good, "tcp", 21, "ftp").status_code == 201
        settled = wait_settled(api, {good: good_ns})
        assert settled.ok, (settled.problems, server.logs())
        assert nft_text(bad_ns) == before  # still failing, still untouched

        clear_nft_failure(fail_dir, bad_ns)
        settled = wait_settled(api, {bad: bad_ns, good: good_ns}, timeout=RECOVERY_TIMEOUT)
        assert settled.ok, (settled.problems, server.logs())
        after = nft_text(bad_ns)
        assert after is not None
        assert "tftp" in after
        assert nft_text(bad_ns, FOREIGN_TABLE) == foreign
        counts["recovered"] += 1
        counts["recovery_ms"] = round(settled.seconds * 1000)
