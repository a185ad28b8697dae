"""The REST API: register, login, logout, friends with per-pair keys, blocks (DESIGN.md §3, §6).

Rules:
- every endpoint but register, login and health needs ``Authorization: Bearer <token>``; a token
  is accepted if its signature and expiry check out and it was not revoked by logout, and it only
  ever reaches its own user's data;
- login answers "unknown user" and "wrong password" with the same 401, after the same work;
  failed logins are throttled so that a guesser is slowed and nobody else locked out (429,
  rest_web/throttle.py); accounts made are limited per address; the address is the TCP peer's
  unless it is a trusted proxy (rest_web/proxies.py);
- user ids are canonical (common/userids.py) before any endpoint sees them: ``Alice`` is
  ``alice``; friendship needs both sides' yes, and blocks keep a user out
  (rest_web/friend_routes.py);
- a body nested too deeply for the JSON parser is a 400, on every endpoint;
- a token is refused once revoked: by logout (that token) or a password change (every token of
  the user issued before it); each revocation is also published, for connectors to close the
  sessions it covers within seconds;
- request bodies are capped (:data:`MAX_BODY`, 413 beyond), with or without Content-Length;
  file uploads have their own, larger limit and stream to storage (rest_web/files.py);
- login goes through the configured provider (rest_web/login.py); a provider that cannot answer
  makes login answer 503 and nothing else;
- a failing database answers 503, never a stack trace;
- ``/healthz`` is liveness and ``/readyz`` readiness (rest_web/ops_routes.py); ``/admin`` is
  for admins only, and every call to it is audited (rest_web/admin.py); user.registered and
  friend.accepted go to the webhooks (hooks/), which never make a request wait.
"""

# No ``from __future__ import annotations``: FastAPI reads the endpoint annotations at definition
# time, and the auth dependency they name is local to create_app.
import asyncio
import contextlib
import itertools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Annotated, Any

import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common import metrics
from common.config import Settings
from common.db import Database, open_database
from common.errors import AuthError, BackendError, ConfigError
from common.health import Readiness
from common.tokens import Claims, Revocation, TokenSigner
from groups.store import GroupStore, SQLGroupStore
from hooks import Webhooks, events
from rest_web import admin as admin_routes
from rest_web import files as file_routes
from rest_web import friend_routes, group_routes, ops_routes, privacy
from rest_web import timeline_routes as history_routes
from rest_web.devices import DeviceSlots, SlotsExhausted
from rest_web.files import FileService
from rest_web.friend_routes import ErrorOut, FriendOut
from rest_web.login import BuiltinLogin, Login, LoginUnavailable, open_login
from rest_web.params import UserId
from rest_web.passwords import hash_password, verify_password
from rest_web.proxies import TrustedProxies
from rest_web.static_app import mount_webapp
from rest_web.store import UserStore
from rest_web.throttle import AddressLimit, LoginThrottle, LoginThrottleMiddleware
from timeline.store import SQLTimelineStore, TimelineStore

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
# ids no one may register: a path below /friends that is not a friend
RESERVED_IDS = frozenset({"requests"})


class RegisterIn(BaseModel):
    user_id: UserId
    password: Annotated[str, Field(min_length=8, max_length=128)]
    display_name: Annotated[
        str | None, Field(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]*$")
    ] = None


class RegisterOut(BaseModel):
    user_id: str


class LoginIn(BaseModel):
    user_id: UserId
    password: Annotated[str, Field(min_length=1, max_length=128)]
    device_id: Annotated[
        str,
        Field(
            max_length=64,
            pattern=r"^[A-Za-z0-9_.:-]*$",
            description="names this device in routing; several devices may be online at once",
        ),
    ] = ""


class LoginOut(BaseModel):
    user_id: str
    token: str = Field(description="send as 'Authorization: Bearer <token>' and in GREET")
    expires_at: int = Field(description="token expiry, unix seconds")
    connector: str = Field(description="host:port of the connector to open TCP to")
    connectors: list[str] = Field(description="every connector, to fall back on")
    tls: bool = Field(False, description="the connectors speak TLS: connect with it, verifying")
    friends: list[FriendOut]
    slot: int = Field(0, description="this device's message id slot, 0..63 (docs/protocol.md)")


