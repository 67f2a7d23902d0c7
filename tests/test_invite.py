"""The permissions the bot asks for live in bot/invite.py; the README's invite link is that set."""

from __future__ import annotations

from pathlib import Path

import discord

from bot.invite import REQUIRED, REQUIRED_PERMISSIONS, invite_url, missing_permissions

README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_readme_invites_with_exactly_the_required_permissions() -> None:
    readme = " ".join(README.read_text(encoding="utf-8").split())
    assert invite_url("<APPLICATION ID>") in readme
    assert f"{', '.join(REQUIRED.values())} (permission integer `{REQUIRED_PERMISSIONS.value}`)" in readme


def test_missing_permissions_are_named_as_discord_shows_them() -> None:
    assert missing_permissions(discord.Permissions(view_channel=True, send_messages=True)) == [
        "Send Messages in Threads",
        "Embed Links",
        "Attach Files",
    ]
    assert missing_permissions(REQUIRED_PERMISSIONS) == []
    assert missing_permissions(discord.Permissions(administrator=True)) == []
    assert missing_permissions(discord.Permissions.none(), owner=True) == []


def test_the_invite_asks_for_the_commands_scope_and_these_permissions() -> None:
    assert invite_url(42) == (
        f"https://discord.com/oauth2/authorize?client_id=42&scope=bot+applications.commands"
        f"&permissions={REQUIRED_PERMISSIONS.value}"
    )
