"""Request and response bodies, Neutron's shape plus cthm's fields.

Requests are strict: JSON types must match exactly (a port is a JSON integer, never "21", true or
21.0) and unknown fields are refused. A read-only attribute given in a request is refused with a
message saying so. Meaning (ranges, names, the catalog) is checked by the domain, not here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from cthm.api.query import (
    FieldSpec,
    ResourceSpec,
    parse_direction_value,
    parse_int,
    parse_name,
    parse_namespace,
    parse_port,
    parse_project_id,
    parse_protocol_value,
    parse_status,
    parse_text,
    parse_timestamp,
    parse_uuid,
)
from cthm.domain import CatalogEntry, Direction, HelperBinding, Protocol, Router, Status


def format_timestamp(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with a "Z", as Neutron writes timestamps."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


Timestamp = Annotated[
    datetime | None, PlainSerializer(format_timestamp, return_type=str | None, when_used="always")
]

_PROTOCOLS = [p.value for p in Protocol]
_DIRECTIONS = [d.value for d in Direction]
_DIRECTION_HELP = (
    "ingress: connections arriving at the router, forwarded or addressed to it (netfilter "
    "PREROUTING, as Neutron); output: connections the router namespace itself originates "
    "(netfilter OUTPUT)"
)


# --- requests ----------------------------------------------------------------------------------


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    READ_ONLY: ClassVar[frozenset[str]] = frozenset()
    VERB: ClassVar[str] = "set"
    NULLABLE: ClassVar[bool] = True

    @model_validator(mode="before")
    @classmethod
    def _refuse_read_only_and_null(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            for key, value in data.items():
                if key in cls.READ_ONLY:
                    raise PydanticCustomError(
                        "cthm_read_only",
                        "cannot {verb} read-only attribute {field}",
                        {"verb": cls.VERB, "field": key},
                    )
                if value is None and not cls.NULLABLE and key in cls.model_fields:
                    raise PydanticCustomError(
                        "cthm_null", "{field} may not be null", {"field": key}
                    )
        return data


_ROUTER_SERVER_SET = frozenset(
    {
        "id",
        "status",
        "status_reason",
        "revision_number",
        "created_at",
        "updated_at",
        "conntrack_helpers",
        "hosts",
    }
)


class RouterCreate(StrictModel):
    READ_ONLY = _ROUTER_SERVER_SET - {"id"}

    id: str | None = Field(
        default=None,
        description="admin only: register the router under this UUID (e.g. Neutron's own "
        "router id, so that the default namespace is the L3 agent's qrouter-<id>); "
        "default: a new one",
        json_schema_extra={"format": "uuid"},
    )
    name: str = ""
    project_id: str | None = Field(default=None, description="default: the caller's project")
    tenant_id: str | None = Field(default=None, description="Neutron's older name of project_id")
    namespace: str | None = Field(
        default=None, description="network namespace; default qrouter-<id> (admin only)"
    )


class RouterUpdate(StrictModel):
    READ_ONLY = _ROUTER_SERVER_SET | {"project_id", "tenant_id", "namespace"}
    VERB = "update"
    NULLABLE = False

    name: str | None = None


class RouterCreateRequest(StrictModel):
    router: RouterCreate


class RouterUpdateRequest(StrictModel):
    router: RouterUpdate


_BINDING_SERVER_SET = frozenset(
    {"id", "router_id", "status", "status_reason", "revision_number", "created_at", "updated_at"}
)

Port = Annotated[int, Field(json_schema_extra={"minimum": 1, "maximum": 65535})]
ProtocolText = Annotated[str, Field(json_schema_extra={"enum": _PROTOCOLS})]
# Text, not the enum: the domain judges the value, so a wrong one gets the domain's message.
DirectionText = Annotated[
    str, Field(description=_DIRECTION_HELP, json_schema_extra={"enum": _DIRECTIONS})
]


class ConntrackHelperCreate(StrictModel):
    READ_ONLY = _BINDING_SERVER_SET

    protocol: ProtocolText
    port: Port
    helper: str
    direction: DirectionText = Direction.INGRESS.value
    project_id: str | None = Field(default=None, description="if given, the router's project")
    tenant_id: str | None = Field(default=None, description="if given, the router's project")


class ConntrackHelperUpdate(StrictModel):
    READ_ONLY = _BINDING_SERVER_SET | {"project_id", "tenant_id"}
    VERB = "update"
    NULLABLE = False

    protocol: ProtocolText | None = None
    port: Port | None = None
    helper: str | None = None
    direction: DirectionText | None = None


class ConntrackHelperCreateRequest(StrictModel):
    conntrack_helper: ConntrackHelperCreate


class ConntrackHelperUpdateRequest(StrictModel):
    conntrack_helper: ConntrackHelperUpdate


# An agent reports what it verified: never PENDING. Revisions fit the database's 64-bit integer;
# the bound is 2**53 so that the OpenAPI document (JSON numbers, often doubles) states it exactly.
ReportedStatus = Literal["ACTIVE", "ERROR"]
Revision = Annotated[int, Field(ge=0, le=2**53)]


class BindingStatusReport(StrictModel):
    id: str
    revision_number: Revision = Field(description="the binding revision the agent applied")
    status: ReportedStatus
    status_reason: str = ""


class RouterStatusReport(StrictModel):
    revision_number: Revision = Field(description="the router revision the agent applied")
    status: ReportedStatus
    status_reason: str = ""
    conntrack_helpers: list[BindingStatusReport] = Field(default_factory=list)


class RouterStatusRequest(StrictModel):
    status: RouterStatusReport


# --- several hosts: what a node agent sends -----------------------------------------------------

MAX_NAMESPACES = 10_000
MAX_KERNEL_SUMMARIES = 10_000
MAX_BINDING_REPORTS = 10_000
KERNEL_DIFF_MAX = 100  # missing / unexpected entries in one summary (the agent truncates)
GARBAGE_MAX = 20
GARBAGE_TEXT_MAX = 1024
LAST_ERROR_MAX = 1024


def _iso_utc(value: str | None) -> str | None:
    """An ISO 8601 time with a timezone, given back in UTC with a Z (null stays null)."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is None or parsed.utcoffset() is None:
            raise ValueError("no timezone")
        return format_timestamp(parsed)
    except (ValueError, OverflowError):
        raise PydanticCustomError(
            "cthm_timestamp", "must be an ISO 8601 time in UTC (e.g. 2030-01-01T00:00:00Z)"
        ) from None