class PasswordIn(BaseModel):
    old_password: Annotated[str, Field(min_length=1, max_length=128)]
    new_password: Annotated[str, Field(min_length=8, max_length=128)]


class PasswordOut(BaseModel):
    token: str = Field(description="a fresh token for this device; every older one is revoked")
    expires_at: int = Field(description="token expiry, unix seconds")
    slot: int = Field(0, description="this device's message id slot, as at login")


_UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "missing, bad, expired or revoked token"}
}


class BodyLimit:
    """ASGI middleware: 413 for a request body over ``max_body`` bytes, declared or streamed.
    Paths in ``exempt`` (file uploads) stream on and enforce their own limit."""

    def __init__(
        self, app: ASGIApp, max_body: int = MAX_BODY, exempt: frozenset[str] = frozenset()
    ) -> None:
        self.app = app
        self.max_body = max_body
        self.exempt = exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit():
                await _error(scope, send, 400, "bad Content-Length")
            elif int(length) > self.max_body:
                await _error(scope, send, 413, f"request body over {self.max_body} bytes")
            else:  # the server delivers no more than the declared length
                await self.app(scope, receive, send)
            return
        if b"transfer-encoding" not in headers:
            await self.app(scope, receive, send)
            return
        # streamed body: read it here, within the limit, then hand it on in one piece
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # client went away
            body += message.get("body", b"")
            if len(body) > self.max_body:
                await _error(scope, send, 413, f"request body over {self.max_body} bytes")
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)


async def _error(scope: Scope, send: Send, code: int, detail: str) -> None:
    response = JSONResponse({"detail": detail}, status_code=code, headers={"Connection": "close"})
    await response(scope, _no_receive, send)


async def _no_receive() -> Message:  # pragma: no cover - JSONResponse never reads
    return {"type": "http.disconnect"}


ConnectorSource = Callable[[], Awaitable[list[str]]]
# Tells connectors about a revocation (user_status.revocation.RevocationBus.publish).
RevocationPublisher = Callable[[Revocation], Awaitable[None]]

# what the BodyLimit middleware may answer to any request, before an endpoint sees it
_ANY_REQUEST: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "malformed request (e.g. a bad Content-Length)"},
    413: {"model": ErrorOut, "description": "request body over the limit (IM_REST_MAX_BODY)"},
}

_TOO_MANY: dict[int | str, dict[str, Any]] = {
    429: {"model": ErrorOut, "description": "too many failed attempts; see Retry-After"}
}


def static_connectors(settings: Settings) -> ConnectorSource:
    """The configured client addresses (``IM_CONNECTOR_ADDRS``, e.g. a load balancer's)."""
    fixed = [f"{host}:{port}" for host, port in settings.connectors()]
    if not fixed:
        raise ConfigError("no connector addresses to hand out at login")

    async def source() -> list[str]:
        return fixed

    return source


