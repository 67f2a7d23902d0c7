"""What the bot needs in a server, in one place: the invite link (README) and `imagine-bot doctor`.

Derived from what the code does in a channel. Replies to commands (the "thinking…" message, its
edits, the image, private answers) go through the interaction's webhook and need no permission.
A channel permission is needed only when the bot posts in the channel itself (bot/ui/delivery.py):
a finished image once the command's 15-minute reply window has closed, a failure in that case, and
the moderation log's lines. Those posts need:

- View Channels: to post in a channel at all;
- Send Messages, and Send Messages in Threads when the command was used in a thread;
- Embed Links: the result embed (prompt, size, style, cost);
- Attach Files: the image itself.

Not asked for: Read Message History (the bot never reads or replies to a message; it edits its own
replies through the interaction's webhook), Use Application Commands (a member's permission to run
commands, not the bot's), Manage Messages (Delete removes the bot's own message only).
"""

from __future__ import annotations

import discord

#: discord.Permissions flag -> the name Discord's server settings show
REQUIRED = {
    "view_channel": "View Channels",
    "send_messages": "Send Messages",
    "send_messages_in_threads": "Send Messages in Threads",
    "embed_links": "Embed Links",
    "attach_files": "Attach Files",
}
REQUIRED_PERMISSIONS = discord.Permissions(**dict.fromkeys(REQUIRED, True))
INVITE_SCOPES = ("bot", "applications.commands")


def invite_url(application_id: int | str) -> str:
    """The link that adds the bot to a server with its slash commands and exactly these permissions."""
    return discord.utils.oauth_url(application_id, permissions=REQUIRED_PERMISSIONS, scopes=INVITE_SCOPES)


def missing_permissions(granted: discord.Permissions, *, owner: bool = False) -> list[str]:
    """The required permissions `granted` lacks, by their Discord names (none for an owner or an
    administrator, who have every permission)."""
    if owner or granted.administrator:
        return []
    return [name for flag, name in REQUIRED.items() if not getattr(granted, flag)]
