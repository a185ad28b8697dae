"""Message id slots: each (user, device) that logs in holds one of 64 slots, 0..63.

The slot goes into the device's token and into every message id it makes (common/ids.py), so
ids are unique per sender across its devices by construction: two devices never share a slot
while both could be online.

Rules kept here:
- a device keeps its slot across logins (the row stays; ``last_used`` is the last login);
- a new device takes the lowest free slot (a random free one after losing a race to it);
- with all 64 taken, the least recently used slot whose last login is older than the token
  lifetime is handed over: no token naming it can still be valid, so its old device can't GREET
  with it any more (it gets a slot again at its next login). If every slot was used within the
  token lifetime the login is refused (:class:`SlotsExhausted`, REST answers 409);
- concurrent logins are safe: a slot is taken by an insert-if-new or a compare-and-set update,
  and the loser tries again.

The table ``im_device_slot`` is the component ``devices`` of :func:`common.db.apply_migrations`
(``im migrate``; the embedded SQLite file migrates itself at start).
"""

from __future__ import annotations

import random
import time

from common.db import Database, apply_migrations, require_schema
from common.errors import BackendError, ConfigError
from common.ids import SLOTS

COMPONENT = "devices"
ATTEMPTS = 16  # a login that loses this many races in a row gives up (503)

_TABLE = (
    "CREATE TABLE IF NOT EXISTS im_device_slot ("
    " user_id VARCHAR(64) NOT NULL,"
    " device_id VARCHAR(64) NOT NULL,"
    " slot INT NOT NULL,"
    " last_used BIGINT NOT NULL,"
    " PRIMARY KEY (user_id, device_id),"
    " UNIQUE (user_id, slot))"
)
_STEPS: dict[str, list[list[str]]] = {
    "sqlite": [[_TABLE]],
    "mysql": [[_TABLE + " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"]],
}
_INSERT = {
    "sqlite": "INSERT OR IGNORE INTO im_device_slot (user_id, device_id, slot, last_used)"
    " VALUES (?, ?, ?, ?)",
    # only a duplicate key is ignored (counts 0); INSERT IGNORE would also truncate bad data
    "mysql": "INSERT INTO im_device_slot (user_id, device_id, slot, last_used)"
    " VALUES (?, ?, ?, ?) ON DUPLICATE KEY UPDATE slot = slot",
}


class SlotsExhausted(Exception):
    """All 64 slots of the user were used by logins within the token lifetime."""


def device_key(device_id: str) -> str:
    """The device a token names, as the connector sees it (no device: ``default``)."""
    return device_id or "default"


class DeviceSlots:
    def __init__(self, db: Database, *, auto_migrate: bool = False) -> None:
        """``auto_migrate``: create the table at first use (an app built over a store the
        caller migrated without it, e.g. in tests); a deployment migrates it up front."""
        if db.dialect not in _STEPS:
            raise ConfigError(f"device slots: unsupported SQL dialect {db.dialect!r}")
        self._db = db
        self._auto = auto_migrate
        self._ready = False

    async def migrate(self) -> None:
        """Create or upgrade ``im_device_slot``; safe to run twice, and from two processes."""
        await apply_migrations(self._db, COMPONENT, _STEPS[self._db.dialect])
        self._ready = True

    async def check_schema(self) -> None:
        await require_schema(self._db, COMPONENT, len(_STEPS[self._db.dialect]))
        self._ready = True

    async def slot_for(self, user_id: str, device_id: str, stale_after: float) -> int:
        """The device's slot, allocated at its first login; marks it used now. ``stale_after``
        (seconds, the token lifetime) is how long a slot stays its device's after a login."""
        if self._auto and not self._ready:
            await self.migrate()
        device = device_key(device_id)
        for attempt in range(ATTEMPTS):
            now = int(time.time())
            rows = await self._db.fetchall(
                "SELECT slot, device_id, last_used FROM im_device_slot WHERE user_id = ?",
                (user_id,),
            )
            mine = [int(slot) for slot, dev, _ in rows if dev == device]
            if mine:
                await self._db.execute(
                    "UPDATE im_device_slot SET last_used = ?"
                    " WHERE user_id = ? AND device_id = ? AND last_used < ?",
                    (now, user_id, device, now),
                )
                return mine[0]
            taken = {int(slot) for slot, _, _ in rows}
            free_slots = [s for s in range(SLOTS) if s not in taken]
            if free_slots:
                # logins of one user at once all want the lowest: spread the ones that lost
                free = random.choice(free_slots) if attempt else free_slots[0]
                added = await self._db.execute(
                    _INSERT[self._db.dialect], (user_id, device, free, now)
                )
                if added == 1:
                    return free
                continue  # another login took that slot (or this device) meanwhile
            oldest = min(rows, key=lambda r: int(r[2]))
            slot, old_device, last_used = int(oldest[0]), str(oldest[1]), int(oldest[2])
            if last_used > now - stale_after:
                raise SlotsExhausted(
                    f"{SLOTS} devices of {user_id} logged in within the token lifetime"
                )
            moved = await self._db.execute(
                "UPDATE im_device_slot SET device_id = ?, last_used = ?"
                " WHERE user_id = ? AND slot = ? AND device_id = ? AND last_used = ?",
                (device, now, user_id, slot, old_device, last_used),
            )
            if moved == 1:
                return slot
        raise BackendError("devices", f"no slot for {user_id}/{device}: too many races")
