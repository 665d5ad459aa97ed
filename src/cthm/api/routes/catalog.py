"""/v2.0/conntrack_helper_catalog: what may be bound here, and whether this host's kernel has it."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from cthm.api import policy
from cthm.api.deps import ContextDep, HelperAvailability, PrincipalDep, no_query
from cthm.api.routes._shared import respond
from cthm.api.schemas import CatalogResponse, catalog_body
from cthm.domain import CatalogEntry, Protocol

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v2.0", tags=["catalog"])


@router.get(
    "/conntrack_helper_catalog",
    response_model=CatalogResponse,
    dependencies=[Depends(no_query)],
)
def show_catalog(context: ContextDep, principal: PrincipalDep) -> JSONResponse:
    policy.enforce(principal, "get_conntrack_helper_catalog", None)
    available = _availability(context.helper_availability)
    entries = [
        catalog_body(entry, _kernel_available(entry, available))
        for entry in context.catalog.entries()
    ]
    return respond(200, {"conntrack_helper_catalog": entries})


def _availability(probe: HelperAvailability | None) -> Mapping[tuple[str, Protocol], bool] | None:
    if probe is None:
        return None
    try:
        result = probe()
    except Exception:  # the catalog stays useful when the kernel probe fails: "unknown"
        log.exception("helper availability probe failed")
        return None
    return result if isinstance(result, Mapping) else None


def _kernel_available(
    entry: CatalogEntry, available: Mapping[tuple[str, Protocol], bool] | None
) -> bool | None:
    """Keyed by the kernel's helper name (RAS); an alias's own name (h323) is accepted too."""
    if available is None:
        return None
    for key in ((entry.kernel_helper, entry.protocol), (entry.helper, entry.protocol)):
        if key in available:
            return bool(available[key])
    return None
