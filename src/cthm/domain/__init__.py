"""The pure core of cthm: value types, the helper catalog, field checks and errors.

Imports nothing else of cthm; everything above builds on it.
"""

from cthm.domain.auth import AuthToken, Role, TokenNotFound, parse_roles
from cthm.domain.catalog import (
    ALIASES,
    KERNEL_HELPERS,
    CatalogEntry,
    HelperCatalog,
    HelperSpec,
    parse_protocol,
)
from cthm.domain.errors import (
    BindingConflict,
    BindingNotFound,
    Conflict,
    CthmError,
    InvalidInput,
    NamespaceInUse,
    NotFound,
    PreconditionFailed,
    RouterNotFound,
    Unavailable,
)
from cthm.domain.models import (
    NAMESPACE_PREFIX,
    Assignment,
    HelperBinding,
    Router,
    assignments_for,
    check_binding_fields,
    default_namespace,
    new_binding,
    new_router,
    parse_direction,
    restore_binding,
)
from cthm.domain.query import DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT, ListQuery, SortDir
from cthm.domain.types import Direction, Protocol, Status
from cthm.domain.validation import (
    validate_name,
    validate_namespace,
    validate_port,
    validate_project_id,
    validate_status_reason,
    validate_uuid,
)

__all__ = [
    "ALIASES",
    "DEFAULT_PAGE_LIMIT",
    "KERNEL_HELPERS",
    "MAX_PAGE_LIMIT",
    "NAMESPACE_PREFIX",
    "Assignment",
    "AuthToken",
    "BindingConflict",
    "BindingNotFound",
    "CatalogEntry",
    "Conflict",
    "CthmError",
    "Direction",
    "HelperBinding",
    "HelperCatalog",
    "HelperSpec",
    "InvalidInput",
    "ListQuery",
    "NamespaceInUse",
    "NotFound",
    "PreconditionFailed",
    "Protocol",
    "Role",
    "Router",
    "RouterNotFound",
    "SortDir",
    "Status",
    "TokenNotFound",
    "Unavailable",
    "assignments_for",
    "check_binding_fields",
    "default_namespace",
    "new_binding",
    "new_router",
    "parse_direction",
    "parse_protocol",
    "parse_roles",
    "restore_binding",
    "validate_name",
    "validate_namespace",
    "validate_port",
    "validate_project_id",
    "validate_status_reason",
    "validate_uuid",
]
