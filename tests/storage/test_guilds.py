"""GuildStore on a real SQLite file: allowed channels and role limits, one statement per change."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bot.limits import GuildPolicy, RoleLimit
from bot.storage.connect import open_store
from bot.storage.db import SqliteStore
from bot.storage.guilds import GuildStore
from bot.storage.migrations import MIGRATIONS

GUILD, OTHER_GUILD = 1, 2
DEFAULTS = GuildPolicy(
    user_daily_limit=3, user_monthly_limit=40, cooldown_s=0, daily_budget_fen=None, monthly_budget_fen=None
)


async def test_channels_and_role_limits_kept_in_settings_json_move_to_their_tables(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = await SqliteStore.open(path, migrations=[m for m in MIGRATIONS if m.version <= 5])
    before = {
        GUILD: {
            "user_daily_limit": 5,
            "log_channel_id": 555,
            "allowed_channels": [77, 78],
            "role_limits": {
                "700": {"daily": 50},  # the month follows the guild's limit
                "701": {"daily": None, "monthly": None},  # unlimited both
                "702": {"daily": 1, "monthly": 9},
                "703": {"monthly": 2},  # (not written by the bot, but possible) the day follows the guild
            },
        },
        OTHER_GUILD: {"allowed_channels": [], "role_limits": {}, "timezone": "Asia/Shanghai"},
    }
    for guild_id, overrides in before.items():
        await old.write(
            "INSERT INTO guild_settings (guild_id, settings_json, updated_at) VALUES (?, ?, ?)",
            (guild_id, json.dumps(overrides), old.now()),
        )
    await old.close()

    store = await SqliteStore.open(path)
    try:
        guilds = GuildStore(store)
        assert await guilds.overrides(GUILD) == before[GUILD]
        assert await guilds.overrides(OTHER_GUILD) == {"timezone": "Asia/Shanghai"}  # empty lists: nothing set
        policy = DEFAULTS.with_overrides(await guilds.overrides(GUILD))
        assert policy.allowed_channels == frozenset({77, 78})
        assert dict(policy.role_limits) == {
            700: RoleLimit(50, 40),
            701: RoleLimit(None, None),
            702: RoleLimit(1, 9),
            703: RoleLimit(5, 2),
        }
        row = await store.fetch_one("SELECT settings_json FROM guild_settings WHERE guild_id = ?", (GUILD,))
        assert json.loads(row[0]) == {"user_daily_limit": 5, "log_channel_id": 555}  # no second copy left behind
    finally:
        await store.close()


@pytest.mark.both_backends
async def test_update_overrides_still_replaces_a_whole_collection(database_url: str) -> None:
    store = await open_store(database_url)
    try:
        guilds = GuildStore(store)
        await guilds.update_overrides(GUILD, {"allowed_channels": [1, 2], "role_limits": {"9": {"daily": 1}}}, actor=1)
        await guilds.update_overrides(GUILD, {"allowed_channels": [3], "user_daily_limit": 4}, actor=1)
        assert await guilds.overrides(GUILD) == {
            "allowed_channels": [3],
            "role_limits": {"9": {"daily": 1}},
            "user_daily_limit": 4,
        }
        await guilds.update_overrides(GUILD, {}, actor=1, remove=("allowed_channels", "role_limits"))
        assert await guilds.overrides(GUILD) == {"user_daily_limit": 4}
        assert await guilds.overrides(OTHER_GUILD) == {}
    finally:
        await store.close()
