"""``im admin grant|revoke|list``: who holds the admin role of the admin API (rest_web/admin.py).

Works on the configured database directly, like ``im migrate``, so the first admin can be made
before anyone can call the API. An embedded SQLite database is migrated first; a shared one
must have been migrated (``im migrate``). ``IM_ADMINS`` grants the role too, and is listed.
"""

from __future__ import annotations

from common.config import Settings
from common.db import open_database
from common.userids import BadUserId, canonical_user_id
from rest_web.admin_store import AdminStore
from rest_web.store import UserStore


async def run_admin(settings: Settings, action: str, user: str) -> tuple[int, list[str]]:
    """Exit status and the lines to print."""
    if action != "list" and not user:
        return 2, [f"im admin {action}: name the user"]
    if action != "list":
        try:
            user = canonical_user_id(user)
        except BadUserId as exc:
            return 2, [f"im admin {action}: {exc}"]
    db = await open_database(settings.db_url(), pool_size=1)
    try:
        store = AdminStore(db, settings.admin_ids())
        users = UserStore(db)
        if db.dialect == "sqlite":
            await users.migrate()
            await store.migrate()
        else:
            await users.check_schema()
            await store.check_schema()
        if action == "list":
            lines = [f"{u} (im admin grant)" for u in await store.granted()]
            lines += [f"{u} (IM_ADMINS)" for u in sorted(settings.admin_ids())]
            return 0, lines or ["no admins"]
        if action == "grant":
            if not await users.user_exists(user):
                return 1, [f"no such user: {user}"]
            added = await store.grant(user, "im admin")
            return 0, [f"{user} is an admin" + ("" if added else " (already was)")]
        removed = await store.revoke(user)
        lines = [f"{user} is no longer an admin" if removed else f"{user} held no grant"]
        if user in settings.admin_ids():
            lines.append(f"note: {user} is still an admin through IM_ADMINS")
        return 0, lines
    finally:
        await db.close()