def _bounded_error(value: str | None) -> str | None:
    # An error text is the agent's to write: cut, never refused (the report matters more).
    if value is None or len(value) <= LAST_ERROR_MAX:
        return value
    return value[:LAST_ERROR_MAX] + "..."


ReportedTime = Annotated[str | None, AfterValidator(_iso_utc)]
Short = Annotated[str, Field(max_length=64)]


class KernelAssignmentReport(StrictModel):
    protocol: Short
    port: Annotated[int, Field(ge=0, le=65535)]
    direction: Short
    kernel_helper: Short | None = None


class UsageReport(StrictModel):
    """A binding's helper usage in the namespace as the node agent last read it."""

    helper: Short
    protocol: Short
    port: Annotated[int, Field(ge=0, le=65535)]
    connections: Annotated[int, Field(ge=0, le=2**53)]
    expectations: Annotated[int, Field(ge=0, le=2**53)]


class KernelSummary(StrictModel):
    """One router's kernel as a node agent last read it (shown per host in kernel_state)."""

    router_id: Short
    namespace: Annotated[str, Field(max_length=255)]
    revision_number: Revision | None = None
    in_sync: bool | None = None
    table_present: bool | None = None
    missing: list[KernelAssignmentReport] = Field(default_factory=list, max_length=KERNEL_DIFF_MAX)
    unexpected: list[KernelAssignmentReport] = Field(
        default_factory=list, max_length=KERNEL_DIFF_MAX
    )
    garbage: list[Annotated[str, Field(max_length=GARBAGE_TEXT_MAX)]] = Field(
        default_factory=list, max_length=GARBAGE_MAX
    )
    checked_at: ReportedTime = None
    verified_at: ReportedTime = None
    last_error: Annotated[str | None, AfterValidator(_bounded_error)] = None
    last_error_at: ReportedTime = None
    drift_repairs: Annotated[int, Field(ge=0, le=2**53)] = 0
    usage: list[UsageReport] | None = Field(default=None, max_length=KERNEL_DIFF_MAX)
    usage_read_at: ReportedTime = None


