"""common/log.py: IM_LOG_FORMAT=json gives one object a line with the process and, when set, the
connection, user and message id; the context follows tasks; the text format stays readable."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from collections.abc import Iterator

import pytest

from common import log as logsetup


class Captured:
    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self._capsys = capsys

    def getvalue(self) -> str:
        return self._capsys.readouterr().err


@pytest.fixture
def captured(capsys: pytest.CaptureFixture[str]) -> Iterator[Captured]:
    """stderr of the test (setup() binds the handler to sys.stderr as pytest set it)."""
    yield Captured(capsys)
    logging.basicConfig(force=True, handlers=[logging.NullHandler()])
    logsetup.set_process("")


def lines(stream: Captured) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_process_and_context(captured: Captured) -> None:
    logsetup.setup("INFO", fmt="json", process="connector/connector-1")
    log = logging.getLogger("connector.server")
    log.info("no context")
    with logsetup.log_context(conn="c-7", user="alice"):
        with logsetup.log_context(msg_id=12345678901234567):
            log.warning("pushing %s", "it")
        log.info("after the message")
    log.info("after the connection")
    out = lines(captured)
    assert [o["message"] for o in out] == [
        "no context",
        "pushing it",
        "after the message",
        "after the connection",
    ]
    for o in out:
        assert o["process"] == "connector/connector-1"
        assert o["logger"] == "connector.server"
        assert str(o["time"]).endswith("Z")
    assert "conn" not in out[0] and "msg_id" not in out[0]
    assert out[1]["conn"] == "c-7" and out[1]["user"] == "alice"
    assert out[1]["msg_id"] == "12345678901234567" and out[1]["level"] == "WARNING"
    assert "msg_id" not in out[2] and out[2]["user"] == "alice"
    assert "user" not in out[3]


def test_a_traceback_stays_on_its_line(captured: Captured) -> None:
    logsetup.setup("INFO", fmt="json")
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        logging.getLogger("x").exception("failed")
    out = captured.getvalue().splitlines()
    assert len(out) == 1
    record = json.loads(out[0])
    assert "ValueError: bad" in str(record["exc"])


@pytest.mark.asyncio
async def test_context_follows_tasks_and_stays_in_its_own(captured: Captured) -> None:
    logsetup.setup("INFO", fmt="json")
    log = logging.getLogger("t")

    async def session(user: str) -> None:
        logsetup.bind_log_context(conn=f"conn-{user}", user=user)
        await asyncio.sleep(0)

        async def spawned() -> None:
            log.info("spawned for %s", user)

        await asyncio.create_task(spawned())
        log.info("session of %s", user)

    await asyncio.gather(session("alice"), session("bob"))
    log.info("outside")
    out = lines(captured)
    by_message = {str(o["message"]): o for o in out}
    for user in ("alice", "bob"):
        for message in (f"spawned for {user}", f"session of {user}"):
            assert by_message[message]["user"] == user
            assert by_message[message]["conn"] == f"conn-{user}"
    assert "user" not in by_message["outside"]


def test_text_is_the_default_and_shows_context_at_the_end(captured: Captured) -> None:
    logsetup.setup("INFO")
    log = logging.getLogger("transfer.server")
    log.info("plain")
    with logsetup.log_context(user="bob", msg_id=5):
        log.info("about a message")
    first, second = captured.getvalue().splitlines()
    assert "INFO transfer.server: plain" in first and not first.startswith("{")
    assert second.endswith("about a message [user=bob msg_id=5]")


def test_im_refuses_an_unknown_log_format(tmp_path: object) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", "migrate"],
        env={"IM_LOG_FORMAT": "xml", "IM_DATA_DIR": str(tmp_path), "PATH": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "log_format" in done.stderr
