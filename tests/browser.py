"""Browser test helpers: Debian's headless Chromium driven by Playwright, and a REST server with
the web app for it to load.

Playwright is used with the system browser only (``executable_path``); its own browser builds
are never installed. Without Chromium or Playwright the tests skip with the reason, and fail in
CI (``CI=true``), like every other missing service (conftest.require_service).

The fixtures (``browser``, ``rest``, ``context``, ``page``) are in conftest.py, over the
functions here.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import os
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
from conftest import free_port, require_service

from common.config import Settings
from rest_web.app import serve

T = TypeVar("T")
CHROMIUM = "/usr/bin/chromium"
# headless without a sandbox (root in CI) or a GPU, and no background traffic to the outside
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
]
SECRET = "webapp-test-secret-0123456789"
PASSWORD = "correct horse battery"


def artifact_dir() -> Path:
    """Where screenshots go: ``IM_TEST_ARTIFACTS`` or ``test-artifacts/`` in the work tree
    (CI keeps the workspace)."""
    default = Path(__file__).resolve().parent.parent / "test-artifacts"
    out = Path(os.environ.get("IM_TEST_ARTIFACTS") or default)
    out.mkdir(parents=True, exist_ok=True)
    return out


class RestServer:
    """``rest_web.app.serve`` (so the app, files and all) on SQLite in a thread of its own."""

    def __init__(self, data_dir: Path) -> None:
        self.port = free_port()
        self.settings = Settings(
            data_dir=data_dir,
            database_url="",
            bind_host="127.0.0.1",
            rest_port=self.port,
            secret=SECRET,
            connector_addrs="127.0.0.1:9081",
            # the browser tests log in many times from one address
            login_failures_per_address=1000,
            register_per_address=1000,  # and make many accounts
        )
        self.url = f"http://127.0.0.1:{self.port}"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="rest-for-browser", daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            await serve(self.settings, self._stop)

        try:
            asyncio.run(main())
        except BaseException as exc:  # reported by start()
            self._error = exc

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self._error is not None:
                raise RuntimeError(f"REST server failed: {self._error!r}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError("REST server did not come up")

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=15)

    def register(self, user: str, password: str = PASSWORD) -> None:
        r = httpx.post(f"{self.url}/users", json={"user_id": user, "password": password})
        assert r.status_code == 201, r.text

    def login(self, user: str, password: str = PASSWORD) -> dict[str, Any]:
        r = httpx.post(f"{self.url}/login", json={"user_id": user, "password": password})
        assert r.status_code == 200, r.text
        data: dict[str, Any] = r.json()
        return data


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to the end on a loop of its own in another thread: Playwright's sync API
    keeps an event loop running in the test's thread."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _playwright() -> Any:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        require_service("playwright", "pip install playwright (the test extra)")
    return sync_playwright


def chromium() -> Iterator[Any]:
    """One headless Chromium (the ``browser`` fixture); each test opens its own context."""
    if not os.path.exists(CHROMIUM):
        require_service("chromium", f"{CHROMIUM} missing: apt-get install -y chromium")
    with _playwright()() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def rest_server(data_dir: Path) -> Iterator[RestServer]:
    """A REST server with the app (the ``rest`` fixture), stopped afterwards."""
    server = RestServer(data_dir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def new_context(b: Any, width: int = 1200, height: int = 800) -> Any:
    ctx = b.new_context(viewport={"width": width, "height": height})
    ctx.set_default_timeout(10_000)
    return ctx


def open_app(ctx: Any, server: RestServer) -> Any:
    """A page on the app, its uncaught errors and console errors collected in ``page.errors``."""
    p = ctx.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda exc: errors.append(str(exc)))
    p.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    p.errors = errors
    p.goto(f"{server.url}/app/")
    return p


# -- values across the page boundary: JSON cannot carry BigInt or bytes, so they are tagged


def b64(data: bytes) -> dict[str, str]:
    return {"$b64": base64.b64encode(data).decode()}


def big(n: int) -> dict[str, str]:
    return {"$big": str(n)}


def untag(value: Any) -> Any:
    """A tagged value from the page back to Python (ints for BigInt, bytes for Uint8Array)."""
    if isinstance(value, dict):
        if set(value) == {"$big"}:
            return int(value["$big"])
        if set(value) == {"$b64"}:
            return base64.b64decode(value["$b64"])
        return {k: untag(v) for k, v in value.items()}
    if isinstance(value, list):
        return [untag(v) for v in value]
    return value


# JS helpers the in-page tests share: tag()/untag() mirror the Python ones above.
JS_TAGGING = """
const tag = (v) => {
  if (typeof v === "bigint") return { $big: v.toString() };
  if (v instanceof Uint8Array) {
    let s = ""; for (const b of v) s += String.fromCharCode(b);
    return { $b64: btoa(s) };
  }
  if (Array.isArray(v)) return v.map(tag);
  if (v !== null && typeof v === "object") {
    const o = {}; for (const [k, x] of Object.entries(v)) if (x !== undefined) o[k] = tag(x);
    return o;
  }
  return v;
};
const untag = (v) => {
  if (Array.isArray(v)) return v.map(untag);
  if (v !== null && typeof v === "object") {
    const keys = Object.keys(v);
    if (keys.length === 1 && keys[0] === "$big") return BigInt(v.$big);
    if (keys.length === 1 && keys[0] === "$b64") {
      const s = atob(v.$b64); const out = new Uint8Array(s.length);
      for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
      return out;
    }
    const o = {}; for (const [k, x] of Object.entries(v)) o[k] = untag(x);
    return o;
  }
  return v;
};
"""


def run_js(page: Any, body: str, arg: Any = None) -> Any:
    """Run ``body`` (an async function body with ``arg``, ``tag`` and ``untag`` in scope) in the
    page and return its (tagged) result, untagged."""
    script = f"async (arg) => {{ {JS_TAGGING}\n{body}\n}}"
    return untag(page.evaluate(script, arg))