def create_app(
    settings: Settings,
    store: UserStore,
    signer: TokenSigner,
    connector_source: ConnectorSource | None = None,
    *,
    files: FileService | None = None,
    logins: Login | None = None,
    revocations: RevocationPublisher | None = None,
    throttle: LoginThrottle | None = None,
    readiness: Readiness | None = None,
    hooks: Webhooks | None = None,
    admin: admin_routes.AdminDeps | None = None,
    devices: DeviceSlots | None = None,
    timeline: TimelineStore | None = None,
    groups: GroupStore | None = None,
) -> FastAPI:
    """The API over ``store``; tokens issued and checked with ``signer``; login hands out the
    addresses ``connector_source`` gives (default: the configured ones), spread round-robin.
    ``files`` adds the file endpoints; ``logins`` is the login provider (default: the built-in
    password store); ``revocations`` is told about every logout and password change (default:
    nobody, for a REST process without connectors to tell); ``throttle`` counts failed logins
    (default: one from the settings); ``readiness`` answers /readyz (default: a database
    ping); ``hooks`` gets user.registered and friend.accepted; ``admin`` adds /admin (and
    refuses logins of disabled accounts); ``devices`` hands out message id slots (default: a
    table beside ``store``'s, created at first use); ``timeline`` serves /conversations (503
    without); ``groups`` serves /groups (503 without; docs/groups.md)."""
    app = FastAPI(
        title="IM cluster REST API",
        summary="Register, log in for a connector token, manage friends and their pair keys.",
        version="0.1.0",
        responses=_ANY_REQUEST,
    )
    throttle = throttle or LoginThrottle(
        settings.login_failures_per_user,
        settings.login_failures_per_address,
        settings.login_window,
        per_user_total=settings.login_failures_per_user_total,
        max_backoff=settings.login_backoff_max,
    )
    proxies = TrustedProxies.parse(settings.trusted_proxies)
    registrations = AddressLimit(settings.register_per_address, settings.register_window)
    app.state.throttle = throttle
    app.state.registrations = registrations
    # added first, so it runs inside BodyLimit: it reads bodies already capped
    app.add_middleware(LoginThrottleMiddleware, throttle=throttle, proxies=proxies)
    app.add_middleware(BodyLimit, max_body=settings.rest_max_body, exempt=frozenset({"/files"}))
    if logins is None:
        logins = Login(BuiltinLogin(store), store)
    slots = devices or DeviceSlots(store.database, auto_migrate=True)

    connectors_of = connector_source or static_connectors(settings)
    login_count = itertools.count()
    bearer = HTTPBearer(auto_error=False, description="token from POST /login")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        """Starlette's 405 names only the methods of the first route on the path; HTTP wants
        every method the resource has in ``Allow``."""
        if exc.status_code == status.HTTP_405_METHOD_NOT_ALLOWED:
            path = request.url.path
            routes = [
                route
                for route in app.router.routes
                if isinstance(route, APIRoute) and route.path_regex.match(path)
            ]
            # a literal path (/friends/requests) is its own resource, not an instance of the
            # template that also matches it (/friends/{friend_id})
            if any(route.path == path for route in routes):
                routes = [r for r in routes if r.path == path and r.include_in_schema]
            allowed = sorted({method for route in routes for method in route.methods or ()})
            exc = StarletteHTTPException(exc.status_code, exc.detail, {"Allow": ", ".join(allowed)})
        return await http_exception_handler(request, exc)

    @app.exception_handler(RecursionError)
    async def too_deep(request: Request, exc: RecursionError) -> JSONResponse:
        """A body nested past what the parsers recurse through is malformed input, whichever
        step met it first: 400, not a 500 with a traceback per request."""
        return JSONResponse({"detail": "request body nested too deeply"}, status_code=400)

    @app.exception_handler(BackendError)
    async def backend_down(request: Request, exc: BackendError) -> JSONResponse:
        log.error("%s %s: %s", request.method, request.url.path, exc)
        return JSONResponse({"detail": "storage unavailable"}, status_code=503)

    async def caller(
        cred: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> Claims:
        if cred is None:
            raise _unauthorized("missing bearer token")
        try:
            claims = signer.verify(cred.credentials)
        except AuthError as exc:
            raise _unauthorized(str(exc)) from None
        if await store.is_revoked(claims.token_id):
            raise _unauthorized("token revoked")
        if claims.issued_ms < await store.cutoff_of(claims.user_id):
            raise _unauthorized("token revoked")
        return claims

    async def publish(rev: Revocation) -> None:
        """Stored already, so a failed publish is not fatal: connectors that missed it recheck
        their sessions against the database when they resubscribe, and check every GREET."""
        if revocations is None:
            return
        try:
            await revocations(rev)
        except BackendError as exc:
            log.warning("revocation stored but not published: %s", exc)

    Caller = Annotated[Claims, Depends(caller)]

    if readiness is None:
        readiness = Readiness()
        readiness.add("database", lambda: store.ping())
    ops_routes.add_routes(app, readiness)
    emit = hooks.emit if hooks is not None else _no_hooks

    @app.post(
        "/users",
        status_code=status.HTTP_201_CREATED,
        tags=["users"],
        responses={
            409: {"model": ErrorOut, "description": "user id taken (in any spelling)"},
            429: {"model": ErrorOut, "description": "too many registrations from this address"},
        },
    )
    async def register(body: RegisterIn, request: Request) -> RegisterOut:
        """Create an account. The id is stored in canonical form (lower case): ``Alice`` and
        ``alice`` are one id, and the answer says which."""
        if not logins.allows_registration:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN, f"accounts come from the {logins.name} login provider"
            )
        # a taken id costs no password hash; 409 says the id exists, as it must
        if body.user_id in RESERVED_IDS or await store.user_exists(body.user_id):
            raise HTTPException(status.HTTP_409_CONFLICT, "user already exists")
        address = proxies.client_of(request.scope)
        wait = registrations.take(address)  # only accounts made count: reruns are free
        if wait > 0:
            raise _too_many(wait, "registrations from this address")
        made = False
        try:
            encoded = await hash_password(body.password)
            name = body.display_name or body.user_id
            made = await store.create_user(body.user_id, encoded, name)
        finally:
            if not made:
                registrations.give_back(address)
        if not made:
            raise HTTPException(status.HTTP_409_CONFLICT, "user already exists")
        emit(events.USER_REGISTERED, events.user_registered(body.user_id, name, logins.name))
        return RegisterOut(user_id=body.user_id)

    @app.post(
        "/login",
        tags=["users"],
        responses={
            401: {"model": ErrorOut, "description": "unknown user or wrong password"},
            409: {"model": ErrorOut, "description": "64 devices logged in within a token lifetime"},
            **_TOO_MANY,
            503: {"model": ErrorOut, "description": "login provider, storage or connectors down"},
        },
    )
    async def login(body: LoginIn) -> LoginOut:
        try:
            user_id = await logins.login(body.user_id, body.password)
        except LoginUnavailable as exc:
            log.error("login of %s: %s", body.user_id, exc)
            metrics.login("unavailable")
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE, "login service unavailable, try again later"
            ) from None
        if user_id is None:
            metrics.login("failed")
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid user id or password")
        connectors = sorted(await connectors_of())
        if not connectors:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "no connector is up")
        try:
            slot = await slots.slot_for(user_id, body.device_id, settings.token_ttl)
        except SlotsExhausted as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
        token = signer.issue(user_id, settings.token_ttl, device_id=body.device_id, slot=slot)
        # checked after issuing: a disable that lands meanwhile has set its cutoff after this
        # token was made, so the token is refused either way (rest_web/admin.py)
        if admin is not None and await admin.store.is_disabled(user_id):
            metrics.login("disabled")
            raise HTTPException(status.HTTP_403_FORBIDDEN, "account disabled")
        claims = signer.verify(token)
        friends = await store.relations_of(user_id)
        metrics.login("ok")
        return LoginOut(
            user_id=user_id,
            token=token,
            expires_at=claims.expires,
            connector=connectors[next(login_count) % len(connectors)],
            connectors=connectors,
            friends=[FriendOut(user_id=f, key=k) for f, k in friends],
            tls=bool(settings.tls_cert),
            slot=slot,
        )

    @app.post(
        "/logout",
        status_code=status.HTTP_204_NO_CONTENT,
        tags=["users"],
        responses=_UNAUTHORIZED,
    )
    async def logout(me: Caller) -> None:
        await store.revoke(me.token_id, me.expires)
        await publish(Revocation(expires=me.expires, token_id=me.token_id, user_id=me.user_id))

    @app.put(
        "/password",
        tags=["users"],
        responses={
            **_UNAUTHORIZED,
            403: {"model": ErrorOut, "description": "old password is wrong"},
            409: {"model": ErrorOut, "description": "64 devices logged in within a token lifetime"},
            **_TOO_MANY,
        },
    )
    async def change_password(me: Caller, body: PasswordIn, request: Request) -> PasswordOut:
        """Change the caller's password. Every token of the caller issued before now is
        revoked, on every device (their connections close within seconds); the answer carries
        a fresh token for this device."""
        address = proxies.client_of(request.scope)
        wait = throttle.retry_after(me.user_id, address)
        if wait > 0:
            throttle.refused += 1
            raise _too_many(wait, "failed attempts")
        encoded = await store.get_password_hash(me.user_id)
        if not await verify_password(body.old_password, encoded):
            throttle.failed(me.user_id, address)
            raise HTTPException(status.HTTP_403_FORBIDDEN, "old password is wrong")
        throttle.succeeded(me.user_id, address)
        if not await store.set_password_hash(me.user_id, await hash_password(body.new_password)):
            raise _unauthorized("no such user")
        cutoff = int(time.time() * 1000)
        # the newest token the cutoff covers dies token_ttl after it: the row may go then
        until = cutoff // 1000 + settings.token_ttl + 1
        await store.set_cutoff(me.user_id, cutoff, until)
        await publish(Revocation(expires=until, user_id=me.user_id, before_ms=cutoff))
        # the device's slot from the table, so a token from before slots gets one too
        try:
            slot = await slots.slot_for(me.user_id, me.device_id, settings.token_ttl)
        except SlotsExhausted as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
        token = signer.issue(me.user_id, settings.token_ttl, device_id=me.device_id, slot=slot)
        return PasswordOut(token=token, expires_at=signer.verify(token).expires, slot=slot)

    # /me/privacy, and new friends told each other's presence (rest_web/privacy.py)
    friend_routes.add_routes(app, caller, store, privacy.add_routes(app, caller, store, emit))

    history_routes.add_routes(app, caller, timeline)
    group_routes.add_routes(app, caller, groups, timeline, emit)
    if files is not None:
        file_routes.add_routes(app, caller, files, timeline)
    if admin is not None:
        admin_routes.add_routes(app, caller, store, publish, admin, groups)
    mount_webapp(app)
    return app


