"""``im client`` end to end: the Textual app driven headless (``App.run_test()`` and its Pilot)
against the stack ``im up`` runs, in process, with a library client on the other side.

The TUI user registers and logs in, sees a friend request and accepts it with keys, gets a chat
and opens it (the sender sees READ), replies (the library client gets it), sees the reply go to
"read", scrolls up and gets older history from REST, joins a group and sees "read by 1 of 1",
and shows "bob is typing…". The connector does not relay Typing yet (UNKNOWN_TYPE): the test
checks that the app's Typing is refused quietly, and hands the app a Typing frame as a relaying
connector would push it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
from test_e2e import PW, expect, messages, rest_url, stack_settings
from textual.widgets import Input, OptionList, Static

from cli.stack import Stack
from client import IMClient, Message, Receipt, Typing
from tui.screens import ChatApp, ChatScreen, LoginScreen, MessageLog
from tui.session import Options

T = TypeVar("T")


async def until(check: Callable[[], T | None], timeout: float = 10.0) -> T:
    """Wait for ``check()`` to be truthy (the app works in the same loop: yield to it)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {check}")
        await asyncio.sleep(0.02)


@pytest.mark.asyncio
async def test_tui_requests_chat_receipts_history_typing(tmp_path: Path) -> None:
    st = Stack(stack_settings(tmp_path))
    await st.start()
    bob = IMClient(rest_url(st), "bob", PW)
    opts = Options(rest_url(st), "alice", PW, register=True, poll_every=0.2, max_lines=20)
    app = ChatApp(opts, login_screen=False)
    try:
        await bob.register()
        await bob.login()
        async with app.run_test(size=(120, 24)) as pilot:  # 20 lines overflow the log
            screen = await until(lambda: app.screen if isinstance(app.screen, ChatScreen) else None)
            session = screen.session
            model = session.model

            # a friend request shows up (polled) and Enter on it accepts
            assert await bob.add_friend("alice") is None
            await until(lambda: model.incoming == ["bob"])
            await pilot.press("ctrl+r", "enter")
            await until(lambda: "bob" in session.client.friends)
            await bob.refresh_friends()
            assert "alice" in bob.friends
            await bob.connect()

            # bob's chat arrives unread; opening it reads it, and bob sees READ
            first = await bob.send_text("alice", "hi alice")
            conv = model.pair("bob")
            await until(lambda: conv.unread() == 1)
            await pilot.press("ctrl+l")
            convs = screen.query_one("#convs", OptionList)
            convs.highlighted = convs.get_option_index(conv.conv_id)
            await pilot.press("enter")
            await until(lambda: session.open_conv == conv.conv_id)
            await until(lambda: "bob: hi alice" in screen.lines_text())
            got: set[tuple[str, int]] = set()
            while ("READ", first) not in got:
                ev = await expect(bob, Receipt)
                assert isinstance(ev, Receipt)
                got.add((ev.kind, ev.msg_id))
            assert conv.unread() == 0

            # alice replies from the composer; bob gets it; it goes sent -> read on screen
            await pilot.press(*"hello bob", "enter")
            (reply,) = await messages(bob, 1)
            assert (reply.from_id, reply.text) == ("alice", "hello bob")
            await until(
                lambda: (
                    "me: hello bob  [sent]" in screen.lines_text()
                    or "me: hello bob  [delivered]" in screen.lines_text()
                )
            )
            await bob.send_read(reply)
            await until(lambda: "me: hello bob  [read]" in screen.lines_text())

            # typing, both ways through the server: the app's Typing (it went while alice
            # typed her reply) reached bob's library client, and bob's shows on the screen,
            # then goes when he stops
            session._typing_sent.clear()  # the reply's start was under TYPING_EVERY ago
            await pilot.press(*"typing")
            ev = await expect(bob, Typing, timeout=10)
            assert isinstance(ev, Typing) and (ev.user_id, ev.conv_id) == ("alice", conv.conv_id)
            assert session.client.typing_ok
            typing = screen.query_one("#typing", Static)
            assert bob.send_typing(conv.conv_id, True)
            await until(lambda: "bob is typing…" in str(typing.content))
            assert bob.send_typing(conv.conv_id, False)
            await until(lambda: str(typing.content) == "")
            for _ in range(6):
                await pilot.press("backspace")

            # history: 25 more from bob; the app keeps the newest 20 and follows the bottom;
            # scrolling up to the top pages the rest in from REST
            for i in range(25):
                await bob.send_text("alice", f"more {i}")
            await until(lambda: "bob: more 24" in screen.lines_text())
            assert len(conv.lines) == 20 and "hi alice" not in screen.lines_text()
            log = screen.query_one("#log", MessageLog)
            await until(lambda: log.scroll_y > 0 and log.scroll_y == log.max_scroll_y)
            log.scroll_home(animate=False)
            await until(lambda: "bob: hi alice" in screen.lines_text())
            seqs = sorted(conv.lines)
            assert seqs == list(range(1, 28))  # every message once, in seq order
            text = screen.lines_text()
            assert text.index("hi alice") < text.index("hello bob") < text.index("more 0")

            # a group: bob's invitation shows with the requests, Enter joins, and a message
            # of alice's there goes to "read by 1 of 1" once bob reads it
            info = await bob.rest.groups.create("team", ["alice"])
            await until(lambda: info.group_id in model.invites)
            await pilot.press("ctrl+r", "enter")
            team = await until(lambda: model.convs.get(info.conv_id))
            assert team.title == "#team"
            await pilot.press("ctrl+l")
            convs.highlighted = convs.get_option_index(team.conv_id)
            await pilot.press("enter")
            await until(lambda: session.open_conv == team.conv_id)
            await pilot.press(*"hi team", "enter")
            while True:
                ev = await bob.next_event(5.0)
                if isinstance(ev, Message) and ev.text == "hi team":
                    break
            await bob.send_read(ev)
            await until(lambda: "me: hi team  [read by 1 of 1]" in screen.lines_text())
    finally:
        await bob.close()
        await st.stop()


