"""Webhooks: events to an outside receiver, and the one hook that may refuse a message.

A package of its own (not ``common/``) because it is a service with I/O and tasks of its own (an
HTTP client, a bounded queue, workers), used by REST now and by the connector and transfer when
they emit message events, and owning nothing any other package owns; ``common/`` keeps the
pure building blocks. It depends on ``common`` and ``proto`` only, so any service may import it.

- :class:`Webhooks` (hooks/sender.py): ``emit(event, data)``, fire and forget;
- :class:`BeforeSend` (hooks/before_send.py): ``await before_send(data) -> Verdict``;
- hooks/events.py: event names and payload builders; hooks/signing.py: sign and verify.
"""

from hooks import events
from hooks.before_send import BeforeSend, Verdict
from hooks.sender import Webhooks
from hooks.signing import sign, verify

__all__ = ["BeforeSend", "Verdict", "Webhooks", "events", "sign", "verify"]
