"""A kernel-worker process (sync_processes.py): `python -m cthm.netfilter.sync_worker
[--owner O] [--library L] [--netns-dir D] FD`, FD its end of the agent's socketpair. Its own
module, which the package does not import, so that `-m` runs it once."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path

from cthm.netfilter.backend import NftablesBackend
from cthm.netfilter.libnftables import LIBRARY, LibNftablesRunner
from cthm.netfilter.netns import NETNS_DIR
from cthm.netfilter.sync_processes import WORKER_CONTEXTS, serve


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cthm kernel worker")
    parser.add_argument("--owner")
    parser.add_argument("--library", default=LIBRARY)
    parser.add_argument("--netns-dir", type=Path, default=NETNS_DIR)
    parser.add_argument("fd", type=int)
    args = parser.parse_args(argv)
    conn = Connection(args.fd)
    logging.basicConfig(level=logging.WARNING, format="cthm kernel worker %(process)d: %(message)s")
    runner = LibNftablesRunner(
        library=args.library,
        netns_dir=args.netns_dir,
        max_contexts=WORKER_CONTEXTS,
        keep_caches=False,
    )
    backend = NftablesBackend(runner, owner=args.owner)
    try:
        # The loop runs on the runner's own thread, where its calls run at once: no hand-off
        # between two threads per sync (this process does nothing else).
        runner.batch(lambda: serve(conn, backend))
    finally:
        backend.close()
        conn.close()
    return 0


if __name__ == "__main__":
    # Ctrl-C reaches the whole process group: the agent stops its workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(main())
