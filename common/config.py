"""Typed settings from ``IM_``-prefixed environment variables.

Defaults mean the embedded mode: no Redis, no RabbitMQ, SQLite in ``IM_DATA_DIR``. Setting a
broker URL (``IM_REDIS_URL``, ``IM_AMQP_URL``, ``IM_DATABASE_URL``) switches that backend to the
real service; nothing else changes.
"""

from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.errors import ConfigError
from common.userids import canonical_or_none

SECONDS = 1.0
KIB = 1024
MIB = 1024 * KIB


def _addr_list(value: str) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    for part in value.split(","):
        part = part.strip()
        if not part:
            continue
        host, sep, port = part.rpartition(":")
        if not sep or not port.isdigit():
            raise ConfigError(f"address {part!r} is not host:port")
        out.append((host or "127.0.0.1", int(port)))
    return out


class Settings(BaseSettings):
    """Every tunable of every process; each service reads the fields it needs."""

    model_config = SettingsConfigDict(env_prefix="IM_", extra="ignore")

    data_dir: Path = Path("im-data")
    database_url: str = Field("", description="empty: SQLite file in data_dir")
    redis_url: str = Field("", description="empty: in-memory user status")
    amqp_url: str = Field("", description="empty: in-process timeline write queue")
    secret: str = Field("", description="token signing secret; empty: kept in data_dir/secret")

    node_id: str = Field("", description="this process's name in routing; default host:port")
    bind_host: str = "127.0.0.1"
    advertise_host: str = Field(
        "", description="host other processes reach this one at; default bind_host or hostname"
    )
    connector_port: int = 9081
    transfer_port: int = 9082
    rest_port: int = 8082
    transfer_addrs: str = Field(
        "127.0.0.1:9082", description="transfers a connector links to when there is no Redis"
    )
    connector_addrs: str = Field(
        "", description="client addresses REST login hands out; default: the live connectors"
    )
    redis_prefix: str = Field("im:", description="key prefix of every Redis key")
    node_ttl: float = Field(6.0, description="a node silent this long is out of routing")
    # the timeline write queue is named after it (timeline_queue()): the default keeps the
    # queues a deployment already has
    amqp_queue: str = Field("im.offline", description="queue name prefix (see timeline_queue)")
    amqp_shards: int = Field(4, ge=1, le=256, description="write queue shards, by conversation")
    amqp_prefetch: int = Field(64, ge=1, description="unacked queue messages per writer shard")
    db_pool: int = Field(10, ge=1, description="database connections per process")

    max_frame: int = 64 * KIB
    # Connector <-> transfer links carry what clients sent plus what the servers add on the way
    # (a longer link seq, a Fanout wrapper and its users, server stamps): under 512 bytes today
    # (connector/rules.py ENVELOPE_HEADROOM). 16 KiB above the client limit is 32 times that, room
    # for stamps yet to come without re-tuning, while a node link's window still pins at most
    # 1.25 times what a client link's may.
    node_max_frame: int = Field(0, ge=0, description="node link frame limit; 0: max_frame + 16 KiB")
    window: int = 1024
    retry_timeout: float = 5 * SECONDS
    max_retries: int = 3
    greet_timeout: float = 10 * SECONDS
    heartbeat: float = 15 * SECONDS
    idle_timeout: float = 60 * SECONDS
    # connector <-> transfer links: a hung or cut peer must leave routing within seconds, and
    # both ends are ours, so keep-alives can be frequent
    node_heartbeat: float = 1 * SECONDS
    node_idle_timeout: float = 5 * SECONDS
    rate_limit: float = Field(500.0, description="messages per second per connection")
    rate_burst: int = 1000
    session_queue: int = 4096
    token_ttl: int = 24 * 3600
    log_level: str = "INFO"

    # files (REST upload/download; README "Files")
    file_dir: str = Field("", description="where uploaded files live; empty: data_dir/files")
    max_file_size: int = Field(100 * MIB, description="largest upload, bytes")
    file_orphan_ttl: float = Field(24 * 3600 * SECONDS, description="unsent uploads kept this long")
    file_sweep_interval: float = Field(5 * 60 * SECONDS, description="orphan sweep period")

    # login (README "Login providers")
    login_provider: str = Field(
        "builtin", description="builtin, ldap, or a dotted path to a provider class"
    )
    ldap_url: str = Field("", description="ldap://host:port or ldaps://host:port")
    ldap_bind_dn: str = Field("", description="service account that searches; empty: anonymous")
    ldap_bind_password: str = ""
    ldap_search_base: str = ""
    ldap_filter: str = Field("(objectClass=inetOrgPerson)", description="ANDed with the login")
    ldap_login_attr: str = "uid"
    ldap_name_attr: str = "cn"
    ldap_email_attr: str = "mail"
    ldap_timeout: float = Field(5 * SECONDS, description="connect and answer timeout per call")
    ldap_pool: int = Field(4, description="threads for the blocking LDAP calls")

    # Security limits and switches (docs/security.md). Each has a default that is safe on the
    # open internet; the numbers are per connector or per REST process.
    max_devices: int = Field(
        8, ge=1, description="devices one user may have online at once, cluster-wide"
    )
    login_failures_per_user: int = Field(
        5,
        ge=1,
        description="failed logins per user id and address before each further one doubles a "
        "wait (2 s, 4 s, ... up to login_backoff_max)",
    )
    login_failures_per_address: int = Field(
        20,
        ge=1,
        description="user ids failing from one address per login_window; beyond, that address is "
        "refused (429) for all but the users recently logged in from it",
    )
    login_failures_per_user_total: int = Field(
        50,
        ge=1,
        description="failures per user id per login_window from all addresses; beyond, 429 for "
        "addresses the user has not recently logged in from",
    )
    login_window: float = Field(60 * SECONDS, gt=0, description="login throttle window")
    login_backoff_max: float = Field(
        15 * 60 * SECONDS, gt=0, description="longest wait between failed logins of one pair"
    )
    trusted_proxies: str = Field(
        "",
        description="comma list of addresses or CIDRs whose X-Forwarded-For is believed; "
        "empty: none (the TCP peer is the client)",
    )
    register_per_address: int = Field(
        20, ge=1, description="registrations per source address per register_window, then 429"
    )
    # a minute: a burst from one address is cut at the limit, and a newcomer's demos (20 users,
    # then more) are slowed for seconds, not locked out for minutes
    register_window: float = Field(60 * SECONDS, gt=0, description="registration window")
    rest_max_body: int = Field(64 * KIB, ge=1 * KIB, description="largest REST request body")
    # Connections that have not yet sent an accepted GREET, per connector (docs/security.md): a
    # silent one costs about 5.5 KB of server RSS (tests/test_preauth.py prints it), so the total
    # bounds what anonymous sockets can pin to ~23 MB; per address, 64 leaves a NAT of busy users
    # room to log in at once while one host alone cannot take the whole budget.
    preauth_per_address: int = Field(
        64, ge=1, description="unauthenticated connections per source address"
    )
    preauth_max: int = Field(4096, ge=1, description="unauthenticated connections in all")
    ws_port: int = Field(9083, ge=0, description="WebSocket client port (path /ws); 0: off")
    tls_cert: str = Field("", description="PEM certificate chain: TLS on the client port")
    tls_key: str = Field("", description="PEM private key of tls_cert")

    # operations (docs/operations.md)
    metrics_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="/metrics, /healthz, /readyz of a non-REST process; 0: off "
        "(`im up` and `im cluster` default to 9090 and up)",
    )
    log_format: Literal["text", "json"] = Field("text", description="json: one object a line")
    admins: str = Field(
        "",
        description="comma list of user ids that are admins, besides "
        "those granted with `im admin grant`",
    )
    delete_messages: Literal["anonymize", "delete"] = Field(
        "anonymize",
        description="what deleting an account does to the messages it sent: kept for the "
        "others as from a deleted user, or deleted",
    )
    timeline_retention_days: int = Field(
        0, ge=0, description="days a message stays in its timeline; 0: kept for good"
    )
    # a group's members plus pending invitations (docs/groups.md): REST refuses past it (409),
    # and each transfer's member cache is sized from it (transfer/members.py)
    group_max_size: int = Field(
        10_000, ge=2, le=100_000, description="members plus invitations a group may have"
    )
    webhook_url: str = Field("", description="where signed event POSTs go; empty: off")
    webhook_secret: str = Field("", description="HMAC-SHA256 key of the signature header")
    webhook_timeout: float = Field(5 * SECONDS, gt=0, description="per delivery attempt")
    webhook_retries: int = Field(6, ge=0, le=20, description="retries after the first attempt")
    webhook_queue: int = Field(10_000, ge=1, description="events waiting; beyond: oldest dropped")
    webhook_events: str = Field("", description="comma list of events to send; empty: all")
    webhook_before_send_url: str = Field(
        "", description="synchronous message.before_send hook; empty: off"
    )
    webhook_before_send_timeout: float = Field(1 * SECONDS, gt=0, le=30)
    webhook_before_send_fail: Literal["open", "closed"] = Field(
        "open", description="when the hook does not answer: open lets the message through"
    )

    def admin_ids(self) -> frozenset[str]:
        """``IM_ADMINS`` in canonical form (common/userids.py); an entry that is no user id
        is refused rather than silently matching nobody."""
        out = set()
        for entry in self.admins.split(","):
            if entry.strip():
                user = canonical_or_none(entry.strip())
                if user is None:
                    raise ConfigError(f"IM_ADMINS: {entry.strip()!r} is not a user id")
                out.add(user)
        return frozenset(out)

    def tls_enabled(self) -> bool:
        """TLS on the client port: both paths set (one alone is refused)."""
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("set both IM_TLS_CERT and IM_TLS_KEY for TLS, or neither")
        return bool(self.tls_cert)

    def node_frame_limit(self) -> int:
        return self.node_max_frame or self.max_frame + 16 * KIB

    def transfers(self) -> list[tuple[str, int]]:
        return _addr_list(self.transfer_addrs)

    def connectors(self) -> list[tuple[str, int]]:
        return _addr_list(self.connector_addrs or f"{self.bind_host}:{self.connector_port}")

    def timeline_queue(self) -> str:
        """The timeline write queue's name (and its shards'): ``<amqp_queue>.tl``, where the
        retired offline queue's sat beside it."""
        return f"{self.amqp_queue}.tl"

    def sqlite_path(self) -> Path:
        return self.data_dir / "im.db"

    def file_root(self) -> Path:
        return Path(self.file_dir) if self.file_dir else self.data_dir / "files"

    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.sqlite_path()}"

    def name(self, port: int) -> str:
        return self.node_id or f"{self.advertised_host()}:{port}"

    def advertised_host(self) -> str:
        """Where peers reach this process: ``advertise_host``, else ``bind_host`` unless that is
        a wildcard, else the host name."""
        if self.advertise_host:
            return self.advertise_host
        if self.bind_host in ("0.0.0.0", "::", ""):
            return socket.gethostname()
        return self.bind_host

    def cluster_mode(self) -> bool:
        """True when any backend is a shared service: processes then do not share a data
        directory, and a secret generated into one would split the cluster."""
        return bool(self.redis_url or self.amqp_url or self.database_url.startswith("mysql"))

    def signing_secret(self) -> bytes:
        """The token secret: from IM_SECRET, else a random one kept in ``data_dir/secret``.

        Every process of one deployment must agree on it, so the file is created once (0600) and
        reread by the others that share the data directory. In cluster mode there is no shared
        directory to trust, so a missing IM_SECRET is refused rather than invented.
        """
        if self.secret:
            if len(self.secret) < 16:
                raise ConfigError("IM_SECRET must be at least 16 characters")
            return self.secret.encode()
        if self.cluster_mode():
            raise ConfigError(
                "IM_SECRET is not set: in cluster mode (IM_REDIS_URL, IM_AMQP_URL or a mysql "
                "IM_DATABASE_URL) every process must be given the same signing secret, "
                "16+ characters, e.g. from `python3 -c 'import secrets; "
                "print(secrets.token_urlsafe(32))'`"
            )
        path = self.data_dir / "secret"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            value = path.read_text().strip()
            if len(value) < 16:
                raise ConfigError(f"{path} holds no usable secret") from None
            return value.encode()
        with os.fdopen(fd, "w") as fh:
            value = secrets.token_urlsafe(32)
            fh.write(value)
        return value.encode()
