"""Issue 16's "done when", in real browsers on a real stack: ``im up``'s stack (REST with the web
app, connector with its WebSocket port, transfer, writer; SQLite) in a thread of its own on
ports of this test's, and two headless Chromium contexts, two users: they sign up, befriend,
see each other online, see each other typing, chat both ways with receipts going to read, and
a reload shows the history; then a browser user and the Python library (client.IMClient) chat
both ways and send each other a file (the page's attach input and download button). A
screenshot of the chat view is saved (test-artifacts/, printed)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
from browser import PASSWORD, artifact_dir, new_context, open_app
from test_e2e import stack_settings
from test_webapp_ui import real_errors, sign_up

from cli.stack import Stack
from client import IMClient, Message

pytestmark = pytest.mark.slow  # a browser: OS processes of its own

T = TypeVar("T")
PORTS = range(47000, 48000)  # this worktree's ports


def free_ports(n: int) -> list[int]:
    """``n`` ports of :data:`PORTS` that nothing listens on now."""
    out: list[int] = []
    for port in PORTS:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        out.append(port)
        if len(out) == n:
            return out
    raise RuntimeError("no free ports in range")


@dataclass
class StackThread:
    """An ``im up`` stack run on an event loop in a thread (Playwright's sync API holds the
    test's thread); :meth:`call` runs a coroutine there and waits for it."""

    data_dir: Path

    def __post_init__(self) -> None:
        rest, conn, transfer, ws = free_ports(4)
        self.settings = stack_settings(
            self.data_dir,
            rest_port=rest,
            connector_port=conn,
            transfer_port=transfer,
            ws_port=ws,
            metrics_port=0,
            register_per_address=1000,
            login_failures_per_address=1000,
        )
        self.url = f"http://127.0.0.1:{rest}"
        self.ws_url = f"ws://127.0.0.1:{ws}/ws"
        self.loop = asyncio.new_event_loop()
        self.stack = Stack(self.settings)
        self._thread = threading.Thread(target=self.loop.run_forever, name="stack", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self.call(self.stack.start(), 60)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        try:
            self.call(self.stack.stop(), 60)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(15)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackThread]:
    st = StackThread(tmp_path_factory.mktemp("signals-stack"))
    st.start()
    try:
        yield st
    finally:
        st.stop()


def user_page(browser: Any, live: StackThread) -> Any:
    ctx = new_context(browser)
    # the page finds the connector's WebSocket here (js/net/upcoming.js), not on 9083
    ctx.add_init_script(f"localStorage.setItem('im:ws-url', {live.ws_url!r})")
    return open_app(ctx, cast(Any, live))  # it needs only the ``url``


def reload(page: Any) -> None:
    """The app reads friends and requests at start only (js/app.js refreshSocial)."""
    page.reload()
    page.wait_for_selector("#link-state[data-state='live']", state="attached")


def befriend_in_pages(asker: Any, asked: Any, asked_name: str, asker_name: str) -> None:
    asker.get_by_test_id("friend-add-input").fill(asked_name)
    asker.get_by_test_id("friend-add-submit").click()
    asker.wait_for_selector(f"#side-notice:has-text('Request sent to {asked_name}')")
    reload(asked)
    asked.get_by_test_id("friend-request-accept").click()
    asked.wait_for_selector(f'[data-testid="conversation-item"][data-peer="{asker_name}"]')


def msg(page: Any, sender: str, text: str, status: str = "") -> Any:
    sel = f'[data-testid="message"][data-from="{sender}"]'
    if status:
        sel += f'[data-status="{status}"]'
    return page.wait_for_selector(f'{sel}:has-text("{text}")')


def test_two_browsers_typing_presence_receipts_history_and_the_library(
    browser: Any, live: StackThread, tmp_path: Path
) -> None:
    w, x = user_page(browser, live), user_page(browser, live)
    try:
        sign_up(w, "wendy")
        sign_up(x, "xavier")
        for p in (w, x):
            p.wait_for_selector("#link-state[data-state='live']", state="attached")
        befriend_in_pages(w, x, "xavier", "wendy")
        # presence: xavier's page hears wendy online as the friendship is made (the server
        # tells new friends), wendy's at its next start, from its GREET
        x.wait_for_selector('[data-testid="presence"][data-peer="wendy"][data-state="online"]')
        reload(w)
        w.wait_for_selector('[data-testid="presence"][data-peer="xavier"][data-state="online"]')

        x.click('[data-testid="conversation-item"][data-peer="wendy"]')
        w.click('[data-testid="conversation-item"][data-peer="xavier"]')
        composer = w.get_by_test_id("composer")
        composer.click()
        composer.type("hello xavier")
        x.wait_for_selector('[data-testid="typing"]:has-text("wendy is typing")')
        typing_shot = artifact_dir() / "signals-typing.png"
        x.screenshot(path=str(typing_shot))
        composer.press("Enter")
        msg(x, "wendy", "hello xavier")
        # the chat clears the typing line, and xavier, at the bottom, has read it
        x.wait_for_selector('[data-testid="typing"]', state="hidden")
        msg(w, "wendy", "hello xavier", "read")

        reply = x.get_by_test_id("composer")
        reply.fill("hi wendy")
        x.get_by_test_id("send").click()
        msg(w, "xavier", "hi wendy")
        msg(x, "xavier", "hi wendy", "read")

        # a reload: the session comes back and the history is there, in order
        reload(w)
        w.click('[data-testid="conversation-item"][data-peer="xavier"]')
        first = msg(w, "wendy", "hello xavier")
        second = msg(w, "xavier", "hi wendy")
        assert int(first.get_attribute("data-seq")) < int(second.get_attribute("data-seq"))
        out = artifact_dir() / "signals-chat.png"
        w.screenshot(path=str(out))
        print(f"screenshots: {out} {typing_shot}")
        assert out.stat().st_size > 10_000

        # the Python library and a browser, both ways
        lib = IMClient(live.url, "yara", PASSWORD)

        async def library_asks() -> None:
            await lib.register()
            await lib.login()
            assert await lib.add_friend("wendy") is None  # a request: wendy accepts it

        live.call(library_asks())
        reload(w)
        w.get_by_test_id("friend-request-accept").click()
        w.wait_for_selector('[data-testid="conversation-item"][data-peer="yara"]')

        async def library_says_hi() -> None:
            await lib.refresh_friends()
            await lib.connect()
            await lib.send_text("wendy", "from python")

        live.call(library_says_hi())
        w.click('[data-testid="conversation-item"][data-peer="yara"]')
        msg(w, "yara", "from python")
        w.wait_for_selector('[data-testid="presence"][data-peer="yara"][data-state="online"]')
        box = w.get_by_test_id("composer")
        box.fill("from the browser")
        box.press("Enter")

        async def library_hears() -> list[str]:
            got: list[str] = []
            deadline = time.monotonic() + 15
            while "from the browser" not in got and time.monotonic() < deadline:
                ev = await lib.next_event(deadline - time.monotonic())
                if isinstance(ev, Message):
                    got.append(ev.text)
            return got

        assert "from the browser" in live.call(library_hears())
        # read by the library (it marks what it surfaced read when asked)
        msg(w, "wendy", "from the browser", "delivered")

        # a file each way: the library's downloads in the page, the page's in the library
        from_lib = bytes(range(256)) * 300  # 76.8 KB: more than one encrypted chunk
        src = tmp_path / "from-python.bin"
        src.write_bytes(from_lib)
        live.call(lib.send_file("wendy", src))
        with w.expect_download(timeout=20_000) as dl:
            # a locator, not a handle: the list re-renders as receipts come, and a locator
            # finds the button again where a handle would be detached
            w.locator('[data-testid="message"][data-from="yara"] button.file').click()
        assert Path(dl.value.path()).read_bytes() == from_lib
        from_page = b"from the page\n" * 5000
        up = tmp_path / "from-page.txt"
        up.write_bytes(from_page)
        w.set_input_files("#attach", str(up))

        async def library_downloads() -> bytes:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                ev = await lib.next_event(deadline - time.monotonic())
                if isinstance(ev, Message) and ev.file is not None:
                    return (await lib.download(ev, tmp_path / "got.txt")).read_bytes()
            raise AssertionError("no file from the page")

        assert live.call(library_downloads(), 40) == from_page
        live.call(lib.close())
        w.wait_for_selector('[data-testid="presence"][data-peer="yara"][data-state="offline"]')
        assert real_errors(w) == [] and real_errors(x) == []
    finally:
        for p in (w, x):
            p.context.close()