class AgentState(StrictModel):
    started_at: ReportedTime = None
    namespaces: list[str] = Field(
        default_factory=list,
        max_length=MAX_NAMESPACES,
        description="the router namespaces that exist on the host (/run/netns)",
    )
    configurations: dict[str, Any] = Field(
        default_factory=dict, description="free JSON object (at most 64 KiB), shown as reported"
    )
    kernel: list[KernelSummary] = Field(default_factory=list, max_length=MAX_KERNEL_SUMMARIES)


class AgentStateRequest(StrictModel):
    agent: AgentState


class HostRouterStatusReport(RouterStatusReport):
    conntrack_helpers: list[BindingStatusReport] = Field(
        default_factory=list, max_length=MAX_BINDING_REPORTS
    )
    kernel: KernelSummary | None = None


class HostRouterStatusRequest(StrictModel):
    status: HostRouterStatusReport


# --- responses ---------------------------------------------------------------------------------


class Link(BaseModel):
    rel: str
    href: str


class ConntrackHelperSummary(BaseModel):
    """A binding as the router body shows it (Neutron's expose-l3-conntrack-helper)."""

    id: str
    protocol: Protocol
    port: int
    helper: str
    direction: Direction


class RouterPublic(BaseModel):
    id: str
    name: str
    project_id: str
    tenant_id: str
    namespace: str
    status: Status
    status_reason: str
    revision_number: int
    created_at: Timestamp
    updated_at: Timestamp
    conntrack_helpers: list[ConntrackHelperSummary]
    hosts: list[str] = Field(
        description="the hosts placing the router (whose agent reports its namespace), sorted"
    )


class ConntrackHelperPublic(BaseModel):
    id: str
    protocol: Protocol
    port: int
    helper: str
    direction: Direction = Field(description=_DIRECTION_HELP)
    router_id: str
    project_id: str
    status: Status
    status_reason: str
    revision_number: int
    created_at: Timestamp
    updated_at: Timestamp


class RouterResponse(BaseModel):
    router: RouterPublic


class RouterListResponse(BaseModel):
    routers: list[RouterPublic]
    routers_links: list[Link] | None = Field(default=None, description="only when paginated")


class ConntrackHelperResponse(BaseModel):
    conntrack_helper: ConntrackHelperPublic


class ConntrackHelperListResponse(BaseModel):
    conntrack_helpers: list[ConntrackHelperPublic]
    conntrack_helpers_links: list[Link] | None = Field(
        default=None, description="only when paginated"
    )


class StatusWritten(BaseModel):
    id: str
    revision_number: int
    written: bool = Field(description="false: the object is at another revision (or gone)")


class RouterStatusWritten(StatusWritten):
    conntrack_helpers: list[StatusWritten]


class RouterStatusResponse(BaseModel):
    status: RouterStatusWritten


class CatalogEntryPublic(BaseModel):
    helper: str
    protocol: Protocol
    kernel_helper: str
    module: str
    default_port: int
    ipv6: bool
    high_risk: bool
    description: str
    kernel_available: bool | None = Field(description="null: not known to this server")


class CatalogResponse(BaseModel):
    conntrack_helper_catalog: list[CatalogEntryPublic]


class Version(BaseModel):
    id: str
    status: str
    links: list[Link]


