"""The Textual app: a login screen, then the chat screen (conversations and requests on the
left, the open conversation on the right). It only draws :class:`tui.model.Model` and turns
keys into :class:`tui.session.Session` calls; redraws are coalesced (many events, one frame).

Text from the network is drawn as plain text (``rich.text.Text``, never markup), with control
characters replaced, so a peer cannot restyle the screen or send escape sequences to it.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Button, Footer, Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from client import RestError
from common.errors import IMError
from tui.model import Conv, Line, typing_text
from tui.session import Options, Session

REDRAW_EVERY = 0.05  # seconds: events that come together are drawn once


def printable(text: str) -> str:
    """``text`` with control characters (escape sequences among them) shown as U+FFFD."""
    return "".join(
        ch if ch in "\n\t" or not (ord(ch) < 32 or 0x7F <= ord(ch) < 0xA0) else "\ufffd"
        for ch in text
    )


def line_text(conv: Conv, line: Line) -> Text:
    stamp = datetime.fromtimestamp(line.time_ms / 1000).strftime("%H:%M") if line.time_ms else ""
    out = Text(f"{stamp} ", style="dim")
    if line.system:
        out.append(printable(line.text), style="italic dim")
        return out
    who = "me" if line.mine else line.sender
    out.append(f"{printable(who)}: ", style="bold green" if line.mine else "bold cyan")
    out.append(printable(line.text))
    state = conv.state(line)
    if state:
        style = "red" if line.failed else "blue" if state == "read" else "dim"
        out.append(f"  [{state}]", style=style)
    return out


def conv_prompt(conv: Conv) -> Text:
    unread = conv.unread()
    out = Text(printable(conv.title), style="bold" if unread else "")
    if unread:
        out.append(f" ({unread})", style="bold yellow")
    if conv.last_text:
        out.append("\n  " + printable(conv.last_text)[:40], style="dim")
    return out


class MessageLog(VerticalScroll):
    """The open conversation's lines; scrolling up to the top asks for older ones."""

    class AtTop(Message):
        pass

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        if new_value <= 0 < old_value:
            self.post_message(self.AtTop())


class LoginScreen(Screen[None]):
    """Log in or register when the command line did not say who."""

    def __init__(self, opts: Options) -> None:
        super().__init__()
        self.opts = opts

    def compose(self) -> ComposeResult:
        with Vertical(id="login-box"):
            yield Label("im client: log in")
            yield Input(self.opts.rest_url, placeholder="REST URL", id="rest")
            yield Input(self.opts.user, placeholder="user id", id="user")
            yield Input(self.opts.password, placeholder="password", password=True, id="password")
            yield Input(self.opts.device_id, placeholder="device id", id="device")
            with Horizontal():
                yield Button("Log in", id="login", variant="primary")
                yield Button("Register", id="register")
            yield Static("", id="login-error")

    @on(Button.Pressed)
    def pressed(self, event: Button.Pressed) -> None:
        self.submit(event.button.id == "register")

    @on(Input.Submitted)
    def entered(self) -> None:
        self.submit(False)

    def submit(self, register: bool) -> None:
        def value(name: str) -> str:
            return self.query_one(f"#{name}", Input).value.strip()

        opts = Options(
            rest_url=value("rest"),
            user=value("user"),
            password=self.query_one("#password", Input).value,
            device_id=value("device") or "tui",
            register=register,
            poll_every=self.opts.poll_every,
        )
        if not opts.user or not opts.password:
            self.query_one("#login-error", Static).update("user id and password, please")
            return
        app = self.app
        assert isinstance(app, ChatApp)
        app.start_session(opts)

    def failed(self, why: str) -> None:
        self.query_one("#login-error", Static).update(Text(printable(why), style="red"))


