"""Settings from defaults, an optional TOML file, `CTHM_*` environment variables and CLI flags.

Precedence, highest first: explicit values (CLI flags), environment, TOML file, defaults.
Nothing is read at import time: call `load_settings()`.
"""

from __future__ import annotations

import ipaddress
import os
import stat
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cthm.domain import (
    ALIASES,
    KERNEL_HELPERS,
    UNLIMITED,
    BindingQuota,
    HelperCatalog,
    InvalidInput,
)
from cthm.domain.quota import DEFAULT_BINDINGS_PER_PROJECT, DEFAULT_BINDINGS_PER_ROUTER


def parse_listen(value: str) -> tuple[str, int]:
    """HOST:PORT ([v6]:PORT), or PORT alone (loopback: 127.0.0.1). ValueError if neither."""
    text = value.strip()
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    host = host.removeprefix("[").removesuffix("]") or "127.0.0.1"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{value!r}: the host must be an IP address (HOST:PORT)") from None
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{value!r}: the port must be a number from 1 to 65535 (HOST:PORT)")
    return host, int(port)


def default_data_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/cthm")
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "cthm"


class ProjectQuotas(BaseModel):
    """One project's own binding quotas (`[quotas.<project>]` in TOML); unset: the defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bindings_per_project: int | None = Field(default=None, ge=UNLIMITED)
    bindings_per_router: int | None = Field(default=None, ge=UNLIMITED)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CTHM_", extra="forbid", frozen=True)

    data_dir: Path = Field(default_factory=default_data_dir)
    database_url: str | None = None
    # The URL read from this file instead (it holds a password): mode 0600 or stricter, owned
    # by the user cthm runs as. Read once, when the settings are made.
    database_url_file: Path | None = None
    _file_database_url: str | None = PrivateAttr(default=None)
    host: str = "127.0.0.1"
    port: int = Field(default=9797, ge=1, le=65535)
    # An allow-list like Neutron's allowed_conntrack_helpers: "helper" or "helper:protocol".
    allowed_helpers: list[str] | None = None
    resync_interval: float = Field(default=60.0, gt=0, le=86400)
    # 4: with kernel-worker processes, a thread waiting for one leaves the others to reconcile
    # (cold 1000 x 10 routers: ~1.4-1.6 s with 2, ~1.1-1.3 s with 4, measured).
    agent_workers: int = Field(default=4, ge=1, le=64)
    # Kernel-worker processes sharing the agent's bursts of full syncs (libnftables only;
    # netfilter/sync_processes.py): None, one per CPU up to 4 (none on one CPU); 0: none.
    agent_kernel_processes: int | None = Field(default=None, ge=0, le=16)
    nft_backend: str = Field(default="auto", pattern="^(auto|libnftables|subprocess)$")
    # How rules reach the kernel: nftables (`table inet cthm`), iptables (`raw` table chains),
    # or auto: decided once at start by looking (read-only) at what the node's routers use.
    backend: str = Field(default="nftables", pattern="^(nftables|iptables|auto)$")
    # Which iptables tools: "default" (the system's `iptables-restore`; where both flavours are
    # installed, the one holding the node's rules), "nft" (iptables-nft-*) or "legacy".
    iptables_flavour: str = Field(default="default", pattern="^(default|nft|legacy)$")
    agent_enabled: bool = True
    # Several hosts: a node agent is alive while its last report is at most this many seconds
    # old (Neutron's agent_down_time and default; agents report every 30 s by default).
    agent_down_time: float = Field(default=75.0, gt=0, le=86400)
    # How many entries of the change feed (GET /v2.0/watch) are kept; a watch resuming from an
    # older revision is answered 410 and lists again.
    watch_history: int = Field(default=10000, ge=100)
    # At agent start, delete cthm's table (or chains) from namespaces no router claims, when it
    # carries this database's deployment identity; anything else (another deployment's on a
    # shared host, or unmarked) is reported and left alone.
    sweep_orphans: bool = True
    log_level: str = Field(default="INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$")
    log_format: str = Field(default="text", pattern="^(text|json)$")  # cli/logs.py
    # TLS: both or neither. Beyond loopback the API needs TLS, or an explicit opt-out.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    allow_insecure_listen: bool = False
    # High-risk helpers (sip, h323/RAS/Q.931, irc) are admin-only unless allowed here per
    # project: {"project-id": ["sip", "irc"]}, or ["*"] for every high-risk helper.
    high_risk_projects: dict[str, list[str]] = Field(default_factory=dict)
    # Binding quotas, as Neutron's: per project and per router, -1 unlimited; `quotas` overrides
    # them per project: {"project-id": {"bindings_per_project": 50, "bindings_per_router": 10}}.
    quota_bindings_per_project: int = Field(default=DEFAULT_BINDINGS_PER_PROJECT, ge=UNLIMITED)
    quota_bindings_per_router: int = Field(default=DEFAULT_BINDINGS_PER_ROUTER, ge=UNLIMITED)
    quotas: dict[str, ProjectQuotas] = Field(default_factory=dict)
    # The front door: a client has this long to send a request's line and headers (and then its
    # body); at most this many connections are open at once (the oldest idle or incomplete one
    # makes room for a new one), so API clients can never use up the agent's file descriptors.
    header_timeout: float = Field(default=5.0, gt=0, le=300)
    max_connections: int = Field(default=1000, ge=1, le=1_000_000)
    # Proxies whose X-Forwarded-For / X-Forwarded-Proto are believed: addresses or networks,
    # comma-separated. None: no one's (the client is the TCP peer, as the throttle needs).
    forwarded_allow_ips: str | None = None
    # /readyz answers 503 once a router queued for the in-process agent has waited this long.
    ready_queue_timeout: float = Field(default=60.0, gt=0, le=86400)
    # `--metrics-listen HOST:PORT`: GET /metrics without a token on this address (a port
    # alone: loopback); None: /metrics only on the API's address, with an admin token.
    metrics_listen: str | None = None

    @field_validator("metrics_listen")
    @classmethod
    def _metrics_address(cls, value: str | None) -> str | None:
        if value is None:
            return None
        host, port = parse_listen(value)
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _proxies_are_addresses(cls, value: str | None) -> str | None:
        if value is None:
            return None
        proxies = [item.strip() for item in value.split(",") if item.strip()]
        for proxy in proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise ValueError(
                    f"forwarded_allow_ips: {proxy!r} is not an IP address or network; name the "
                    'proxies whose X-Forwarded-For may be believed ("*" is not accepted)'
                ) from None
        return ",".join(proxies) or None

    @field_validator("host")
    @classmethod
    def _host_is_an_address(cls, value: str) -> str:
        if value != "localhost":
            try:
                ipaddress.ip_address(value)
            except ValueError:
                raise ValueError(
                    f"host {value!r} is not an IP address; use a loopback address, localhost, "
                    "or an address of this machine"
                ) from None
        return value

    @model_validator(mode="after")
    def _listen_safely(self) -> Settings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together: set both or neither")
        if not self.is_loopback and not self.tls_enabled and not self.allow_insecure_listen:
            raise ValueError(
                f"host {self.host!r} is not a loopback address: beyond loopback cthm needs TLS "
                "(tls_cert_file and tls_key_file) or allow_insecure_listen = true"
            )
        return self

    @property
    def is_loopback(self) -> bool:
        return self.host == "localhost" or ipaddress.ip_address(self.host).is_loopback

    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert_file is not None and self.tls_key_file is not None

    @field_validator("high_risk_projects")
    @classmethod
    def _high_risk_names_exist(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        high_risk = {spec.name for spec in KERNEL_HELPERS if spec.high_risk}
        high_risk |= {
            alias for alias, targets in ALIASES.items() if set(targets.values()) & high_risk
        }
        for project, helpers in value.items():
            for helper in helpers:
                if helper != "*" and helper not in high_risk:
                    known = ", ".join(sorted(high_risk))
                    raise ValueError(
                        f"high_risk_projects[{project!r}]: {helper!r} is not a high-risk helper "
                        f"(one of {known}, or *)"
                    )
        return value

    @model_validator(mode="after")
    def _catalog_is_valid(self) -> Settings:
        try:
            HelperCatalog(self.allowed_helpers)
        except InvalidInput as exc:
            raise ValueError(exc.message) from None
        return self

    @model_validator(mode="after")
    def _read_database_url_file(self) -> Settings:
        if self.database_url_file is None:
            return self
        if self.database_url is not None:
            raise ValueError(
                "database_url and database_url_file both set: give the URL one way "
                "(CTHM_DATABASE_URL or CTHM_DATABASE_URL_FILE / --database-url-file)"
            )
        self._file_database_url = read_database_url_file(self.database_url_file)
        return self

    @property
    def effective_database_url(self) -> str:
        return (
            self.database_url or self._file_database_url or f"sqlite:///{self.data_dir / 'cthm.db'}"
        )

    def catalog(self) -> HelperCatalog:
        return HelperCatalog(self.allowed_helpers)

    def binding_quota(self, project_id: str) -> BindingQuota:
        """The binding quotas of `project_id`: its own where `quotas` sets them, else the
        defaults."""
        own = self.quotas.get(project_id, ProjectQuotas())
        return BindingQuota(
            per_project=self.quota_bindings_per_project
            if own.bindings_per_project is None
            else own.bindings_per_project,
            per_router=self.quota_bindings_per_router
            if own.bindings_per_router is None
            else own.bindings_per_router,
        )


def read_database_url_file(path: Path) -> str:
    """The database URL in `path`: one line, in a file only its owner, the user running cthm,
    may read or write (it holds the database password). ValueError, naming the file, if not."""
    where = f"database_url_file {path}"
    try:
        # The opened file is checked (fstat), not the path: nothing can swap it in between.
        with path.open("rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise ValueError(f"{where}: not a regular file")
            if info.st_uid != os.geteuid():
                raise ValueError(
                    f"{where}: owned by uid {info.st_uid}, not by the user cthm runs as "
                    f"(uid {os.geteuid()}); it holds a password: chown it"
                )
            if info.st_mode & 0o077:
                raise ValueError(
                    f"{where}: mode {stat.S_IMODE(info.st_mode):04o} lets others read or write "
                    f"it; it holds a password: chmod 600 {path}"
                )
            data = handle.read(64 * 1024)
    except OSError as exc:
        raise ValueError(f"cannot read {where}: {exc.strerror or exc}") from None
    try:
        url = data.decode().strip()
    except UnicodeDecodeError:
        raise ValueError(f"{where}: not UTF-8 text") from None
    if not url or "\n" in url:
        raise ValueError(f"{where}: should hold the database URL on one line")
    return url


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Settings for this process; `overrides` with value None are ignored (unset CLI flags)."""
    path = config_file or (
        Path(os.environ["CTHM_CONFIG"]) if os.environ.get("CTHM_CONFIG") else None
    )
    file_values: dict[str, Any] = {}
    if path is not None:
        with path.open("rb") as handle:
            file_values = tomllib.load(handle)
    explicit = {key: value for key, value in overrides.items() if value is not None}
    env_settings = Settings(**explicit)  # environment fills what flags did not set
    env_set = {key for key in Settings.model_fields if f"CTHM_{key.upper()}" in os.environ}
    merged = {**file_values, **{k: getattr(env_settings, k) for k in env_set}, **explicit}
    return Settings(**merged) if merged else env_settings
