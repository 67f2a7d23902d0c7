"""/imagine-admin: limits, budgets, moderation, reports and the bot's status, for server admins.

The group is visible only to members with Manage Server by default
(`default_permissions`), and checked again at run time because server owners can change who
sees a command. Every change is answered privately and posted to the moderation log channel.
"""

from __future__ import annotations

import io
from datetime import timedelta
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.app_commands import Choice, Range, locale_str
from discord.ext import commands

from bot.admin import parse_cny, parse_count
from bot.i18n import items, say, t
from bot.ui import flow, render, render_admin

if TYPE_CHECKING:
    from bot.app import ImagineBot


class Admin(commands.Cog):
    admin = app_commands.Group(
        name="imagine-admin",
        description="Limits, budgets, moderation and reports for imagine-bot",
        default_permissions=discord.Permissions(manage_guild=True),
        guild_only=True,
    )
    limits = app_commands.Group(name="limits", description="Per-user limits, budgets, cooldown", parent=admin)
    rules = app_commands.Group(name="rules", description="Words and patterns refused in prompts", parent=admin)
    channels = app_commands.Group(name="channels", description="Where images may be made", parent=admin)

    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        """Checked for every command of this cog, subgroups included (a group's own check is not).

        Discord hides the group from non-admins by default, but a server can re-grant it. An
        admin's command is acknowledged privately at once, before any database work or regex
        vetting (Discord's 3-second rule); every answer then edits that private reply.
        """
        if not (interaction.guild_id and interaction.permissions.manage_guild):
            return False
        await interaction.response.defer(ephemeral=True, thinking=True)
        return True

    @property
    def _admin(self):
        assert self.bot.pipeline is not None
        return self.bot.pipeline.admin

    async def _changed(self, interaction: discord.Interaction, text: str) -> None:
        """Answer the admin privately (in their language) and tell the moderation log (in the server's)."""
        await _answer(interaction, content=say(flow.locale_of(interaction), text))
        assert interaction.guild_id is not None
        server = flow.guild_locale_of(interaction)
        await self.bot.service.post_to_mod_log(interaction.guild_id, f"⚙️ {say(server, text)}")

    # -- limits ---------------------------------------------------------------------------------
    @limits.command(name="show", description="The limits in force in this server")
    async def limits_show(self, interaction: discord.Interaction) -> None:
        policy = await self._admin.policy(interaction.guild_id)
        await _answer(interaction, embed=render_admin.limits_embed(policy, flow.locale_of(interaction)))

    @limits.command(name="set", description="Change this server's limits (numbers, or 'unlimited')")
    @app_commands.describe(
        daily="Images per user per day (or 'unlimited')",
        monthly="Images per user per month (or 'unlimited')",
        cooldown="Seconds between one user's requests",
        daily_budget="CNY this server may spend per day (or 'none')",
        monthly_budget="CNY this server may spend per month (or 'none')",
        timezone="Where days and months roll over, e.g. Asia/Shanghai",
    )
    async def limits_set(
        self,
        interaction: discord.Interaction,
        daily: str | None = None,
        monthly: str | None = None,
        cooldown: Range[int, 0, 86400] | None = None,
        daily_budget: str | None = None,
        monthly_budget: str | None = None,
        timezone: str | None = None,
    ) -> None:
        changes: dict[str, object] = {}
        if daily is not None:
            changes["daily"] = parse_count(daily)
        if monthly is not None:
            changes["monthly"] = parse_count(monthly)
        if cooldown is not None:
            changes["cooldown_s"] = cooldown
        if daily_budget is not None:
            changes["daily_budget_fen"] = parse_cny(daily_budget)
        if monthly_budget is not None:
            changes["monthly_budget_fen"] = parse_cny(monthly_budget)
        if timezone is not None:
            changes["timezone"] = timezone.strip()
        text = await self._admin.set_limits(interaction.guild_id, interaction.user.id, **changes)
        await self._changed(interaction, text)

    @limits.command(name="role", description="Override the image limits for members with a role")
    @app_commands.describe(
        role="The role whose members get these limits",
        daily="Images a day (or 'unlimited')",
        monthly="Images a month (or 'unlimited'); empty: the server's monthly limit",
    )
    async def limits_role(
        self, interaction: discord.Interaction, role: discord.Role, daily: str, monthly: str | None = None
    ) -> None:
        extra = {"monthly": parse_count(monthly)} if monthly is not None else {}
        text = await self._admin.set_role_limit(
            interaction.guild_id,
            interaction.user.id,
            role.id,
            daily=parse_count(daily),
            **extra,
        )
        await self._changed(interaction, text)

    @limits.command(name="clear-role", description="Remove a role's override")
    @app_commands.describe(role="The role to give the server's limits again")
    async def limits_clear_role(self, interaction: discord.Interaction, role: discord.Role) -> None:
        await self._changed(
            interaction,
            await self._admin.clear_role_limit(interaction.guild_id, interaction.user.id, role.id),
        )

    # -- blocks ---------------------------------------------------------------------------------
    @admin.command(name="block", description="Stop a member from generating images")
    @app_commands.describe(
        user="The member to block", reason="Told to the member", hours="How long (empty: until unblocked)"
    )
    async def block(
        self,
        interaction: discord.Interaction,
        user: discord.User,
        reason: Range[str, 1, 200],
        hours: Range[int, 1, 24 * 365] | None = None,
    ) -> None:
        duration = timedelta(hours=hours) if hours else None
        text = await self._admin.block(interaction.guild_id, interaction.user.id, user.id, reason, duration)
        await self._changed(interaction, text)

    @admin.command(name="unblock", description="Let a blocked member generate images again")
    @app_commands.describe(user="The member to unblock")
    async def unblock(self, interaction: discord.Interaction, user: discord.User) -> None:
        await self._changed(interaction, await self._admin.unblock(interaction.guild_id, interaction.user.id, user.id))

    @admin.command(name="blocks", description="Who is blocked, why, and until when")
    async def blocks(self, interaction: discord.Interaction) -> None:
        blocks = await self._admin.blocks(interaction.guild_id)
        timezone = (await self._admin.policy(interaction.guild_id)).timezone
        await _answer(interaction, embed=render_admin.blocks_embed(blocks, flow.locale_of(interaction), timezone))

    # -- prompt rules ---------------------------------------------------------------------------
    @rules.command(name="add", description="Refuse prompts containing a word or matching a pattern")
    @app_commands.describe(
        kind="word: the word in any case, spacing or full-width form; regex: a regular expression",
        pattern="The word or the regular expression",
        reason="What a refused member is told",
    )
    @app_commands.choices(
        kind=[
            Choice(name=locale_str("word", key="choice.kind.word"), value="word"),
            Choice(name=locale_str("regex", key="choice.kind.regex"), value="regex"),
        ]
    )
    async def rules_add(
        self,
        interaction: discord.Interaction,
        kind: Choice[str],
        pattern: Range[str, 1, 200],
        reason: Range[str, 1, 200],
    ) -> None:
        _, text = await self._admin.add_rule(
            interaction.guild_id,
            interaction.user.id,
            kind.value,
            pattern,
            reason,  # type: ignore[arg-type]
        )
        await self._changed(interaction, text)

    @rules.command(name="remove", description="Remove a prompt rule by its number")
    @app_commands.describe(rule="The rule's number, as /imagine-admin rules list shows it")
    async def rules_remove(self, interaction: discord.Interaction, rule: int) -> None:
        await self._changed(interaction, await self._admin.remove_rule(interaction.guild_id, interaction.user.id, rule))

    @rules.command(name="list", description="This server's prompt rules")
    async def rules_list(self, interaction: discord.Interaction) -> None:
        rules = await self._admin.rules(interaction.guild_id)
        await _answer(interaction, embed=render_admin.rules_embed(rules, flow.locale_of(interaction)))

    # -- channels and the log -------------------------------------------------------------------
    @channels.command(name="allow", description="Allow images in a channel (then only allowed channels work)")
    @app_commands.describe(channel="The channel to allow")
    async def channels_allow(self, interaction: discord.Interaction, channel: discord.TextChannel) -> None:
        text = await self._admin.allow_channel(interaction.guild_id, interaction.user.id, channel.id, True)
        await self._changed(interaction, text)

    @channels.command(name="disallow", description="Remove a channel from the allowed list")
    @app_commands.describe(channel="The channel to remove")
    async def channels_disallow(self, interaction: discord.Interaction, channel: discord.TextChannel) -> None:
        text = await self._admin.allow_channel(interaction.guild_id, interaction.user.id, channel.id, False)
        await self._changed(interaction, text)

    @channels.command(name="list", description="Where images may be made")
    async def channels_list(self, interaction: discord.Interaction) -> None:
        policy = await self._admin.policy(interaction.guild_id)
        locale = flow.locale_of(interaction)
        channels = [f"<#{c}>" for c in sorted(policy.allowed_channels)]
        listed = t(locale, "channels.listed", channels=items(channels)) if channels else t(locale, "channels.every")
        await _answer(interaction, content=listed)

    @admin.command(name="log-channel", description="Where refusals, blocks and changes are posted (empty: off)")
    @app_commands.describe(channel="The moderation log channel (empty: no log)")
    async def log_channel(self, interaction: discord.Interaction, channel: discord.TextChannel | None = None) -> None:
        text = await self._admin.set_log_channel(
            interaction.guild_id, interaction.user.id, channel.id if channel else None
        )
        await self._changed(interaction, text)

    @admin.command(name="cache", description="Reuse images of identical requests (free), and whether reuse counts")
    @app_commands.describe(
        enabled="Answer an identical request from the cache instead of paying again",
        counts_toward_limits="Whether an image from the cache counts toward a member's image limits",
    )
    async def cache(
        self,
        interaction: discord.Interaction,
        enabled: bool | None = None,
        counts_toward_limits: bool | None = None,
    ) -> None:
        text = await self._admin.set_cache(
            interaction.guild_id, interaction.user.id, enabled=enabled, counts=counts_toward_limits
        )
        await self._changed(interaction, text)

    # -- status ---------------------------------------------------------------------------------
    @admin.command(name="status", description="Uptime, this server's queue, the upstream's health, today's spend")
    async def status(self, interaction: discord.Interaction) -> None:
        assert self.bot.pipeline is not None and interaction.guild_id is not None
        status = await self.bot.pipeline.status.guild(interaction.guild_id, flow.requester_of(interaction).requester)
        locale = flow.locale_of(interaction)
        shards = self._shards(interaction.guild_id, locale)
        await _answer(interaction, embed=render_admin.status_embed(status, shards, locale))

    def _shards(self, guild_id: int, locale: str) -> str:
        """This process's shards (the ones it connects) and the one this server's events arrive on."""
        listed = items(str(i) for i in sorted(self.bot.shards)) if self.bot.shards else t(locale, "common.none")
        count, mine = self.bot.shard_count or 1, self.bot.shard_of(guild_id)
        key = "status.shard" if len(self.bot.shards) == 1 else "status.shards"
        return t(locale, key, listed=listed, count=count, mine=mine)

    # -- usage, reports, export -----------------------------------------------------------------
    @admin.command(name="reset", description="Give a member back today's images")
    @app_commands.describe(user="The member whose images today are given back")
    async def reset(self, interaction: discord.Interaction, user: discord.User) -> None:
        await self._changed(
            interaction, await self._admin.reset_today(interaction.guild_id, interaction.user.id, user.id)
        )

    @admin.command(name="report", description="Top users, spend, failures and refusals over a period")
    @app_commands.describe(days="How many days back (default 7)")
    async def report(self, interaction: discord.Interaction, days: Range[int, 1, 366] = 7) -> None:
        report = await self._admin.report(interaction.guild_id, days)
        timezone = (await self._admin.policy(interaction.guild_id)).timezone
        embed = render_admin.report_embed(report, days, flow.locale_of(interaction), timezone)
        await _answer(interaction, embed=embed)

    @admin.command(name="export", description="This server's ledger as a CSV file")
    @app_commands.describe(days="How many days back (default 30)")
    async def export(self, interaction: discord.Interaction, days: Range[int, 1, 366] = 30) -> None:
        data = await self._admin.export_csv(interaction.guild_id, days)
        name = f"imagine-ledger-{interaction.guild_id}-{days}d.csv"
        await _answer(
            interaction,
            content=t(flow.locale_of(interaction), "export.ledger", days=days),
            attachments=[discord.File(io.BytesIO(data), filename=name)],
        )


async def _answer(interaction: discord.Interaction, **payload: object) -> None:
    """Replace the private "thinking…" acknowledgement with the answer."""
    await interaction.edit_original_response(allowed_mentions=render.NO_PINGS, **payload)  # type: ignore[arg-type]


async def setup(bot: ImagineBot) -> None:
    await bot.add_cog(Admin(bot))
