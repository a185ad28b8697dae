"""Every Prometheus metric the processes export, and one-call helpers to record them.

Why one module: the names, labels and help texts are the contract with whoever runs the cluster
(docs/operations.md lists them, alert rules name them), so they live in one place, and the core
records through typed helpers instead of touching ``prometheus_client`` itself.

Rules kept here:
- labels are low-cardinality and closed: each label's values are a ``Literal`` below (or the wire
  error code names), and every child is bound at import, so a hot path pays a dict lookup and a
  locked add, never a label parse; no user id, device id or message id is ever a label;
- gauges that describe state someone else owns (pool in use, queue depth, links) are read when
  scraped, from sources registered with :func:`add_source`, so keeping them costs nothing between
  scrapes; sources are held weakly, so a stopped component drops out by itself;
- one registry of our own (:data:`REGISTRY`) rather than the library's global one, so what is
  exposed is exactly this list plus the process collectors;
- ``*_created`` series are turned off: Prometheus does not read them from the text format, and
  they would double every counter's series.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any, Literal, TypeVar, get_args

import prometheus_client
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import choose_encoder

from proto import im_pb2

prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

ConnectionState = Literal["unauthenticated", "authenticated"]
MessageKind = Literal["text", "file"]
# accepted: committed, and SENT given to the sending device (counted where that device is);
# refused: answered with an error code (not a friend, before_send said no, rate limit,
# ID_REUSED, ...); failed: a server fault (INTERNAL), not committed
MessageOutcome = Literal["accepted", "refused", "failed"]
# sent: a SENT ack given to a device; delivered, read: a cursor that moved (at the transfer)
ReceiptType = Literal["sent", "delivered", "read"]
# connector: client frame in -> SENT out to the client; transfer: frame in from a connector ->
# SENT out to it; store: queue publish -> durable (broker confirm or commit)
Hop = Literal["connector", "transfer", "store"]
QueueName = Literal["timeline", "webhook"]
PeerKind = Literal["transfer", "connector"]
LoginOutcome = Literal["ok", "failed", "throttled", "unavailable", "disabled"]
# delivered: 2xx; retried: one failed attempt that will be tried again; failed: given up after
# the last retry; rejected: a 4xx that retrying cannot fix; dropped: the queue was full
WebhookOutcome = Literal["delivered", "retried", "failed", "rejected", "dropped"]
BeforeSendVerdict = Literal["allowed", "refused", "error_allowed", "error_refused"]

ERROR_CODES: tuple[str, ...] = tuple(im_pb2.ErrorCode.keys())

# From 0.5 ms (a relay on one machine) to 10 s (a broker confirm under an outage); roughly
# x2.5 per step, the spread docs/performance.md measured between idle and loaded.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


def _values(literal: Any) -> tuple[str, ...]:
    return tuple(get_args(literal))


PROCESS = Gauge(
    "im_process_info",
    "Always 1; its labels say which im process this is: role (the services it runs, joined "
    "by +) and node (its IM_NODE_ID or host:port).",
    ["role", "node"],
    registry=REGISTRY,
)
CONNECTIONS = Gauge(
    "im_connections",
    "Client connections open on this connector, by state: unauthenticated (no GREET yet) "
    "or authenticated.",
    ["state"],
    registry=REGISTRY,
)
MESSAGES = Counter(
    "im_messages",
    "Chat messages by kind (text, file) and outcome (accepted: committed and SENT given; "
    "refused: answered with an error code; failed: a server fault, not committed), counted "
    "once, at the connector of the sending device.",
    ["kind", "outcome"],
    registry=REGISTRY,
)
RECEIPTS = Counter(
    "im_receipts",
    "Receipts by type: sent (SENT acks given to devices, at connectors), delivered and read "
    "(cursors that moved, at transfers).",
    ["type"],
    registry=REGISTRY,
)
FRAME_ERRORS = Counter(
    "im_frame_errors",
    "ERROR frames sent to peers, by wire error code name (docs/protocol.md).",
    ["code"],
    registry=REGISTRY,
)
SEND_LATENCY = Histogram(
    "im_send_latency_seconds",
    "Time from a chat frame arriving to its SENT going out, per hop (connector: at the "
    "client's connector; transfer: inside the transfer; store: until durable).",
    ["hop"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
ROUTE_HITS = Counter(
    "im_route_cache_hits",
    "Routing lookups answered from the transfer's cache (no Redis round trip).",
    registry=REGISTRY,
)
ROUTE_MISSES = Counter(
    "im_route_cache_misses",
    "Routing lookups that went to the user status backend.",
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge(
    "im_queue_depth",
    "Items waiting in a queue as this process sees it: timeline (broker messages ready in "
    "the timeline write queue), webhook (events not yet delivered).",
    ["queue"],
    registry=REGISTRY,
)
DB_POOL_IN_USE = Gauge(
    "im_db_pool_in_use",
    "Database connections of this process busy with a statement right now.",
    registry=REGISTRY,
)
DB_POOL_SIZE = Gauge(
    "im_db_pool_size",
    "Largest number of database connections this process may open (IM_DB_POOL).",
    registry=REGISTRY,
)
NODE_LINKS = Gauge(
    "im_node_links",
    "Live links from this process to peer processes, by peer kind (transfer, connector).",
    ["peer"],
    registry=REGISTRY,
)
LOGINS = Counter(
    "im_login",
    "REST logins by outcome: ok, failed (wrong credentials), throttled (429), unavailable "
    "(provider down), disabled (account disabled).",
    ["outcome"],
    registry=REGISTRY,
)
WEBHOOKS = Counter(
    "im_webhook_deliveries",
    "Webhook delivery attempts by outcome: delivered, retried, failed (gave up), rejected "
    "(4xx), dropped (queue full).",
    ["outcome"],
    registry=REGISTRY,
)
BEFORE_SEND = Counter(
    "im_before_send",
    "message.before_send hook calls by verdict: allowed, refused, and error_allowed or "
    "error_refused when the hook did not answer (fail-open or fail-closed).",
    ["verdict"],
    registry=REGISTRY,
)

# -- pre-bound children: the hot paths index these ---------------------------------------------

_CONNECTIONS = {s: CONNECTIONS.labels(s) for s in _values(ConnectionState)}
_UNAUTHENTICATED, _AUTHENTICATED = _CONNECTIONS["unauthenticated"], _CONNECTIONS["authenticated"]
_MESSAGES = {
    (k, o): MESSAGES.labels(k, o) for k in _values(MessageKind) for o in _values(MessageOutcome)
}
_RECEIPTS = {t: RECEIPTS.labels(t) for t in _values(ReceiptType)}
_CURSOR_RECEIPTS: dict[int, Counter] = {
    im_pb2.DELIVERED: _RECEIPTS["delivered"],
    im_pb2.READ: _RECEIPTS["read"],
}
_FRAME_ERRORS = {code: FRAME_ERRORS.labels(code) for code in ERROR_CODES}
_FRAME_ERRORS_BY_NUMBER = {im_pb2.ErrorCode.Value(c): child for c, child in _FRAME_ERRORS.items()}
_FRAME_ERROR_UNKNOWN = _FRAME_ERRORS["ERROR_CODE_UNSPECIFIED"]
_LATENCY = {h: SEND_LATENCY.labels(h) for h in _values(Hop)}
_LOGINS = {o: LOGINS.labels(o) for o in _values(LoginOutcome)}
_WEBHOOKS = {o: WEBHOOKS.labels(o) for o in _values(WebhookOutcome)}
_BEFORE_SEND = {v: BEFORE_SEND.labels(v) for v in _values(BeforeSendVerdict)}


def connection_opened() -> None:
    """A client connection was accepted (no GREET yet)."""
    _UNAUTHENTICATED.inc()


def connection_authenticated() -> None:
    """A connection's GREET was accepted: it moves from unauthenticated to authenticated."""
    _UNAUTHENTICATED.dec()
    _AUTHENTICATED.inc()


