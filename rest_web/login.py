"""Who may log in: one provider interface, chosen by ``IM_LOGIN_PROVIDER``.

- ``builtin`` (default): the scrypt password store of ``im_user`` (rest_web/passwords.py);
- ``ldap``: an existing directory through ``ldap3``: a service account searches for the login
  id, then the user's own DN is bound with the given password;
- ``package.module.Class`` (or ``package.module:Class``): the operator's own class, built as
  ``Class(settings)``, with ``async def authenticate(user_id, password) -> Identity | None``
  and, optionally, ``allows_registration`` (default False) and ``async def close()``.

Rules kept here, whatever the provider:
- a provider answers "these credentials are good, here is who it is" (:class:`Identity`) or
  "no" (None); "I cannot tell right now" is :class:`LoginUnavailable`, which REST turns into a
  503 while everything else keeps working;
- a user an external provider accepts gets an IM account on first login (``im_user`` row with a
  password hash that never verifies, so the built-in store cannot be used to log in as them),
  and its display name and e-mail are recorded in ``im_user_profile`` at every login;
- the IM user id is the one the provider returns (for LDAP, the directory's value of the login
  attribute) in canonical form (common/userids.py), and must have one; the provider is asked
  with the canonical form of what the user typed;
- empty passwords are refused before any provider sees them: many LDAP servers treat a bind
  with a DN and no password as an anonymous bind that "succeeds";
- ldap3 is blocking: its calls run on a pool of ``IM_LDAP_POOL`` threads, at most that many at
  once, each under ``IM_LDAP_TIMEOUT`` for connect and for every answer (ldap3 takes the answer
  timeout in whole seconds: it is rounded up).
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import inspect
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import ldap3
from ldap3.core.exceptions import LDAPException
from ldap3.utils.conv import escape_filter_chars

from common.config import Settings
from common.db import Database
from common.errors import BackendError, ConfigError
from common.userids import canonical_or_none
from rest_web.passwords import verify_password
from rest_web.store import UserStore

log = logging.getLogger(__name__)

# Stored as the password hash of accounts an external provider owns: not a valid encoded hash,
# so rest_web.passwords never verifies anything against it.
EXTERNAL_PASSWORD = "!external"


class LoginUnavailable(BackendError):
    """The login provider cannot answer now (directory unreachable, timed out, misconfigured)."""

    def __init__(self, detail: str) -> None:
        super().__init__("login", detail)


@dataclass(frozen=True, slots=True)
class Identity:
    user_id: str
    display_name: str = ""
    email: str = ""


class LoginProvider(Protocol):
    async def authenticate(self, user_id: str, password: str) -> Identity | None:
        """Who ``user_id`` is if ``password`` is right; None if not (or no such user).
        Raise :class:`LoginUnavailable` when the answer cannot be known."""
        ...


class BuiltinLogin:
    """The password store in ``im_user``, filled by ``POST /users``."""

    allows_registration = True

    def __init__(self, store: UserStore) -> None:
        self._store = store

    async def authenticate(self, user_id: str, password: str) -> Identity | None:
        encoded = await self._store.get_password_hash(user_id)
        if await verify_password(password, encoded):
            return Identity(user_id)
        return None


def _first(value: Any) -> str:
    """An attribute as one string: ldap3 gives lists for multi-valued attributes."""
    if isinstance(value, list | tuple):
        return str(value[0]) if value else ""
    return "" if value is None else str(value)


class LdapLogin:
    """Search-then-bind against an LDAP directory (``IM_LDAP_*``)."""

    allows_registration = False

    def __init__(self, settings: Settings) -> None:
        s = settings
        if not s.ldap_url or not s.ldap_search_base:
            raise ConfigError("IM_LOGIN_PROVIDER=ldap needs IM_LDAP_URL and IM_LDAP_SEARCH_BASE")
        if s.ldap_filter and not (s.ldap_filter.startswith("(") and s.ldap_filter.endswith(")")):
            raise ConfigError("IM_LDAP_FILTER must be one parenthesized LDAP filter")
        if s.ldap_pool < 1 or s.ldap_timeout <= 0:
            raise ConfigError("IM_LDAP_POOL must be >= 1 and IM_LDAP_TIMEOUT > 0")
        try:
            self._server = ldap3.Server(
                s.ldap_url, connect_timeout=s.ldap_timeout, get_info=ldap3.NONE
            )
        except LDAPException as exc:
            raise ConfigError(f"IM_LDAP_URL {s.ldap_url!r}: {exc}") from None
        self._url = s.ldap_url
        self._bind_dn = s.ldap_bind_dn or None
        self._bind_password = s.ldap_bind_password or None
        self._base = s.ldap_search_base
        self._filter = s.ldap_filter
        self._attrs = (s.ldap_login_attr, s.ldap_name_attr, s.ldap_email_attr)
        self._timeout = s.ldap_timeout
        # ldap3 sets the socket receive timeout with whole seconds only
        self._receive_timeout = max(1, math.ceil(s.ldap_timeout))
        self._pool = ThreadPoolExecutor(max_workers=s.ldap_pool, thread_name_prefix="ldap")
        # at most pool-size calls handed to the threads; the rest wait here, not in its queue
        self._slots = asyncio.Semaphore(s.ldap_pool)

    async def authenticate(self, user_id: str, password: str) -> Identity | None:
        if not password:
            return None
        async with self._slots:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._pool, self._authenticate, user_id, password)

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _connection(self, user: str | None, password: str | None) -> ldap3.Connection:
        return ldap3.Connection(
            self._server,
            user=user,
            password=password,
            receive_timeout=self._receive_timeout,
            auto_referrals=False,
            read_only=True,
            raise_exceptions=False,
        )

    def _authenticate(self, user_id: str, password: str) -> Identity | None:
        login_attr, name_attr, email_attr = self._attrs
        wanted = f"({login_attr}={escape_filter_chars(user_id)})"
        query = f"(&{self._filter}{wanted})" if self._filter else wanted
        try:
            conn = self._connection(self._bind_dn, self._bind_password)
            try:
                if not conn.bind():
                    raise LoginUnavailable(
                        f"{self._url}: service bind refused ({conn.result.get('description')})"
                    )
                conn.search(
                    self._base,
                    query,
                    search_scope=ldap3.SUBTREE,
                    attributes=list(self._attrs),
                    size_limit=2,
                    time_limit=self._receive_timeout,
                )
                entries = [r for r in conn.response or [] if r.get("type") == "searchResEntry"]
                code = conn.result.get("result", 0)
                if code not in (0, 4):  # success, or sizeLimitExceeded (two entries found)
                    raise LoginUnavailable(f"{self._url}: search failed ({conn.result})")
            finally:
                conn.unbind()
            if len(entries) != 1:
                if entries:
                    log.warning("ldap: login id %r matches several entries: refused", user_id)
                return None
            entry = entries[0]
            user = self._connection(str(entry["dn"]), password)
            try:
                if not user.bind():
                    if user.result.get("result") == 49:  # invalidCredentials
                        return None
                    raise LoginUnavailable(f"{self._url}: user bind failed ({user.result})")
            finally:
                user.unbind()
        except (LDAPException, OSError) as exc:
            raise LoginUnavailable(f"{self._url}: {type(exc).__name__}: {exc}") from None
        attrs = entry.get("attributes", {})
        return Identity(
            _first(attrs.get(login_attr)),
            _first(attrs.get(name_attr)),
            _first(attrs.get(email_attr)),
        )


def load_provider(settings: Settings, store: UserStore) -> LoginProvider:
    """The provider ``IM_LOGIN_PROVIDER`` names; :class:`ConfigError` if it cannot be built."""
    name = settings.login_provider.strip()
    if name in ("", "builtin"):
        return BuiltinLogin(store)
    if name == "ldap":
        return LdapLogin(settings)
    module_name, sep, class_name = name.partition(":")
    if not sep:
        module_name, _, class_name = name.rpartition(".")
    if not module_name or not class_name:
        raise ConfigError(
            f"IM_LOGIN_PROVIDER={name!r}: use builtin, ldap or a dotted path to a class"
        )
    try:
        cls: Any = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"IM_LOGIN_PROVIDER={name!r}: {exc}") from None
    if not isinstance(cls, type):
        raise ConfigError(f"IM_LOGIN_PROVIDER={name!r} is not a class")
    factory: Any = cls
    provider: LoginProvider = factory(settings)
    if not inspect.iscoroutinefunction(getattr(provider, "authenticate", None)):
        raise ConfigError(f"{name} has no 'async def authenticate(user_id, password)'")
    return provider


class Login:
    """The configured provider and what REST does around it: refusing empty passwords,
    mapping failures, creating the IM account of a directory user on first login."""

    def __init__(
        self,
        provider: LoginProvider,
        store: UserStore,
        db: Database | None = None,
        name: str = "builtin",
    ) -> None:
        self.provider = provider
        self.name = name
        self.external = not isinstance(provider, BuiltinLogin)
        self.allows_registration = bool(getattr(provider, "allows_registration", False))
        self._store = store
        self._db = db
        if self.external and db is None:
            raise ValueError("an external login provider needs the database for profiles")
        self._insert_ignore = (
            "INSERT OR IGNORE" if db is None or db.dialect == "sqlite" else "INSERT IGNORE"
        )

    async def login(self, user_id: str, password: str) -> str | None:
        """The IM user id these credentials log in as, None if refused; raises
        :class:`LoginUnavailable` when the provider cannot answer."""
        if not password:
            return None
        try:
            who = await self.provider.authenticate(user_id, password)
        except BackendError:  # LoginUnavailable, or the built-in store's database
            raise
        except Exception as exc:  # an operator's provider must not take the REST API down
            log.exception("login provider %s failed", self.name)
            raise LoginUnavailable(f"{self.name}: {type(exc).__name__}") from exc
        if who is None:
            return None
        canonical = canonical_or_none(who.user_id)
        if canonical is None:
            log.warning("login provider %s returned an invalid user id %r", self.name, who.user_id)
            return None
        if canonical != who.user_id:  # a directory's "Alice" is the IM user "alice"
            who = dataclasses.replace(who, user_id=canonical)
        if self.external:
            await self._provision(who)
        return who.user_id

    async def _provision(self, who: Identity) -> None:
        assert self._db is not None
        # the same rules as a registered display name: no control characters, 128 at most
        name = "".join(ch for ch in who.display_name if ch.isprintable())[:128] or who.user_id
        if await self._store.create_user(who.user_id, EXTERNAL_PASSWORD, name):
            log.info("created account %s on first %s login", who.user_id, self.name)
        now = int(time.time())
        email = who.email[:255]
        provider = self.name[:255]
        await self._db.execute(
            f"{self._insert_ignore} INTO im_user_profile (user_id, provider, email, updated)"
            " VALUES (?, ?, ?, ?)",
            (who.user_id, provider, email, now),
        )
        await self._db.execute(
            "UPDATE im_user_profile SET provider = ?, email = ?, updated = ? WHERE user_id = ?",
            (provider, email, now, who.user_id),
        )

    async def profile(self, user_id: str) -> tuple[str, str] | None:
        """``(provider, email)`` recorded for a user an external provider let in."""
        if self._db is None:
            return None
        row = await self._db.fetchone(
            "SELECT provider, email FROM im_user_profile WHERE user_id = ?", (user_id,)
        )
        return None if row is None else (str(row[0]), str(row[1]))

    async def close(self) -> None:
        closer = getattr(self.provider, "close", None)
        if closer is not None:
            await closer()


async def open_login(settings: Settings, store: UserStore, db: Database) -> Login:
    """The configured login, its tables migrated; the caller closes it."""
    provider = load_provider(settings, store)
    login = Login(provider, store, db, settings.login_provider.strip() or "builtin")
    return login
