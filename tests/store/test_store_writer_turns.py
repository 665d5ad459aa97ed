"""SQLite writers take turns across processes (`cthm serve --workers N`): on an flock of a
file beside the database, each opener (a process's store) holding its own."""

from __future__ import annotations

import multiprocessing
import threading
from pathlib import Path

from cthm.domain import new_router
from cthm.store import Store
from cthm.store.writer_turns import WriterTurns

WAIT = 10.0


def test_a_second_store_on_the_file_waits_for_the_first_ones_turn(tmp_path: Path) -> None:
    database = tmp_path / "cthm.db"
    first, second = WriterTurns(database), WriterTurns(database)
    entered = threading.Event()

    def writer() -> None:
        with second.turn(WAIT):
            entered.set()

    try:
        with first.turn(WAIT):
            thread = threading.Thread(target=writer, daemon=True)
            thread.start()
            assert not entered.wait(0.3)  # the other opener's turn is taken
        assert entered.wait(WAIT)  # and its own comes as soon as the first one's ends
        thread.join(WAIT)
    finally:
        first.close()
        second.close()
    assert (tmp_path / "cthm.db-writers").stat().st_mode & 0o777 == 0o600


def test_waiting_for_a_turn_is_bounded(tmp_path: Path) -> None:
    first, second = WriterTurns(tmp_path / "cthm.db"), WriterTurns(tmp_path / "cthm.db")
    try:
        # The second goes on without the turn (SQLite decides, as before), never hangs.
        with first.turn(WAIT), second.turn(0.05):
            pass
    finally:
        first.close()
        second.close()


def test_without_a_lock_file_the_threads_of_a_process_still_take_turns(tmp_path: Path) -> None:
    turns = WriterTurns(tmp_path / "missing-directory" / "cthm.db")
    entered = threading.Event()

    def writer() -> None:
        with turns.turn(WAIT):
            entered.set()

    with turns.turn(WAIT):
        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        assert not entered.wait(0.3)
    assert entered.wait(WAIT)
    thread.join(WAIT)


def _write_routers(url: str, prefix: str, count: int) -> None:
    store = Store(url)
    try:
        for index in range(count):
            with store.unit_of_work() as repo:
                repo.add_router(new_router(name=f"{prefix}{index}", project_id="p1"))
    finally:
        store.close()


def test_processes_writing_one_file_at_once_all_commit(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cthm.db'}"
    store = Store(url)
    store.migrate()
    context = multiprocessing.get_context("spawn")  # no fork of this threaded test process
    workers = [context.Process(target=_write_routers, args=(url, f"w{n}-", 30)) for n in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    try:
        assert [w.exitcode for w in workers] == [0, 0, 0]
        with store.unit_of_work(write=False) as repo:
            assert len(repo.list_router_ids()) == 90
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.kill()
        store.close()
