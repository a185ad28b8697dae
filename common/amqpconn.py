"""The one place the app connects to RabbitMQ: a single broker, or whichever node of a cluster
answers.

``IM_AMQP_URL`` is one ``amqp://`` (or ``amqps://``) URL as before, or several separated by
commas, one per node of one cluster::

    amqp://im:secret@10.0.0.1:5672/,amqp://im:secret@10.0.0.2:5672/,amqp://im:secret@10.0.0.3:5672/

Rules:
- the first connect tries the nodes in the order given and fails only when none answers (the
  error names each one's failure), so a process starts while any node is up;
- after that, aio-pika's robust connection does what it always did after a lost connection
  (reconnect, reopen the channels, redeclare the queues, restart the consumers), and here every
  failed attempt and every lost connection moves it to the next node of the ring: it goes on
  to whichever node answers instead of waiting for the one that died;
- query options (``?heartbeat=5&reconnect_interval=1``) configure the one connection, so every
  URL must carry the same ones, or none after the first (which then sets them for all).
  With several nodes, ``heartbeat`` defaults to :data:`CLUSTER_HEARTBEAT` and
  ``reconnect_interval`` to :data:`CLUSTER_RECONNECT` unless given: a node whose host vanished
  sends no reset, and only missed heartbeats tell the client to move on. One URL keeps
  aio-pika's defaults, as before.

A node that dies takes its connections with it. What survives it lives in the queues: quorum
queues keep every confirmed message on a majority of nodes, so the cluster loses nothing while
two of three nodes are up, and the confirms of messages in flight at the cut never arrive, so
their publishers retry them (see :mod:`timeline.amqpqueue`).
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Sequence
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from yarl import URL  # aio-pika's own URL type (a dependency of aio-pika)

from common.errors import BackendError, ConfigError
from common.redact import redact_url

SERVICE = "rabbitmq"
# Seconds. RabbitMQ's default heartbeat is 60 s, and a connection is given up after two missed:
# two minutes on a dead node. 5 s gives up within about 10 s and costs one small frame per
# 5 s per connection.
CLUSTER_HEARTBEAT = 5
CLUSTER_RECONNECT = 1  # seconds between attempts; aio-pika's 5 s is for a broker restarting
_ERRORS = (aiormq.exceptions.AMQPError, RuntimeError, OSError, TimeoutError, ValueError)


def parse_urls(value: str) -> list[URL]:
    """The node URLs of ``IM_AMQP_URL``; :class:`ConfigError` when they are not a cluster's."""
    parts = [p.strip() for p in value.split(",") if p.strip()]
    if not parts:
        raise ConfigError("IM_AMQP_URL is empty")
    urls: list[URL] = []
    for part in parts:
        try:
            url = URL(part)
        except ValueError as exc:
            raise ConfigError(f"AMQP URL {redact_url(part)}: {exc}") from None
        if url.scheme not in ("amqp", "amqps") or not url.host:
            raise ConfigError(f"AMQP URL {redact_url(part)}: need amqp://host or amqps://host")
        urls.append(url)
    query = urls[0].query_string
    for url in urls[1:]:
        if url.query_string not in ("", query):
            raise ConfigError(
                "AMQP URLs: every node's URL must carry the same options (or none after the first)"
            )
    if len(urls) == 1:
        return urls
    defaults = {"heartbeat": str(CLUSTER_HEARTBEAT), "reconnect_interval": str(CLUSTER_RECONNECT)}
    options = {**defaults, **dict(urls[0].query)}
    return [u.with_query(options) for u in urls]


class NodeRingConnection(aio_pika.RobustConnection):
    """A robust connection that moves to the next node's URL whenever its connection closes or
    an attempt fails (aio-pika runs ``_on_connection_close`` for both)."""

    def __init__(self, urls: Sequence[URL], first: int = 0, **kwargs: Any) -> None:
        super().__init__(urls[first], **kwargs)
        self.node_urls = list(urls)
        self.node = first

    async def _on_connection_close(self, closing: asyncio.Future[Any]) -> None:
        if not self._close_called:
            self.node = (self.node + 1) % len(self.node_urls)
            self.url = self.node_urls[self.node]
        await super()._on_connection_close(closing)


_RENEW_DEBOUNCE = 1.0  # seconds: one renewal serves the burst of nacks one bad channel sends
_renewed_at: weakref.WeakKeyDictionary[AbstractChannel, float] = weakref.WeakKeyDictionary()


async def renew_channel(channel: AbstractChannel) -> None:
    """Close ``channel`` and open it again (the same object, a new channel on the broker),
    unless that was done within the last second.

    For a publisher whose publish was nacked. Seen on RabbitMQ 3.10 (Debian 12's): a channel
    that published to a quorum queue while its leader was moving to another node may go on
    nacking every publish to that queue for as long as it lives, while a new channel on the
    same connection publishes fine (tests/test_multihost_amqp.py). Renewing costs the other
    publishes in flight on the channel, which fail and are retried like any other failure.
    """
    now = asyncio.get_running_loop().time()
    if now - _renewed_at.get(channel, -_RENEW_DEBOUNCE) < _RENEW_DEBOUNCE:
        return
    _renewed_at[channel] = now
    with contextlib.suppress(*_ERRORS):
        await channel.close()
    with contextlib.suppress(*_ERRORS):
        await channel.reopen()


async def connect(value: str, *, timeout: float = 5.0) -> AbstractRobustConnection:
    """A robust connection to the first node of ``value`` that answers, ``timeout`` seconds for
    each; :class:`BackendError` naming every node when none does."""
    urls = parse_urls(value)
    failures: list[str] = []
    for first in range(len(urls)):
        connection = NodeRingConnection(urls, first)
        try:
            await connection.connect(timeout=timeout)
        except _ERRORS as exc:
            with contextlib.suppress(*_ERRORS):
                await connection.close()
            failures.append(f"{redact_url(str(urls[first]))}: {exc or type(exc).__name__}")
            continue
        return connection
    raise BackendError(SERVICE, "cannot reach " + "; ".join(failures))
