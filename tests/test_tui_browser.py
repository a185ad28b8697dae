"""``im client`` chats with a browser user (issue 16's "done when"), on the real stack: the web
app in headless Chromium and the terminal app (Textual, headless through its Pilot) as two
users of one ``im up`` stack. The browser user asks for the friendship, the terminal user
accepts it with Enter, and they chat both ways: the terminal shows the browser's message and
the browser the terminal's, which goes to read on the terminal once the page shows it.

The terminal app runs on the stack's event loop (tests/test_signals_browser.py StackThread:
Playwright's sync API holds the test's thread), as one scripted coroutine; the two sides meet
through thread-safe events."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, TypeVar

import pytest
from test_signals_browser import StackThread, live, msg, reload, user_page  # noqa: F401
from test_tui_e2e import until
from test_webapp_ui import sign_up
from textual.widgets import OptionList

from tui.screens import ChatApp, ChatScreen
from tui.session import Options

pytestmark = pytest.mark.slow  # a browser: OS processes of its own

T = TypeVar("T")
TUI_PASSWORD = "password-123"


def wait(event: threading.Event, timeout: float = 30.0) -> None:
    assert event.wait(timeout), "the terminal side did not get there"


def test_im_client_and_a_browser_user_chat(browser: Any, live: StackThread) -> None:  # noqa: F811
    registered, accepted, replied = threading.Event(), threading.Event(), threading.Event()

    async def terminal() -> str:
        opts = Options(live.url, "tom", TUI_PASSWORD, register=True, poll_every=0.2)
        app = ChatApp(opts, login_screen=False)
        async with app.run_test(size=(120, 30)) as pilot:
            screen = await until(lambda: app.screen if isinstance(app.screen, ChatScreen) else None)
            session = screen.session
            model = session.model
            registered.set()
            # the browser's request shows (polled); Enter on it accepts
            await until(lambda: model.incoming == ["uma"])
            await pilot.press("ctrl+r", "enter")
            await until(lambda: "uma" in session.client.friends)
            accepted.set()
            # the browser's chat arrives; open the conversation, it is there
            conv = model.pair("uma")
            await until(lambda: conv.unread() == 1)
            await pilot.press("ctrl+l")
            convs = screen.query_one("#convs", OptionList)
            convs.highlighted = convs.get_option_index(conv.conv_id)
            await pilot.press("enter")
            await until(lambda: "uma: hi tom from the browser" in screen.lines_text())
            # reply from the composer; it goes to read once the page shows it
            await pilot.press(*"hello uma from the terminal", "enter")
            replied.set()
            await until(lambda: "me: hello uma from the terminal  [read]" in screen.lines_text())
            return str(screen.lines_text())

    done = asyncio.run_coroutine_threadsafe(terminal(), live.loop)
    page = user_page(browser, live)
    try:
        sign_up(page, "uma")
        page.wait_for_selector("#link-state[data-state='live']", state="attached")
        wait(registered)
        page.get_by_test_id("friend-add-input").fill("tom")
        page.get_by_test_id("friend-add-submit").click()
        page.wait_for_selector("#side-notice:has-text('Request sent to tom')")
        wait(accepted)
        reload(page)  # the page reads friends at start
        page.click('[data-testid="conversation-item"][data-peer="tom"]')
        composer = page.get_by_test_id("composer")
        composer.click()
        composer.type("hi tom from the browser")
        composer.press("Enter")
        msg(page, "uma", "hi tom from the browser")
        wait(replied)
        msg(page, "tom", "hello uma from the terminal")  # sealed by the library, opened here
        lines = done.result(60)
        assert "uma: hi tom from the browser" in lines
    finally:
        if not done.done():
            done.cancel()
        page.context.close()
