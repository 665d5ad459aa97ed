"""Desired state from the local store (the embedded `cthm serve`)."""

from __future__ import annotations

from cthm.agent.ports import BindingReport, DesiredRouter, InvalidDesiredState, RouterReport
from cthm.domain import InvalidInput, RouterNotFound, Status
from cthm.store import Store


class LocalStoreSource:
    def __init__(self, store: Store) -> None:
        self._store = store

    def load(self, router_id: str) -> DesiredRouter | None:
        with self._store.unit_of_work(write=False) as repo:
            try:
                router = repo.get_router(router_id)
            except RouterNotFound:
                return None
            except InvalidInput as exc:  # the row was edited behind the API's back
                raise InvalidDesiredState(
                    router_id, repo.router_revision(router_id), f"refused: {exc.message}"
                ) from exc
            bindings, rejected = repo.desired_bindings(router_id)
        return DesiredRouter(
            router,
            tuple(bindings),
            tuple(BindingReport(b_id, rev, Status.ERROR, why) for b_id, rev, why in rejected),
        )

    def router_ids(self) -> list[str]:
        with self._store.unit_of_work(write=False) as repo:
            return repo.list_router_ids()

    def tombstones(self) -> dict[str, str]:
        with self._store.unit_of_work(write=False) as repo:
            return repo.tombstones()

    def clear_tombstone(self, router_id: str) -> None:
        with self._store.unit_of_work() as repo:
            repo.clear_tombstone(router_id)

    def report(self, report: RouterReport) -> None:
        # Guarded by revision numbers: a report on an older revision never overwrites newer state.
        with self._store.unit_of_work() as repo:
            repo.set_router_status(
                report.router_id,
                report.status,
                report.reason,
                revision_number=report.revision_number,
            )
            repo.set_binding_statuses(
                (b.binding_id, b.revision_number, b.status, b.reason) for b in report.bindings
            )
