"""The transfer's member cache on groups with a long history (many more spans than members):
bounded, exact, and read once per membership change, never once per message."""

from __future__ import annotations

import pytest
from test_groups_wire_members import Views, snap

from common.config import Settings
from timeline.model import Span
from transfer.members import MAX_SPANS, MemberCache, span_budget

pytestmark = pytest.mark.asyncio


def churned(members: int, closed_each: int, head: int) -> dict[str, tuple[Span, ...]]:
    """``members`` users each with ``closed_each`` old spans (left and came back, seqs below
    1000) and an open one from 1000; and as many former members with old spans only."""
    spans: dict[str, tuple[Span, ...]] = {}
    for i in range(members):
        old = tuple(Span(10 * k + 1, 10 * k + 2) for k in range(closed_each))
        spans[f"m{i:05d}"] = (*old, Span(1000, 0))
        spans[f"x{i:05d}"] = old
    assert head >= 1000
    return spans


async def test_a_group_with_more_spans_than_the_budget_is_cached_from_its_floor() -> None:
    views = Views()
    spans = churned(5_000, 30, head=2_000)
    assert sum(len(v) for v in spans.values()) > MAX_SPANS  # 305 000: was never cached
    views.snaps["g:old"] = snap(2_000, **spans)
    cache = MemberCache(views)
    want = sorted(u for u in spans if u.startswith("m"))
    assert await cache.members_at("g:old", 2_000) == want
    for seq in range(2_001, 2_051):  # fifty chats: the next seq each time
        assert await cache.members_at("g:old", seq) == want
    assert views.reads == 1, "one read, not one per message"
    assert cache.floor("g:old") == 2_000 and cache.head("g:old") == 2_050
    assert cache.spans_held == 5_000, "only the spans that reach the floor are held"
    # a resend's duplicate of an old chat: below the floor, read through, nothing replaced
    assert await cache.members_at("g:old", 11) == sorted(spans)
    assert views.reads == 2 and cache.floor("g:old") == 2_000
    assert await cache.members_at("g:old", 2_051) == want and views.reads == 2


async def test_a_gap_reloads_a_floored_group_from_the_new_seq() -> None:
    views = Views()
    spans = churned(3_000, 10, head=1_500)  # 63 000 spans: more than an eighth of the budget
    views.snaps["g:old"] = snap(1_500, **spans)
    cache = MemberCache(views)
    await cache.members_at("g:old", 1_500)
    # m00000 left at 1501 (REST), then chats: 1502 is a gap
    spans["m00000"] = (*spans["m00000"][:-1], Span(1000, 1501))
    views.snaps["g:old"] = snap(1_502, **spans)
    got = await cache.members_at("g:old", 1_502)
    assert "m00000" not in got and len(got) == 2_999 and views.reads == 2
    assert cache.floor("g:old") == 1_502 and cache.spans_held == 2_999
    assert await cache.members_at("g:old", 1_501) == sorted(["m00000", *got]), "below: read"


async def test_small_groups_stay_whole_and_the_budget_evicts_least_recent() -> None:
    views = Views()
    for g in range(9):
        views.snaps[f"g:{g}"] = snap(5, **{f"u{j}": (Span(1, 2), Span(4, 0)) for j in range(10)})
    cache = MemberCache(views, max_spans=160)  # each group holds 20 (an eighth): eight fit
    for g in range(8):
        await cache.members_at(f"g:{g}", 5)
    assert cache.floor("g:0") == 0 and cache.spans_held == 160, "whole: old seqs answered"
    assert await cache.members_at("g:0", 3) == [] and len(await cache.members_at("g:0", 2)) == 10
    assert views.reads == 8
    await cache.members_at("g:8", 5)  # g:1 is now the least recently used
    assert [cache.head(f"g:{g}") for g in range(9)] == [5, None, 5, 5, 5, 5, 5, 5, 5]
    assert cache.spans_held == 160 and len(cache) == 8


async def test_the_transfers_budget_follows_the_group_size_setting() -> None:
    assert span_budget(Settings().group_max_size) == MAX_SPANS
    largest = Settings(group_max_size=100_000).group_max_size
    assert span_budget(largest) == 200_000
    views = Views()
    members = {f"member-{i:06d}": (Span(1, 0),) for i in range(largest)}
    views.snaps["g:full"] = snap(1, **members)
    cache = MemberCache(views, max_spans=span_budget(largest))
    assert len(await cache.members_at("g:full", 1)) == largest
    assert len(await cache.members_at("g:full", 2)) == largest
    assert views.reads == 1 and cache.uncached == 0, "a group of the allowed size is kept"