def connection_closed(*, authenticated: bool) -> None:
    """A client connection ended, in the state it had reached."""
    (_AUTHENTICATED if authenticated else _UNAUTHENTICATED).dec()


def message(kind: MessageKind, outcome: MessageOutcome) -> None:
    _MESSAGES[kind, outcome].inc()


def message_kind(msg_type: int) -> MessageKind:
    """The ``kind`` label of a wire ``MsgType``."""
    return "file" if msg_type == im_pb2.FILE else "text"


def chat_answered(msg_type: int, refused: int) -> None:
    """The writer's refusal of a chat (``refused``: ID_REUSED, NOT_MEMBER, ...) reached its
    sending device. Accepted chats are counted by the writer (:func:`message`)."""
    if refused:
        _MESSAGES[message_kind(msg_type), "refused"].inc()


def chat_error(msg_type: int, code: int) -> None:
    """A chat was answered with the ERROR ``code`` before it could commit: INTERNAL is a server
    fault (``failed``), anything else a refusal."""
    kind: MessageKind = "file" if msg_type == im_pb2.FILE else "text"
    _MESSAGES[kind, "failed" if code == im_pb2.INTERNAL else "refused"].inc()


def receipt(kind: ReceiptType) -> None:
    _RECEIPTS[kind].inc()


