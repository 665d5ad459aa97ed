"""Version documents shaped as Neutron's: openstacksdk discovers the API through them."""

from __future__ import annotations

from fastapi import APIRouter, Request

from cthm.api.schemas import ApiResource, Link, ResourcesResponse, Version, VersionsResponse

router = APIRouter(tags=["versions"])

API_VERSION = "v2.0"

# (name, collection) of the top-level resources, as Neutron lists its own.
RESOURCES = (
    ("router", "routers"),
    ("conntrack_helper_catalog", "conntrack_helper_catalog"),
    ("agent", "agents"),
)


def _base(request: Request) -> str:
    return str(request.base_url)  # ends with "/"; includes a root_path when mounted


@router.get("/", response_model=VersionsResponse)
def list_versions(request: Request) -> VersionsResponse:
    return VersionsResponse(versions=[_current(f"{_base(request)}{API_VERSION}/")])


def _current(href: str) -> Version:
    return Version(id=API_VERSION, status="CURRENT", links=[Link(href=href, rel="self")])


@router.get("/v2.0", response_model=ResourcesResponse)
@router.get("/v2.0/", response_model=ResourcesResponse, include_in_schema=False)
def list_resources(request: Request) -> ResourcesResponse:
    base = f"{_base(request)}{API_VERSION}"
    return ResourcesResponse(
        version=_current(f"{base}/"),
        resources=[
            ApiResource(
                name=name,
                collection=collection,
                links=[Link(href=f"{base}/{collection}", rel="self")],
            )
            for name, collection in RESOURCES
        ],
    )
