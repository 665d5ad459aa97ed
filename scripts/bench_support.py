"""What the benchmark scripts share: signals that unwind like Ctrl-C, cleanup no signal cuts
short, percentiles, and the JSON summary with its exit code."""

from __future__ import annotations

import json
import math
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

INTERRUPTED_EXIT = 130


class Interrupted(Exception):
    """SIGTERM/SIGHUP: unwind through every `finally`, as Ctrl-C does."""


def percentile(samples: list[float], q: float) -> float:
    """The nearest-rank percentile: the smallest sample with q% of them at or below it."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


@contextmanager
def interruptible() -> Iterator[None]:
    """SIGTERM and SIGHUP unwind like Ctrl-C."""

    def stop(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)
    yield


def run_reported(run: Callable[[ExitStack, dict[str, Any]], bool], json_file: Path | None) -> int:
    """Runs `run(stack, summary)` (True: every check held), everything it starts registered on
    the stack; prints the summary as JSON (and writes it to json_file). Exit code: 0 ok, 1 a
    check failed or an error (in the summary's `error`), 130 interrupted."""
    out: dict[str, Any] = {"ok": False}
    code = 1
    with interruptible():
        try:
            with ExitStack() as stack:
                try:
                    out["ok"] = run(stack, out)
                    code = 0 if out["ok"] else 1
                finally:
                    # Cleanup (the stack unwinding) must not be cut short by another signal.
                    signal.signal(signal.SIGINT, signal.SIG_IGN)
                    signal.signal(signal.SIGTERM, signal.SIG_IGN)
        except (KeyboardInterrupt, Interrupted) as exc:
            out["error"] = f"interrupted ({exc or 'SIGINT'})"
            code = INTERRUPTED_EXIT
        except Exception as exc:  # noqa: BLE001 (reported in the summary, then the exit code)
            out["error"] = f"{type(exc).__name__}: {exc}"
            print(f"error: {out['error']}", file=sys.stderr)
    text = json.dumps(out, indent=2, sort_keys=True)
    print(text)
    if json_file is not None:
        json_file.write_text(text + "\n")
    return code
