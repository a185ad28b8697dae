"""Which event loop every ``im`` process runs on: uvloop when it is installed, else asyncio's.

uvloop runs the same asyncio code with a libuv core; on the bare relay of ``im bench`` (docs/
performance.md) it took about a quarter off the CPU per message of the default loop, and every
server process here spends much of its time in the loop's socket and callback machinery.

``IM_LOOP=asyncio`` forces the standard loop (to compare, or to rule uvloop out when debugging);
``IM_LOOP=uvloop`` insists on uvloop and fails if it is missing; unset or ``auto`` picks uvloop
when importable. Child processes inherit the variable, so one setting covers a whole cluster.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from common.errors import ConfigError

T = TypeVar("T")

CHOICES = ("auto", "uvloop", "asyncio")


def loop_name(setting: str | None = None) -> str:
    """The loop ``IM_LOOP`` (or ``setting``) selects on this machine: "uvloop" or "asyncio"."""
    choice = (setting if setting is not None else os.environ.get("IM_LOOP", "auto")) or "auto"
    choice = choice.strip().lower()
    if choice not in CHOICES:
        raise ConfigError(f"IM_LOOP={choice!r}: expected one of {', '.join(CHOICES)}")
    if choice == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        if choice == "uvloop":
            raise ConfigError("IM_LOOP=uvloop but uvloop is not installed") from None
        return "asyncio"
    return "uvloop"


def loop_factory(setting: str | None = None) -> Callable[[], asyncio.AbstractEventLoop]:
    if loop_name(setting) == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


def run(main: Coroutine[Any, Any, T], setting: str | None = None) -> T:
    """``asyncio.run(main)`` on the selected loop."""
    try:
        factory = loop_factory(setting)
    except ConfigError:
        main.close()
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
