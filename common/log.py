"""Logging set-up shared by every entry point, and the context that follows a message.

Two formats (``IM_LOG_FORMAT``): ``text`` (the default, for people) and ``json``, one object per
line with ``time``, ``level``, ``logger``, ``process``, ``message`` and, when known, ``conn``,
``user`` and ``msg_id``, so one message can be followed across processes with ``grep``.

The connection, user and message id come from context variables that the core sets with
:func:`log_context` (a ``with`` block: for one frame's handling) or :func:`bind_log_context`
(for the rest of the current task: a session's reader). asyncio copies the context into every
task it starts, so a task spawned while handling a message logs that message's id as well.
Rules: setting context costs three ``ContextVar.set`` calls and no formatting; nothing is read
until a line is actually written.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import sys
from collections.abc import Iterator
from contextvars import ContextVar, Token
from typing import Literal

LogFormat = Literal["text", "json"]

_conn: ContextVar[str] = ContextVar("im_log_conn", default="")
_user: ContextVar[str] = ContextVar("im_log_user", default="")
_msg: ContextVar[str] = ContextVar("im_log_msg", default="")

_process = ""


def _set(conn: str | None, user: str | None, msg_id: int | str | None) -> list[Token[str]]:
    tokens: list[Token[str]] = []
    if conn is not None:
        tokens.append(_conn.set(conn))
    if user is not None:
        tokens.append(_user.set(user))
    if msg_id is not None:
        tokens.append(_msg.set(str(msg_id)))
    return tokens


@contextlib.contextmanager
def log_context(
    *, conn: str | None = None, user: str | None = None, msg_id: int | str | None = None
) -> Iterator[None]:
    """Within the block, every log line carries these (None leaves a field as it was)."""
    tokens = _set(conn, user, msg_id)
    try:
        yield
    finally:
        for token in reversed(tokens):
            token.var.reset(token)


def bind_log_context(
    *, conn: str | None = None, user: str | None = None, msg_id: int | str | None = None
) -> None:
    """Set these for the rest of the current task (and the tasks it starts from now on)."""
    _set(conn, user, msg_id)


def current_context() -> dict[str, str]:
    """The fields set now, for a line or a test."""
    out = {"conn": _conn.get(), "user": _user.get(), "msg_id": _msg.get()}
    return {k: v for k, v in out.items() if v}


def set_process(name: str) -> None:
    """This process's name on every line (``role/node``), e.g. once its node id is known."""
    global _process
    _process = name


class _ContextFilter(logging.Filter):
    """Copies the context variables onto each record (handlers run in the logging task)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.im_process = _process
        record.im_context = current_context()
        return True


class TextFormatter(logging.Formatter):
    """The human format; a line about a connection or message ends with its ids."""

    def __init__(self, prefix: str = "") -> None:
        super().__init__(f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ctx: dict[str, str] = getattr(record, "im_context", {})
        if ctx:
            line += " [" + " ".join(f"{k}={v}" for k, v in ctx.items()) + "]"
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line; a traceback goes in ``exc``, inside the same line."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        out: dict[str, object] = {
            "time": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "process": getattr(record, "im_process", _process),
            "message": record.getMessage(),
        }
        out.update(getattr(record, "im_context", {}))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def setup(level: str = "INFO", prefix: str = "", fmt: str = "text", process: str = "") -> None:
    """Log to stderr at ``level`` in format ``fmt`` (``text`` or ``json``)."""
    if fmt not in ("text", "json"):
        raise ValueError(f"IM_LOG_FORMAT must be text or json, not {fmt!r}")
    if process:
        set_process(process)
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ContextFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(prefix))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    # uvicorn's access log is per request: keep it for debugging only
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
