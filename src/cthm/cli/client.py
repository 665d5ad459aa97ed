"""A small typed HTTP client for the cthm REST API (Neutron-shaped bodies).

Errors, grouped by what the caller can do about them:

CthmClientError
├── ClientError        the server (or the client, deciding for it) refused the request:
│   │                  fix the input; carries status, Neutron type and message
│   └── AuthenticationFailed  401: no token, or one the server does not accept
└── ServerUnreachable  no answer at all (refused, unknown host, timeout): check the URL or server
"""

from __future__ import annotations

import json
import re
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

JSONObject = dict[str, Any]

DEFAULT_URL = "http://127.0.0.1:9797"
TOKEN_HEADER = "X-Auth-Token"  # noqa: S105 (a header name)
DEFAULT_TIMEOUT = 10.0
# Lists are read page by page so that a server-side page limit never truncates them silently.
PAGE_SIZE = 1000
MAX_PAGES = 10_000


class CthmClientError(Exception):
    """Base of the errors this client raises; `message` is one line for a person."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ClientError(CthmClientError):
    """The request was refused. `status` is None when the client decided without a request
    answering with an error (e.g. a router name that matches several routers)."""

    def __init__(self, status: int | None, type_: str, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.detail = detail


class AuthenticationFailed(ClientError):
    """The server did not accept the token (or none was sent). It never says why."""

    def __init__(self, type_: str) -> None:
        super().__init__(401, type_, "authentication failed")


class ServerUnreachable(CthmClientError):
    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach cthm at {url}: {reason}")
        self.url = url
        self.reason = reason


class CthmClient:
    """One connection pool to one cthm server. Use as a context manager, or call close().

    token: sent as X-Auth-Token on every request (None: no token; only the health check and
    the version documents answer then)."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        timeout: float = DEFAULT_TIMEOUT,
        *,
        token: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        headers = {"Accept": "application/json", "User-Agent": "cthm-cli"}
        if token is not None:
            headers[TOKEN_HEADER] = token
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=timeout,
            headers=headers,
            # A proxy from the environment must not sit between the CLI and a loopback API.
            trust_env=False,
        )

    def __enter__(self) -> CthmClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # service

    def health(self) -> JSONObject:
        return self._json(self._request("GET", "/healthz"))

    def catalog(self) -> JSONObject:
        """The whole catalog body, as the server returns it."""
        return self._json(self._request("GET", "/v2.0/conntrack_helper_catalog"))

    # routers

    def list_routers(
        self, *, project_id: str | None = None, name: str | None = None
    ) -> list[JSONObject]:
        params = {k: v for k, v in (("project_id", project_id), ("name", name)) if v is not None}
        return self._list_all("/v2.0/routers", "routers", params)

    def kernel_states(self, *, status: str | None = None) -> list[JSONObject]:
        """Every visible router's kernel_state with its name and status (one request a page;
        the server reads no conntrack for it)."""
        params = {"status": status} if status is not None else {}
        return self._list_all("/v2.0/routers/kernel_states", "kernel_states", params, "router_id")

    def get_router(self, router_id: str) -> JSONObject:
        return self._member(self._request("GET", _path("routers", router_id)), "router")

    def create_router(
        self,
        *,
        name: str,
        project_id: str,
        namespace: str | None = None,
        router_id: str | None = None,
    ) -> JSONObject:
        """router_id: register the router under this id (admin only; e.g. Neutron's own)."""
        router: JSONObject = {"name": name, "project_id": project_id}
        if namespace is not None:
            router["namespace"] = namespace
        if router_id is not None:
            router["id"] = router_id
        response = self._request("POST", "/v2.0/routers", body={"router": router})
        return self._member(response, "router")

    def update_router(self, router_id: str, *, name: str) -> JSONObject:
        body = {"router": {"name": name}}
        return self._member(self._request("PUT", _path("routers", router_id), body=body), "router")

    def delete_router(self, router_id: str) -> None:
        self._request("DELETE", _path("routers", router_id))

    def kernel_state(self, router_id: str) -> JSONObject:
        """The router's desired state beside what the server's agent last read from the kernel."""
        path = _path("routers", router_id, "kernel_state")
        return self._member(self._request("GET", path), "kernel_state")

    def resync_router(self, router_id: str) -> JSONObject:
        """Asks for a full reconcile of the router now (202: accepted, not done yet)."""
        path = _path("routers", router_id, "resync")
        # An empty JSON object: every POST says its body is JSON (the API requires it).
        return self._member(self._request("POST", path, body={}), "resync")

    # conntrack helpers (bindings)

    def list_helpers(self, router_id: str) -> list[JSONObject]:
        path = _path("routers", router_id, "conntrack_helpers")
        return self._list_all(path, "conntrack_helpers", {})

    def get_helper(self, router_id: str, helper_id: str) -> JSONObject:
        path = _path("routers", router_id, "conntrack_helpers", helper_id)
        return self._member(self._request("GET", path), "conntrack_helper")

    def create_helper(
        self,
        router_id: str,
        *,
        protocol: str,
        port: int,
        helper: str,
        direction: str | None = None,
    ) -> JSONObject:
        """direction None: not sent, the server's default (ingress)."""
        path = _path("routers", router_id, "conntrack_helpers")
        fields: JSONObject = {"protocol": protocol, "port": port, "helper": helper}
        if direction is not None:
            fields["direction"] = direction
        body = {"conntrack_helper": fields}
        return self._member(self._request("POST", path, body=body), "conntrack_helper")

    def update_helper(
        self,
        router_id: str,
        helper_id: str,
        *,
        protocol: str | None = None,
        port: int | None = None,
        helper: str | None = None,
        direction: str | None = None,
    ) -> JSONObject:
        given = (
            ("protocol", protocol),
            ("port", port),
            ("helper", helper),
            ("direction", direction),
        )
        changes = {key: value for key, value in given if value is not None}
        path = _path("routers", router_id, "conntrack_helpers", helper_id)
        response = self._request("PUT", path, body={"conntrack_helper": changes})
        return self._member(response, "conntrack_helper")

    def delete_helper(self, router_id: str, helper_id: str) -> None:
        self._request("DELETE", _path("routers", router_id, "conntrack_helpers", helper_id))

    # audit trail

    def list_audit_events(
        self,
        *,
        filters: dict[str, str] | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: int | None = None,
    ) -> list[JSONObject]:
        """Audit events, oldest first. filters: field -> value (action, outcome, target_type,
        target_id, project_id, token_id, request_id). limit: only the `limit` most recent."""
        params: dict[str, Any] = {k: v for k, v in (filters or {}).items() if v is not None}
        params.update({k: v for k, v in (("since", since), ("until", until)) if v is not None})
        if limit is None:
            return self._list_all("/v2.0/audit_events", "audit_events", params)
        params.update(sort_key="time", sort_dir="desc", limit=limit)
        response = self._request("GET", "/v2.0/audit_events", params=params)
        events = self._json(response).get("audit_events")
        if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
            raise _invalid(response, "no list 'audit_events' in the body")
        return events[::-1]

    # API tokens (admin only)

    def create_token(
        self,
        *,
        project_id: str,
        roles: list[str],
        expires_at: str | None = None,
        description: str | None = None,
        host: str | None = None,
    ) -> JSONObject:
        """The new token's record; its secret is `token` in it, returned this once only.
        host: an agent token limited to acting for that host (None: not sent, unlimited)."""
        token: JSONObject = {"project_id": project_id, "roles": roles}
        if expires_at is not None:
            token["expires_at"] = expires_at
        if description is not None:
            token["description"] = description
        if host is not None:
            token["host"] = host
        response = self._request("POST", "/v2.0/auth_tokens", body={"auth_token": token})
        return self._member(response, "auth_token")

    def list_tokens(self, *, project_id: str | None = None) -> list[JSONObject]:
        params = {} if project_id is None else {"project_id": project_id}
        return self._list_all("/v2.0/auth_tokens", "auth_tokens", params)

    def get_token(self, token_id: str) -> JSONObject:
        return self._member(self._request("GET", _path("auth_tokens", token_id)), "auth_token")

    def revoke_token(self, token_id: str, *, force: bool = False) -> None:
        """force: revoke even the last active admin token (otherwise a 409)."""
        params = {"force": "true"} if force else None
        self._request("DELETE", _path("auth_tokens", token_id), params=params)

    # agents (admin only)

    def list_agents(
        self, *, host: str | None = None, agent_type: str | None = None
    ) -> list[JSONObject]:
        """The agents serving this API (Neutron's agents): the server's own, if it runs one, and
        every node agent that has registered."""
        given = (("host", host), ("agent_type", agent_type))
        return self._list_all("/v2.0/agents", "agents", {k: v for k, v in given if v is not None})

    def get_agent(self, agent_id: str) -> JSONObject:
        return self._member(self._request("GET", _path("agents", agent_id)), "agent")

    def delete_agent(self, agent_id: str, *, force: bool = False) -> None:
        """Forgets a node agent and its per-host rows. force: even one still alive (else 409)."""
        params = {"force": "true"} if force else None
        self._request("DELETE", _path("agents", agent_id), params=params)

    # plumbing

    def _list_all(
        self, path: str, key: str, params: dict[str, Any], id_key: str = "id"
    ) -> list[JSONObject]:
        items: list[JSONObject] = []
        marker: str | None = None
        for _ in range(MAX_PAGES):
            page_params = {**params, "limit": PAGE_SIZE}
            if marker is not None:
                page_params["marker"] = marker
            response = self._request("GET", path, params=page_params)
            page = self._json(response).get(key)
            if not isinstance(page, list) or not all(isinstance(i, dict) for i in page):
                raise _invalid(response, f"no list {key!r} in the body")
            items.extend(page)
            if len(page) < PAGE_SIZE:
                return items
            marker = str(page[-1].get(id_key))
        raise _invalid(response, f"more than {MAX_PAGES} pages of {key}")

    def _request(
        self,
        method: str,
        path: str,
        *,
        body: JSONObject | None = None,
        params: dict[str, Any] | None = None,
    ) -> httpx.Response:
        try:
            response = self._http.request(method, path, json=body, params=params)
        except httpx.TimeoutException:
            raise ServerUnreachable(self.base_url, f"no answer within {self.timeout:g}s") from None
        except httpx.TransportError as exc:
            raise ServerUnreachable(self.base_url, _transport_reason(exc)) from None
        if response.is_error:
            raise _api_error(response)
        return response

    def _json(self, response: httpx.Response) -> JSONObject:
        try:
            body = response.json()
        except ValueError:
            raise _invalid(response, "the body is not JSON") from None
        if not isinstance(body, dict):
            raise _invalid(response, "the body is not a JSON object")
        return body

    def _member(self, response: httpx.Response, key: str) -> JSONObject:
        value = self._json(response).get(key)
        if not isinstance(value, dict):
            raise _invalid(response, f"no object {key!r} in the body")
        return value


