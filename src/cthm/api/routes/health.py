"""/healthz: 200 when the store answers, 503 (Neutron error body) when it does not."""

from __future__ import annotations

from fastapi import APIRouter

from cthm.api.deps import StoreDep
from cthm.api.schemas import HealthResponse

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthResponse)
def healthz(store: StoreDep) -> HealthResponse:
    store.check_health()  # raises Unavailable -> 503
    return HealthResponse(status="ok")
