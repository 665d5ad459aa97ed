"""The API's side of the audit trail: denied attempts, and failed ones (an audited change the
policy allowed that then did not take effect: its transaction, and the success event in it,
rolled back; recorded here with outcome `failed`, the same way as a denial).

A change is recorded by the store in the change's own transaction. A denied attempt changes
nothing, and the request's transaction (if it had one) was rolled back, so it is recorded apart:
a 403 from the policy and a 404 that hides another project's object (`Denial` errors) here; a
401 (no usable token) by cthm.api.auth_audit, aggregated. Recording must never change the
answer, not even its timing: the event is queued and committed by the store's background writer
(cthm.store.audit_writer), so a 404 that hides a router costs what a 404 for an unknown id
costs. A failure to record is logged and the caller still gets the denial.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from cthm.api.errors import Denial
from cthm.api.policy import Allowed
from cthm.api.principal import Principal
from cthm.store import AuditContext, Store

log = logging.getLogger(__name__)

# A 401 happens before routing: there is no target but the request itself.
UNAUTHENTICATED_ACTION = "authenticate"
UNAUTHENTICATED_TARGET = "api"


def context_of(state: Mapping[str, Any]) -> AuditContext:
    """Who was denied, from a request's state: its request id and, once authenticated, the
    principal (its token id, never the token)."""
    principal = state.get("principal")
    if not isinstance(principal, Principal):
        principal = None
    return AuditContext(
        request_id=str(state.get("request_id", "")),
        token_id=principal.token_id if principal is not None else None,
        project_id=principal.project_id if principal is not None else None,
    )


def record_denial(
    store: Store, state: Mapping[str, Any], error: Denial, status_code: int, detail: str
) -> None:
    """A request the policy refused (403) or answered as if its target did not exist (404)."""
    _record(
        store,
        context_of(state),
        action=error.action,
        target_type=error.target_type,
        target_id=error.target_id,
        target_project_id=error.target_project_id,
        status_code=status_code,
        detail=detail,
    )


def record_failure(
    store: Store,
    state: Mapping[str, Any],
    allowed: Allowed,
    status_code: int,
    detail: str,
) -> None:
    """An audited change the policy allowed that then failed (its transaction rolled back):
    outcome `failed`, with the status the caller got and the error's message."""
    _record(
        store,
        context_of(state),
        action=allowed.action,
        target_type=allowed.target_type,
        target_id=allowed.target_id,
        target_project_id=allowed.target_project_id,
        status_code=status_code,
        detail=detail,
        outcome="failed",
    )


def _record(store: Store, context: AuditContext, **fields: Any) -> None:
    try:
        store.submit_denied(context, **fields)
    except Exception:
        log.exception(
            "could not record a %s %s in the audit trail (request %s)",
            fields.get("outcome", "denied"),
            fields.get("action"),
            context.request_id,
        )