def _no_hooks(event: str, data: events.Data) -> None:
    pass


def _too_many(wait: float, what: str = "attempts") -> HTTPException:
    seconds = str(max(1, math.ceil(wait)))
    return HTTPException(
        status.HTTP_429_TOO_MANY_REQUESTS,
        f"too many {what}, retry in {seconds} s",
        headers={"Retry-After": seconds},
    )


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": "Bearer"}
    )


async def build(settings: Settings) -> tuple[FastAPI, Database, FileService, Login]:
    """The app on the configured database (an embedded one migrated, a shared one checked);
    the caller runs the file janitor if it wants one, and closes the login and the database."""
    db = await open_database(settings.db_url(), pool_size=settings.db_pool)
    try:
        store = UserStore(db)
        files = FileService.from_settings(settings, db)
        devices = DeviceSlots(db)
        timeline = SQLTimelineStore(db)
        groups = SQLGroupStore(db, timeline, settings.group_max_size)
        if db.dialect == "sqlite":
            await store.migrate()
            await files.migrate()
            await devices.migrate()
            await timeline.migrate()
            await groups.migrate()
        else:
            await store.check_schema()
            await files.check_schema()
            await devices.check_schema()
            await timeline.check_schema()
            await groups.check_schema()
        login = await open_login(settings, store, db)
        signer = TokenSigner(settings.signing_secret())
        app = create_app(
            settings,
            store,
            signer,
            files=files,
            logins=login,
            devices=devices,
            timeline=timeline,
            groups=groups,
        )
    except BaseException:
        await db.close()
        raise
    return app, db, files, login