def cursor_moved(cursor_type: int) -> None:
    """A DELIVERED or READ cursor moved (wire ``AckType``); any other type is not counted."""
    child = _CURSOR_RECEIPTS.get(cursor_type)
    if child is not None:
        child.inc()


def frame_error(code: int) -> None:
    """An ERROR frame with wire code ``code`` went to a peer; a number no release of ours
    defines is counted as ERROR_CODE_UNSPECIFIED, so the label set stays closed."""
    _FRAME_ERRORS_BY_NUMBER.get(code, _FRAME_ERROR_UNKNOWN).inc()


def send_latency(hop: Hop, seconds: float) -> None:
    _LATENCY[hop].observe(seconds)


def route_cache_hit() -> None:
    ROUTE_HITS.inc()


def route_cache_miss() -> None:
    ROUTE_MISSES.inc()


def login(outcome: LoginOutcome) -> None:
    _LOGINS[outcome].inc()


def webhook(outcome: WebhookOutcome) -> None:
    _WEBHOOKS[outcome].inc()


def before_send(verdict: BeforeSendVerdict) -> None:
    _BEFORE_SEND[verdict].inc()


def set_process(role: str, node: str) -> None:
    """Name this process in ``im_process_info`` (one series: the previous one is removed)."""
    PROCESS.clear()
    PROCESS.labels(role, node).set(1)


# -- scraped gauges ------------------------------------------------------------------------------

T = TypeVar("T")


class _Sources:
    """The sum, at scrape time, of every live source registered for one gauge child."""

    def __init__(self, child: Gauge) -> None:
        self._lock = threading.Lock()  # scrapes may come from another thread (a test client)
        self._items: list[tuple[weakref.ref[Any], Callable[[Any], float]]] = []
        child.set_function(self.total)

    def add(self, owner: object, read: Callable[[Any], float]) -> None:
        with self._lock:
            self._items.append((weakref.ref(owner), read))

    def total(self) -> float:
        with self._lock:
            self._items = [(ref, read) for ref, read in self._items if ref() is not None]
            live = [(ref(), read) for ref, read in self._items]
        return float(sum(read(owner) for owner, read in live if owner is not None))


_POOL_IN_USE = _Sources(DB_POOL_IN_USE)
_POOL_SIZE = _Sources(DB_POOL_SIZE)
_QUEUES = {q: _Sources(QUEUE_DEPTH.labels(q)) for q in _values(QueueName)}
_LINKS = {p: _Sources(NODE_LINKS.labels(p)) for p in _values(PeerKind)}


def db_pool_source(owner: T, in_use: Callable[[T], float], size: Callable[[T], float]) -> None:
    """Report ``owner``'s pool (``in_use(owner)`` busy of ``size(owner)``) at every scrape, for
    as long as ``owner`` lives; several pools in one process add up."""
    _POOL_IN_USE.add(owner, in_use)
    _POOL_SIZE.add(owner, size)


def queue_depth_source(queue: QueueName, owner: T, depth: Callable[[T], float]) -> None:
    """Report ``depth(owner)`` as ``im_queue_depth{queue=...}`` at every scrape."""
    _QUEUES[queue].add(owner, depth)


def node_links_source(peer: PeerKind, owner: T, count: Callable[[T], float]) -> None:
    """Report ``count(owner)`` as ``im_node_links{peer=...}`` at every scrape."""
    _LINKS[peer].add(owner, count)


def exposition(accept: str = "") -> tuple[bytes, str]:
    """The registry in the format ``accept`` asks for (Prometheus text by default), and its
    content type: what ``GET /metrics`` answers."""
    encoder, content_type = choose_encoder(accept)
    return encoder(REGISTRY), content_type