class ChatScreen(Screen[None]):
    BINDINGS = [
        Binding("ctrl+o", "older", "Older"),
        Binding("ctrl+l", "focus_list", "Conversations"),
        Binding("ctrl+r", "focus_requests", "Requests"),
        Binding("ctrl+f", "focus_add", "Add friend"),
        Binding("delete", "decline", "Decline", show=False),
    ]

    def __init__(self, session: Session) -> None:
        super().__init__()
        self.session = session
        self._pending_redraw = False
        self._follow = True  # the log stays at its bottom while it was there

    def compose(self) -> ComposeResult:
        with Horizontal():
            with Vertical(id="side"):
                yield Label(f"{self.session.model.me}: conversations", id="me")
                yield OptionList(id="convs")
                yield Label("Requests, invitations (Enter: accept, Del: decline)")
                yield OptionList(id="requests")
                yield Input(placeholder="add friend: user id", id="add")
            with Vertical(id="main"):
                yield Static("no conversation open", id="title")
                with MessageLog(id="log"):
                    yield Static("", id="lines")
                yield Static("", id="typing")
                yield Input(placeholder="message (Enter sends)", id="composer", disabled=True)
                yield Static("", id="note")
        yield Footer()

    def on_mount(self) -> None:
        self.redraw()
        self.set_interval(1.0, self.redraw)  # typing entries expire on their own
        self.query_one("#convs", OptionList).focus()

    # -- drawing -----------------------------------------------------------------------------

    def changed(self, conv_id: str) -> None:
        if not self._pending_redraw:
            self._pending_redraw = True
            self.set_timer(REDRAW_EVERY, self.redraw)

    def redraw(self) -> None:
        """Draw what changed since the last time (unchanged widgets are not touched, so the
        periodic redraws cost little and never move the highlight or the scroll)."""
        self._pending_redraw = False
        s, m = self.session, self.session.model
        self._draw_list("#convs", [Option(conv_prompt(c), id=c.conv_id) for c in m.ordered()])
        options = [Option(Text(f"accept {printable(u)}?"), id=f"in:{u}") for u in m.incoming]
        options += [
            Option(Text(f"join #{printable(name or gid)}?"), id=f"group:{gid}")
            for gid, name in m.invites.items()
        ]
        options += [
            Option(Text(f"waiting for {printable(u)}", style="dim"), id=f"out:{u}")
            for u in m.outgoing
        ]
        self._draw_list("#requests", options)
        self._set("#note", Text(printable(s.note), style="dim"))
        conv = m.convs.get(s.open_conv)
        if conv is not None:
            self._draw_log(conv)

    def _set(self, selector: str, text: Text) -> bool:
        widget = self.query_one(selector, Static)
        old = widget.content
        if isinstance(old, Text) and old.plain == text.plain and old.spans == text.spans:
            return False
        widget.update(text)
        return True

    def _draw_list(self, selector: str, options: list[Option]) -> None:
        ol = self.query_one(selector, OptionList)
        shown = [(o.id, str(o.prompt)) for o in ol.options]
        if shown == [(o.id, str(o.prompt)) for o in options]:
            return
        keep = ol.highlighted_option.id if ol.highlighted_option else None
        ol.set_options(options)
        if keep is not None and any(o.id == keep for o in options):
            ol.highlighted = ol.get_option_index(keep)
        elif options:
            ol.highlighted = 0

    def _draw_log(self, conv: Conv) -> None:
        self._set("#title", Text(printable(conv.title), style="bold"))
        who = typing_text(self.session.model.typing_in(conv.conv_id, time.monotonic()))
        self._set("#typing", Text(printable(who), style="italic"))
        log = self.query_one("#log", MessageLog)
        at_end = log.scroll_y >= log.max_scroll_y
        before = log.max_scroll_y
        body = Text("\n").join(line_text(conv, ln) for ln in conv.ordered())
        if conv.more_above and conv.lines:
            body = Text("(Ctrl+O or scroll up: older messages)\n", style="dim") + body
        if not self._set("#lines", body):
            return
        if at_end and self._follow:
            self.call_after_refresh(log.scroll_end, animate=False)
        elif log.scroll_y == 0 and not at_end:
            # older lines came in above: keep the ones in view where they were
            self.call_after_refresh(
                lambda: log.scroll_to(y=log.max_scroll_y - before, animate=False)
            )

    def lines_text(self) -> str:
        """What the log shows, as plain text (for tests and screen readers)."""
        content = self.query_one("#lines", Static).content
        return content.plain if isinstance(content, Text) else str(content)

    # -- input -------------------------------------------------------------------------------

    @on(OptionList.OptionSelected, "#convs")
    async def open_conv(self, event: OptionList.OptionSelected) -> None:
        conv_id = event.option.id or ""
        composer = self.query_one("#composer", Input)
        composer.disabled = False
        composer.focus()
        self._follow = True
        await self.session.open(conv_id)
        self.redraw()

    @on(OptionList.OptionSelected, "#requests")
    async def accept(self, event: OptionList.OptionSelected) -> None:
        kind, _, who = (event.option.id or "").partition(":")
        if kind == "in":
            await self.session.befriend(who)
        elif kind == "group":
            await self.session.join(who)

    async def action_decline(self) -> None:
        reqs = self.query_one("#requests", OptionList)
        if reqs.has_focus and reqs.highlighted_option is not None:
            kind, _, who = (reqs.highlighted_option.id or "").partition(":")
            if kind == "group":
                await self.session.join(who, accept=False)
            else:
                await self.session.decline(who)

    @on(Input.Submitted, "#composer")
    async def send(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        if not text or not self.session.open_conv:
            return
        event.input.value = ""
        self._follow = True
        self.session.model.follow(self.session.open_conv)
        await self.session.send(self.session.open_conv, text)

    @on(Input.Changed, "#composer")
    def typed(self, event: Input.Changed) -> None:
        if event.value and self.session.open_conv:
            self.session.typed(self.session.open_conv)

    @on(Input.Submitted, "#add")
    async def add_friend(self, event: Input.Submitted) -> None:
        user = event.value.strip()
        if user:
            event.input.value = ""
            await self.session.befriend(user)

    async def action_older(self) -> None:
        log = self.query_one("#log", MessageLog)
        if log.scroll_y > 0:
            log.scroll_home(animate=False)  # at the top, AtTop asks for the older lines
        else:
            await self.older()

    @on(MessageLog.AtTop)
    async def older(self) -> None:
        conv_id = self.session.open_conv
        if conv_id:
            self._follow = False
            await self.session.older(conv_id)
            self.redraw()

    def action_focus_list(self) -> None:
        self.query_one("#convs", OptionList).focus()

    def action_focus_requests(self) -> None:
        self.query_one("#requests", OptionList).focus()

    def action_focus_add(self) -> None:
        self.query_one("#add", Input).focus()


class ChatApp(App[None]):
    """``im client``: log in (or the login screen), then chat."""

    TITLE = "im client"
    CSS = """
    #side { width: 36; border-right: solid $primary; }
    #convs { height: 1fr; }
    #requests { height: 8; }
    #log { height: 1fr; }
    #typing { height: 1; color: $text-muted; }
    #note { height: 1; }
    #login-box { width: 60; height: auto; margin: 2 4; }
    """

    def __init__(self, opts: Options, *, login_screen: bool) -> None:
        super().__init__()
        self.opts = opts
        self.login_screen = login_screen
        self.session: Session | None = None

    def on_mount(self) -> None:
        if self.login_screen:
            self.push_screen(LoginScreen(self.opts))
        else:
            self.start_session(self.opts)

    @work(exclusive=True, group="login")
    async def start_session(self, opts: Options) -> None:
        screen: ChatScreen | None = None

        def changed(conv_id: str) -> None:
            if screen is not None and screen.is_mounted:
                screen.changed(conv_id)

        session = Session(opts, changed)
        try:
            await session.start()
        except asyncio.CancelledError:  # a second try replaced this one (exclusive worker)
            await session.close()
            raise
        except (RestError, IMError, OSError) as exc:
            await session.close()
            why = f"cannot log in: {exc}"
            if isinstance(self.screen, LoginScreen):
                self.screen.failed(why)
            else:
                self.exit(return_code=1, message=why)
            return
        self.session = session
        screen = ChatScreen(session)
        if isinstance(self.screen, LoginScreen):
            await self.switch_screen(screen)
        else:
            await self.push_screen(screen)

    async def on_unmount(self) -> None:
        if self.session is not None:
            await self.session.close()