class VersionsResponse(BaseModel):
    versions: list[Version]


class ApiResource(BaseModel):
    name: str
    collection: str
    links: list[Link]


class ResourcesResponse(BaseModel):
    resources: list[ApiResource]
    # keystoneauth's single-version discovery reads this; without it openstacksdk and the
    # `openstack` CLI refuse an endpoint override ending in /v2.0.
    version: Version


class HealthResponse(BaseModel):
    status: str


class NeutronErrorBody(BaseModel):
    type: str
    message: str
    detail: str


class ErrorResponse(BaseModel):
    NeutronError: NeutronErrorBody


# --- domain -> body ----------------------------------------------------------------------------


def router_body(
    router: Router, bindings: Iterable[HelperBinding], hosts: Iterable[str] = ()
) -> dict[str, Any]:
    return RouterPublic(
        id=router.id,
        name=router.name,
        project_id=router.project_id,
        tenant_id=router.project_id,
        namespace=router.namespace,
        status=router.status,
        status_reason=router.status_reason,
        revision_number=router.revision_number,
        created_at=router.created_at,
        updated_at=router.updated_at,
        conntrack_helpers=[
            ConntrackHelperSummary(
                id=b.id, protocol=b.protocol, port=b.port, helper=b.helper, direction=b.direction
            )
            for b in bindings
        ],
        hosts=sorted(hosts),
    ).model_dump(mode="json")


def binding_body(binding: HelperBinding) -> dict[str, Any]:
    return ConntrackHelperPublic(
        id=binding.id,
        protocol=binding.protocol,
        port=binding.port,
        helper=binding.helper,
        direction=binding.direction,
        router_id=binding.router_id,
        project_id=binding.project_id,
        status=binding.status,
        status_reason=binding.status_reason,
        revision_number=binding.revision_number,
        created_at=binding.created_at,
        updated_at=binding.updated_at,
    ).model_dump(mode="json")


def catalog_body(entry: CatalogEntry, kernel_available: bool | None) -> dict[str, Any]:
    spec = entry.spec
    return CatalogEntryPublic(
        helper=entry.helper,
        protocol=entry.protocol,
        kernel_helper=entry.kernel_helper,
        module=spec.module,
        default_port=spec.default_port,
        ipv6=spec.ipv6,
        high_risk=spec.high_risk,
        description=spec.description,
        kernel_available=kernel_available,
    ).model_dump(mode="json")


# --- what may be filtered, sorted and selected -----------------------------------------------

_COMMON_TAIL: dict[str, FieldSpec] = {
    "status": FieldSpec("status", parse_status),
    "status_reason": FieldSpec("status_reason", parse_text),
    "revision_number": FieldSpec("revision_number", parse_int),
    "created_at": FieldSpec("created_at", parse_timestamp),
    "updated_at": FieldSpec("updated_at", parse_timestamp),
}

ROUTER_SPEC = ResourceSpec(
    collection="routers",
    fields={
        "id": FieldSpec("id", parse_uuid),
        "name": FieldSpec("name", parse_name),
        "project_id": FieldSpec("project_id", parse_project_id),
        "tenant_id": FieldSpec("project_id", parse_project_id),
        "namespace": FieldSpec("namespace", parse_namespace),
        **_COMMON_TAIL,
        "conntrack_helpers": FieldSpec(),
        "hosts": FieldSpec(),
    },
)

BINDING_SPEC = ResourceSpec(
    collection="conntrack_helpers",
    fields={
        "id": FieldSpec("id", parse_uuid),
        "protocol": FieldSpec("protocol", parse_protocol_value),
        "port": FieldSpec("port", parse_port),
        "helper": FieldSpec("helper", parse_text),
        "direction": FieldSpec("direction", parse_direction_value),
        "router_id": FieldSpec("router_id", parse_uuid),
        "project_id": FieldSpec("project_id", parse_project_id),
        **_COMMON_TAIL,
    },
)