class _GuestServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the process hosting it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Run the API on ``bind_host:rest_port`` in the running loop until ``stop`` is set.

    With ``stop``, the caller owns SIGINT/SIGTERM (as ``im up`` does); without it, uvicorn
    handles them and this returns after the first one. A port that cannot be bound raises
    :class:`ConfigError` instead of uvicorn's ``SystemExit``.
    """
    app, db, files, login = await build(settings)
    janitor = asyncio.create_task(files.janitor(), name="file-janitor")
    config = uvicorn.Config(
        app,
        host=settings.bind_host,
        port=settings.rest_port,
        log_level="warning",
        log_config=None,  # keep the process's logging set-up (common.log)
        lifespan="off",
        timeout_graceful_shutdown=5,
        server_header=False,
        # uvicorn would believe X-Forwarded-For from loopback; rest_web/proxies.py decides
        proxy_headers=False,
        # longer than clients' pauses between calls under load, so a kept-alive connection is
        # rarely closed just as a client reuses it
        timeout_keep_alive=30,
    )
    server = uvicorn.Server(config) if stop is None else _GuestServer(config)
    watcher: asyncio.Task[None] | None = None
    if stop is not None:
        watcher = asyncio.create_task(_exit_when(stop, server), name="rest-stop")
    try:
        await server.serve()
    except asyncio.CancelledError:
        for listener in getattr(server, "servers", []):
            listener.close()  # cancelled rather than stopped: at least free the port
        raise
    except SystemExit:
        raise ConfigError(
            f"REST API cannot listen on {settings.bind_host}:{settings.rest_port}"
        ) from None
    finally:
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        janitor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await janitor
        await login.close()
        await db.close()


async def _exit_when(stop: asyncio.Event, server: uvicorn.Server) -> None:
    await stop.wait()
    server.should_exit = True
