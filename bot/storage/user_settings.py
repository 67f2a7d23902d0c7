"""A user's personal defaults (/settings): style, size, prompt_extend, watermark and private.

One row per Discord user, the same in every server; a NULL column is "not set" (the command's
own default applies). An explicit option on a command always wins over these (bot/requests.py).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from bot.storage.db import Store

#: the columns a user can set, in the order /settings shows them
SETTING_NAMES = ("style", "size", "prompt_extend", "watermark", "private")


@dataclass(frozen=True, slots=True)
class UserDefaults:
    style: str | None = None
    size: str | None = None
    prompt_extend: bool | None = None
    watermark: bool | None = None
    private: bool | None = None

    @property
    def empty(self) -> bool:
        return all(getattr(self, f.name) is None for f in fields(self))

    def merged(self, changes: UserDefaults, *, clear: tuple[str, ...] = ()) -> UserDefaults:
        """These defaults with the values `changes` sets, and the names in `clear` unset."""
        values = {f.name: getattr(changes, f.name) for f in fields(changes) if getattr(changes, f.name) is not None}
        values.update(dict.fromkeys(clear))
        return replace(self, **values)


NO_DEFAULTS = UserDefaults()


class UserSettingsStore:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def get(self, user_id: int) -> UserDefaults:
        row = await self._store.fetch_one(
            "SELECT style, size, prompt_extend, watermark, is_private FROM user_settings WHERE user_id = ?", (user_id,)
        )
        if row is None:
            return NO_DEFAULTS
        return UserDefaults(
            style=row["style"],
            size=row["size"],
            prompt_extend=_flag(row["prompt_extend"]),
            watermark=_flag(row["watermark"]),
            private=_flag(row["is_private"]),
        )

    async def put(self, user_id: int, defaults: UserDefaults) -> None:
        """Replace the user's defaults whole; all of them unset removes the row."""
        if defaults.empty:
            await self._store.write("DELETE FROM user_settings WHERE user_id = ?", (user_id,))
            return
        await self._store.write(
            """
            INSERT INTO user_settings (user_id, style, size, prompt_extend, watermark, is_private, updated_at)
            VALUES (?, ?, ?, ?, ?, ?, ?)
            ON CONFLICT (user_id) DO UPDATE SET style = excluded.style, size = excluded.size,
                prompt_extend = excluded.prompt_extend, watermark = excluded.watermark,
                is_private = excluded.is_private, updated_at = excluded.updated_at
            """,
            (
                user_id,
                defaults.style,
                defaults.size,
                _int(defaults.prompt_extend),
                _int(defaults.watermark),
                _int(defaults.private),
                self._store.now(),
            ),
        )


def _flag(value: int | None) -> bool | None:
    return None if value is None else bool(value)


def _int(value: bool | None) -> int | None:
    return None if value is None else int(value)
