"""Groups in the web app with the Python library as the other members: the page fetches the
group's keys, its message opens for them and theirs in the page, and it goes to "read by 2 of
2" as they read it (GroupReceipt pushes, live: no reload, no REST call). ``im up``'s stack in a
thread, headless Chromium."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from browser import PASSWORD
from test_signals_browser import StackThread, msg, reload, user_page
from test_webapp_ui import real_errors, sign_up

from client import IMClient, Message

pytestmark = pytest.mark.slow  # a browser: OS processes of its own


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackThread]:
    st = StackThread(tmp_path_factory.mktemp("receipts-stack"))
    st.start()
    try:
        yield st
    finally:
        st.stop()


def test_read_by_n_of_m_updates_live_in_the_page(browser: Any, live: StackThread) -> None:
    page = user_page(browser, live)
    hank, ivy = IMClient(live.url, "hank", PASSWORD), IMClient(live.url, "ivy", PASSWORD)
    gina = IMClient(live.url, "gina", PASSWORD)  # the page's user on a second device
    try:
        sign_up(page, "gina")
        page.wait_for_selector("#link-state[data-state='live']", state="attached")

        async def make_group() -> tuple[str, str]:
            for c in (hank, ivy):
                await c.register()
                await c.login()
            await gina.login()
            made = await hank.rest.groups.create("team", ["gina", "ivy"])
            await gina.rest.groups.join(made.group_id, "gina")
            await ivy.rest.groups.join(made.group_id, "ivy")
            for c in (hank, ivy):
                await c.connect()
            return made.group_id, made.conv_id

        gid, conv = live.call(make_group())
        reload(page)
        page.click(f'[data-testid="conversation-item"][data-conv="{conv}"]')
        box = page.get_by_test_id("composer")
        box.fill("hello team")
        box.press("Enter")
        msg(page, "gina", "hello team", "sent")  # sealed with the group's key, committed

        async def read_it(c: IMClient) -> int:
            while True:
                ev = await c.next_event(15)
                if isinstance(ev, Message) and ev.text == "hello team":
                    await c.mark_read(conv, ev.seq)
                    return ev.seq

        seq = live.call(read_it(hank))
        page.wait_for_selector(
            f'[data-testid="message"][data-seq="{seq}"]:has-text("read by 1 of 2")'
        )
        live.call(read_it(ivy))
        done = msg(page, "gina", "hello team", "read")
        assert "read by 2 of 2" in done.inner_text()
        # and the other way: a member's group message opens in the page
        live.call(hank.send_group_text(gid, "hi gina"))
        msg(page, "hank", "hi gina")
        assert real_errors(page) == []
    finally:
        for c in (hank, ivy, gina):
            live.call(c.close())
        page.context.close()