@pytest.mark.asyncio
async def test_tui_login_screen_refuses_a_wrong_password_then_registers(tmp_path: Path) -> None:
    st = Stack(stack_settings(tmp_path))
    await st.start()
    bob = IMClient(rest_url(st), "bob", PW)
    app = ChatApp(Options(rest_url(st), "", "", poll_every=0.2), login_screen=True)
    try:
        await bob.register()
        async with app.run_test(size=(120, 40)) as pilot:
            login = await until(lambda: app.screen if isinstance(app.screen, LoginScreen) else None)
            login.query_one("#user", Input).value = "bob"
            password = login.query_one("#password", Input)
            password.value = "wrong-password"
            password.focus()
            await pilot.press("enter")
            error = login.query_one("#login-error", Static)
            await until(lambda: "cannot log in" in str(error.content))
            assert app.screen is login  # still asking

            login.query_one("#user", Input).value = "carol"
            password.value = PW
            await pilot.click("#register")
            chat = await until(lambda: app.screen if isinstance(app.screen, ChatScreen) else None)
            assert chat.session.model.me == "carol"

            # a name that cannot be a user is refused with a clear note, and nothing is sent
            await pilot.press("ctrl+f", *"no way!", "enter")
            await until(lambda: chat.session.note.startswith("friend no way!"))
            assert chat.session.model.outgoing == []
            # a real one: the request shows as waiting, and bob sees it
            await pilot.press(*"bob", "enter")
            await until(lambda: chat.session.model.outgoing == ["bob"])
            await bob.login()
            assert (await bob.friend_requests()).incoming == ["carol"]
            # Del on it withdraws it
            await pilot.press("ctrl+r", "delete")
            await until(lambda: chat.session.model.outgoing == [])
            assert (await bob.friend_requests()).incoming == []
    finally:
        await bob.close()
        await st.stop()


def test_im_client_refuses_a_bad_poll_interval(capsys: pytest.CaptureFixture[str]) -> None:
    from cli.main import main

    assert main(["client", "--poll", "0"]) == 2
    assert "--poll" in capsys.readouterr().err