def _path(*segments: str) -> str:
    # Every user-given segment is quoted whole: "/" cannot add a level and "." or ".." cannot be
    # taken as a dot segment (which URL normalisation would resolve to another resource).
    quoted = (quote(s, safe="").replace(".", "%2E") for s in segments)
    return "/v2.0/" + "/".join(quoted)


def _api_error(response: httpx.Response) -> ClientError:
    status = response.status_code
    if status == 401:
        return AuthenticationFailed(_neutron_type(response) or "HTTPUnauthorized")
    fallback = f"HTTP {status} {response.reason_phrase}".strip()
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("NeutronError"), dict):
        error = body["NeutronError"]
        return ClientError(
            status,
            str(error.get("type") or "HTTPError"),
            one_line(str(error.get("message") or "")) or fallback,
            str(error.get("detail") or ""),
        )
    if isinstance(body, dict) and "detail" in body:  # a framework error that was not mapped
        detail = body["detail"]
        text = detail if isinstance(detail, str) else json.dumps(detail)
        return ClientError(status, "HTTPError", one_line(f"{fallback}: {text}"))
    return ClientError(status, "HTTPError", fallback)


def _neutron_type(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    error = body.get("NeutronError") if isinstance(body, dict) else None
    kind = error.get("type") if isinstance(error, dict) else None
    return kind if isinstance(kind, str) else None


def _invalid(response: httpx.Response, what: str) -> ClientError:
    return ClientError(
        response.status_code,
        "InvalidResponse",
        f"unexpected answer from {response.request.url} (HTTP {response.status_code}): {what}; "
        "is this a cthm server?",
    )


_ERRNO_PREFIX = re.compile(r"^\[Errno -?\d+\]\s*")


def _transport_reason(exc: httpx.TransportError) -> str:
    text = _ERRNO_PREFIX.sub("", one_line(str(exc)))
    return text or exc.__class__.__name__


def one_line(text: str, limit: int = 2000) -> str:
    """Text for a single terminal line: control characters become spaces, length is capped."""
    cleaned = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return cleaned if len(cleaned) <= limit else cleaned[:limit] + "..."
