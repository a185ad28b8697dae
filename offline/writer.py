"""The offline writer: queue consumer that batch-writes offline rows (DESIGN §2, §7).

Rules: one ``store.save`` per batch of deliveries, and each delivery is acked only after that
commit, so a crash at any point leaves the messages in the queue (G1). A failing store
(``BackendError``) is retried with the same batch and exponential back-off, forever: a batch is
never dropped. Only items that can never be stored are rejected, so one bad message can't wedge
the queue. ``CancelledError`` is never caught: cancelling ``run`` stops the writer, unacked.

A chat the store refuses as a reused id (its identity holds another message) is logged and
counted; where the publisher still waits for the verdict (the in-process queue: its SENT comes
after the commit) the delivery holding it is rejected, so no SENT is given for it. With a broker
the SENT was given at the broker's confirm; the message ledger refuses such a reuse before that,
for as long as it remembers the id (docs/security.md).

After a commit, and before the acks, ``notify`` (when given) is told whose rows were stored: with
a durable broker the transfer's SENT came before this commit, so a recipient who came online
meanwhile must be asked to drain again, or its rows would wait for its next login.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection

from common.errors import BackendError
from offline.base import Delivery, OfflineQueue, OfflineStore
from offline.sqlstore import item_problem

log = logging.getLogger(__name__)


class OfflineWriter:
    def __init__(
        self,
        queue: OfflineQueue,
        store: OfflineStore,
        max_batch: int = 500,
        *,
        backoff_start: float = 0.1,
        backoff_max: float = 5.0,
        notify: Callable[[Collection[str]], Awaitable[None]] | None = None,
    ) -> None:
        self._queue = queue
        self._store = store
        self._max_batch = max_batch
        self._backoff_start = backoff_start
        self._backoff_max = backoff_max
        self._notify = notify
        self.stored = 0
        self.conflicts = 0  # chats not stored: their id already named another message

    async def run(self) -> None:
        """Store batches until the queue is closed."""
        async for batch in self._queue.deliveries(self._max_batch):
            await self._write(batch)

    async def _write(self, batch: list[Delivery]) -> None:
        accepted: list[Delivery] = []
        for delivery in batch:
            problem = next(filter(None, map(item_problem, delivery.items)), None)
            if problem is None:
                accepted.append(delivery)
            else:
                log.warning("rejecting offline delivery: %s", problem)
                try:
                    await delivery.reject(problem)
                except BackendError as exc:
                    log.warning("offline reject failed: %s", exc)
        items = [item for delivery in accepted for item in delivery.items]
        delay = self._backoff_start
        while True:
            try:
                conflicts = await self._store.save(items)
                break
            except BackendError as exc:
                log.error(
                    "offline save of %d items failed, retrying in %.1fs: %s",
                    len(items),
                    delay,
                    exc,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._backoff_max)
        # drain requests before the acks: a writer killed in between leaves the messages in
        # the queue, and the one that stores them again (once: unique identity) asks again
        if self._notify is not None and items:
            try:
                await self._notify({it.to_user_id for it in items})
            except Exception:
                # a missed drain request costs latency (the next login drains; a client that
                # misses a message asks), never a message
                log.exception("drain notification failed")
        refused: set[int] = set()
        for item in conflicts:
            self.conflicts += 1
            log.warning(
                "offline chat %s/%d to %s not stored: that id holds another message",
                item.from_id,
                item.msg_id,
                item.to_user_id,
            )
        if conflicts and self._queue.stored_on_publish:
            for i, delivery in enumerate(accepted):
                if any(item in conflicts for item in delivery.items):
                    refused.add(i)
                    try:
                        await delivery.reject("message id reused for another message")
                    except BackendError as exc:
                        log.warning("offline reject failed: %s", exc)
        for i, delivery in enumerate(accepted):
            if i in refused:
                continue
            try:
                await delivery.ack()
            except BackendError as exc:
                # the rows are committed: a redelivery is stored once (unique identity)
                log.warning("offline ack failed after commit: %s", exc)
        self.stored += len(items)
