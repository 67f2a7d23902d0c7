"""The loopback fake Discord works with the real discord.py client (a tiny bot defined here)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import discord
import pytest
from discord import app_commands
from discord.ext import commands

from tests.fakes.fake_discord import FakeDiscord, FakeGuild, shard_of

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(range(64))
REPO = Path(__file__).resolve().parents[2]


class ImageButton(discord.ui.DynamicItem[discord.ui.Button], template=r"img:(?P<action>info|delete):(?P<job>\d+)"):
    def __init__(self, action: str, job: int) -> None:
        super().__init__(discord.ui.Button(label=action, custom_id=f"img:{action}:{job}"))
        self.action, self.job = action, job

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button, match: Any) -> ImageButton:
        return cls(match["action"], int(match["job"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        interaction.client.seen.append(("click", self.action, self.job))
        if self.action == "info":
            await interaction.response.send_message(f"job {self.job}", ephemeral=True)
        else:
            await interaction.response.defer()
            await interaction.delete_original_response()


class Updater(discord.ui.View):
    @discord.ui.button(label="update", custom_id="update")
    async def update(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        await interaction.response.edit_message(content="updated", attachments=[], view=None)


class AskModal(discord.ui.Modal, title="Ask"):
    question = discord.ui.TextInput(label="Question", custom_id="q")

    def __init__(self) -> None:
        super().__init__(custom_id="ask-modal")

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message(f"asked {self.question.value}")


class TinyBot(commands.Bot):
    def __init__(self) -> None:
        intents = discord.Intents.none()
        intents.guilds = True
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents,
            help_command=None,
            guild_ready_timeout=0.05,
        )
        self.seen: list[tuple[Any, ...]] = []
        self.errors: list[BaseException] = []
        self.pending: asyncio.Queue[discord.Interaction] = asyncio.Queue()
        self.add_dynamic_items(ImageButton)

        @self.tree.command(description="Say hello with a picture")
        async def hello(interaction: discord.Interaction, text: str) -> None:
            self.seen.append(("hello", text, interaction.guild is None, type(interaction.channel).__name__))
            await interaction.response.defer(thinking=True)
            view = discord.ui.View(timeout=None)
            view.add_item(ImageButton("info", 42))
            view.add_item(ImageButton("delete", 42))
            await interaction.edit_original_response(
                content=f"hello {text}",
                attachments=[discord.File(io.BytesIO(PNG), "x.png")],
                embed=discord.Embed(title="result", description=text),
                view=view,
                allowed_mentions=discord.AllowedMentions.none(),
            )

        @self.tree.command(description="Defer, and leave the rest to the test")
        async def later(interaction: discord.Interaction) -> None:
            await interaction.response.defer()
            await self.pending.put(interaction)

        @self.tree.command(description="Reply with a file, a button and an ephemeral followup")
        async def multi(interaction: discord.Interaction) -> None:
            await interaction.response.send_message(
                "first", file=discord.File(io.BytesIO(b"a"), "a.txt"), view=Updater()
            )
            await interaction.followup.send("second", ephemeral=True, file=discord.File(io.BytesIO(b"b"), "b.txt"))
            self.seen.append(("original", (await interaction.original_response()).content))

        @self.tree.command(description="Ask with a modal")
        async def ask(interaction: discord.Interaction) -> None:
            await interaction.response.send_modal(AskModal())

        @self.tree.error
        async def on_app_command_error(interaction: discord.Interaction, error: app_commands.AppCommandError):
            self.errors.append(error)


@pytest.fixture
def fake() -> Any:
    fake = FakeDiscord().start()
    restore = fake.point_discord_py_here()
    yield fake
    restore()
    fake.stop()


class ShardedBot(commands.AutoShardedBot):
    """An AutoShardedBot with one command that says which shard its guild is on."""

    def __init__(self, **shards: Any) -> None:
        intents = discord.Intents.none()
        intents.guilds = True
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents,
            help_command=None,
            guild_ready_timeout=0.05,
            **shards,
        )
        self.seen: list[tuple[int, int]] = []  # (guild id or 0 for a DM, shard id)
        self.errors: list[BaseException] = []

        @self.tree.command(description="Which shard am I on?")
        async def where(interaction: discord.Interaction) -> None:
            shard = interaction.guild.shard_id if interaction.guild is not None else 0
            self.seen.append((interaction.guild_id or 0, shard))
            await interaction.response.send_message(f"shard {shard}")


@contextlib.asynccontextmanager
async def running(fake: FakeDiscord, bot: Any = None) -> AsyncIterator[Any]:
    bot = bot or TinyBot()
    task = asyncio.create_task(bot.start(fake.bot_token))
    try:
        for _ in range(1000):
            if bot.is_ready():
                break
            if task.done():
                task.result()  # raises why the bot stopped
            await asyncio.sleep(0.01)
        assert bot.is_ready(), "the bot did not become ready within 10 s"
        yield bot
    finally:
        await bot.close()
        await asyncio.wait_for(task, 10)
    assert not bot.errors


async def edited_original(fake: FakeDiscord, interaction_id: int) -> Any:
    return await fake.wait_for(lambda f: (m := f.original_message(interaction_id)) is not None and m.edits and m)


async def test_slash_defer_edit_with_file_embed_view_then_buttons(fake: FakeDiscord) -> None:
    async with running(fake) as bot:
        assert bot.get_channel(fake.channel_id) is not None
        assert bot.get_guild(fake.guild_id).me is not None
        assert bot.user.id == fake.bot_user_id and bot.application_id == fake.application_id

        sent = fake.send_slash("hello", {"text": "world"}, user_id=1234, roles=[99])
        msg = await edited_original(fake, sent.id)
        assert fake.callbacks(sent.id) == [5]
        assert msg.content == "hello world" and not msg.loading and not msg.ephemeral
        assert [(a["filename"], a["bytes"], a["content_type"]) for a in msg.attachments] == [
            ("x.png", PNG, "image/png")
        ]
        assert msg.embeds[0]["title"] == "result"
        assert msg.custom_ids() == ["img:info:42", "img:delete:42"]
        assert msg.allowed_mentions == {"parse": []}
        assert msg.interaction_id == sent.id and msg.channel_id == fake.channel_id
        assert bot.seen == [("hello", "world", False, "TextChannel")]

        info = fake.click(msg.id, "img:info:42", user_id=1234)
        reply = await fake.wait_for(lambda f: f.original_message(info.id))
        assert reply.ephemeral and reply.content == "job 42" and fake.callbacks(info.id) == [4]

        delete = fake.click(msg.id, "img:delete:42")
        await fake.wait_for(lambda f: f.message(msg.id).deleted)
        assert fake.callbacks(delete.id) == [6]
        assert bot.seen[1:] == [("click", "info", 42), ("click", "delete", 42)]

        # A second callback for the same interaction is refused, as Discord does.
        async with aiohttp.ClientSession() as http:
            url = f"{fake.api_base}/interactions/{sent.id}/{sent.token}/callback?with_response=1"
            async with http.post(url, json={"type": 5}) as resp:
                assert resp.status == 400 and (await resp.json())["code"] == 40060
    assert not fake.unexpected_requests


async def test_message_reply_followup_update_and_modal(fake: FakeDiscord) -> None:
    async with running(fake) as bot:
        sent = fake.send_slash("multi")
        followup = (await fake.wait_for(lambda f: f.followups(sent.id)))[0]
        first = fake.original_message(sent.id)
        assert fake.callbacks(sent.id) == [4]
        assert (first.content, [a["bytes"] for a in first.attachments], first.custom_ids()) == (
            "first",
            [b"a"],
            ["update"],
        )
        assert followup.ephemeral and followup.attachments[0]["filename"] == "b.txt"
        await fake.wait_for(lambda f: len(bot.seen) == 1)
        assert bot.seen == [("original", "first")]

        click = fake.click(first.id, "update")
        updated = await fake.wait_for(lambda f: (m := f.message(first.id)).edits and m)
        assert fake.callbacks(click.id) == [7] and fake.original_message(click.id).id == first.id
        assert (updated.content, updated.attachments, updated.components) == ("updated", [], [])

        ask = fake.send_slash("ask")
        await fake.wait_for(lambda f: f.callbacks(ask.id) == [9])
        modal = fake.callback_payloads(ask.id)[0]["data"]
        submit = fake.submit_modal(modal["custom_id"], {"q": "why"})
        assert (await fake.wait_for(lambda f: f.original_message(submit.id))).content == "asked why"


async def test_tree_sync_global_and_guild(fake: FakeDiscord) -> None:
    async with running(fake) as bot:
        synced = await bot.tree.sync()
        assert sorted(c.name for c in synced) == ["ask", "hello", "later", "multi"]
        assert {c.id for c in synced} == {int(c["id"]) for c in fake.synced_commands()}
        guild = discord.Object(fake.guild_id)
        bot.tree.copy_global_to(guild=guild)
        guild_synced = await bot.tree.sync(guild=guild)
        assert fake.sync_count == 2 and len(guild_synced) == 4
        stored = fake.synced_commands(fake.guild_id)
        assert {c["guild_id"] for c in stored} == {str(fake.guild_id)}
        assert next(c for c in stored if c["name"] == "hello")["options"][0]["name"] == "text"

        joined = fake.add_guild(name="Joined later")  # a GUILD_CREATE to the connected bot
        await fake.wait_for(lambda f: bot.get_guild(joined.id))
        assert bot.get_channel(joined.channel_ids[1]) is not None

        sent = fake.send_slash("hello", {"text": "guild"})
        assert sent.payload["data"]["guild_id"] == str(fake.guild_id)
        assert sent.payload["data"]["id"] in {c["id"] for c in stored}
        assert (await edited_original(fake, sent.id)).content == "hello guild"


async def test_expired_token_then_channel_send_with_nonce(fake: FakeDiscord) -> None:
    async with running(fake) as bot:
        sent = fake.send_slash("later")
        interaction = await asyncio.wait_for(bot.pending.get(), 10)
        fake.expire_token(sent.id)
        with pytest.raises(discord.HTTPException) as caught:
            await interaction.edit_original_response(content="too late")
        assert caught.value.status == 401 and caught.value.code == 50027

        channel = bot.get_channel(fake.channel_id)
        first = await channel.send("the image is ready", nonce=777)
        second = await channel.send("the image is ready", nonce=777)
        assert first.id == second.id
        plain = [m for m in fake.channel_messages(fake.channel_id) if not m.webhook]
        assert [m.content for m in plain] == ["the image is ready"]
        posts = fake.requests_to("POST", r"^/channels/\d+/messages$")
        assert [r.json["enforce_nonce"] for r in posts] == [True, True]


async def test_control_messages_list_each_create_and_edit_with_its_files(fake: FakeDiscord) -> None:
    async with running(fake) as bot:
        sent = fake.send_slash("later")  # defers: the create uploads nothing
        interaction = await asyncio.wait_for(bot.pending.get(), 10)
        await interaction.edit_original_response(content="working")
        for _ in range(2):  # the image, then the same image again (a delivery retried after a crash)
            await interaction.edit_original_response(attachments=[discord.File(io.BytesIO(PNG), "x.png")])
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{fake.url}/_control/messages") as resp:
                [message] = await resp.json()
    assert message["interaction_id"] == str(sent.id) and message["edits"] == 3
    assert message["history"] == [
        {"op": "create", "files": []},
        {"op": "edit", "files": []},
        {"op": "edit", "files": ["x.png"]},
        {"op": "edit", "files": ["x.png"]},
    ]


async def test_a_followup_right_after_a_public_defer_edits_the_thinking_message_as_documented(
    fake: FakeDiscord,
) -> None:
    async with running(fake) as bot:
        sent = fake.send_slash("later")  # defers publicly ("thinking…")
        interaction = await asyncio.wait_for(bot.pending.get(), 10)
        message = await interaction.followup.send("private?", ephemeral=True, wait=True)
        original = fake.original_message(sent.id)
        assert message.id == original.id  # no new message: the followup edited the deferred one
        assert original.content == "private?" and not original.ephemeral and not original.loading
        assert fake.followups(sent.id) == []
        # once the deferral is resolved, a followup is a new message, and may be ephemeral
        second = await interaction.followup.send("now private", ephemeral=True, wait=True)
        [followup] = fake.followups(sent.id)
        assert (followup.id, followup.ephemeral) == (second.id, True)


async def test_a_followup_after_deleting_the_thinking_message_fails_unknown_message(fake: FakeDiscord) -> None:
    async with running(fake) as bot:
        sent = fake.send_slash("later")
        interaction = await asyncio.wait_for(bot.pending.get(), 10)
        await interaction.delete_original_response()
        with pytest.raises(discord.NotFound) as caught:
            await interaction.followup.send("refused", ephemeral=True)
        assert caught.value.code == 10008  # discord-api-docs #3087: the user is left with nothing
        assert fake.followups(sent.id) == []


async def test_scripted_failures_are_retried_or_raised(fake: FakeDiscord) -> None:
    async with running(fake) as bot:
        fake.send_slash("later")
        interaction = await asyncio.wait_for(bot.pending.get(), 10)

        fake.fail_next("PATCH", r"^/webhooks/\d+/[^/]+/messages/@original$", status=500)
        edited = await interaction.edit_original_response(content="after a 500")
        assert edited.content == "after a 500"
        assert [r.status for r in fake.requests_to("PATCH", "@original")] == [500, 200]

        channel = bot.get_channel(fake.channel_id)
        fake.fail_next("POST", r"^/channels/\d+/messages$", status=429, retry_after=0.1)
        sent = await channel.send("after a 429")
        assert sent.content == "after a 429"
        assert [r.status for r in fake.requests_to("POST", r"^/channels/")] == [429, 200]

        fake.drop_next("POST", r"^/channels/\d+/messages$")
        with pytest.raises(aiohttp.ClientError):
            await channel.send("dropped")
        await channel.send("after a drop")
        statuses = [r.status for r in fake.requests_to("POST", r"^/channels/")]
        assert statuses == [429, 200, 0, 200]
        assert [m.content for m in fake.channel_messages(fake.channel_id) if not m.webhook] == [
            "after a 429",
            "after a drop",
        ]


async def test_dm_slash_has_no_guild(fake: FakeDiscord) -> None:
    async with running(fake) as bot:
        sent = fake.send_dm_slash("hello", {"text": "dm"}, user_id=555)
        msg = await edited_original(fake, sent.id)
        assert bot.seen == [("hello", "dm", True, "DMChannel")]
        assert msg.guild_id is None and msg.channel_id == fake.dm_channel_id(555)
        assert "member" not in sent.payload and sent.payload["user"]["id"] == "555"


async def test_restarted_bot_identifies_again(fake: FakeDiscord) -> None:
    async with running(fake):
        assert fake.identify_count == 1
    async with running(fake):
        await fake.wait_ready(min_identifies=2)
        assert fake.identify_count == 2
        sent = fake.send_slash("hello", {"text": "again"})
        assert (await edited_original(fake, sent.id)).content == "hello again"


async def test_bad_token_fails_login(fake: FakeDiscord) -> None:
    bot = TinyBot()
    try:
        with pytest.raises(discord.LoginFailure):
            await bot.start("not-the-token")
    finally:
        await bot.close()
    assert fake.requests[-1].status == 401 and fake.identify_count == 0


async def test_wire_details_without_a_bot(fake: FakeDiscord) -> None:
    auth = {"Authorization": f"Bot {fake.bot_token}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{fake.api_base}/users/@me", headers=auth) as resp:
            assert resp.status == 200 and resp.headers["Content-Type"] == "application/json"
        async with http.get(f"{fake.api_base}/users/@me") as resp:
            assert resp.status == 401 and await resp.json() == {"message": "401: Unauthorized", "code": 0}
        async with http.get(f"{fake.api_base}/guilds/1/nope", headers=auth) as resp:
            assert resp.status == 404 and (await resp.json())["message"] == "404: Not Found"
        assert [r.path for r in fake.unexpected_requests] == ["/guilds/1/nope"]
        assert fake.requests[0].authorization and "Authorization" not in fake.requests[0].headers

        async with http.ws_connect(fake.gateway_url) as ws:  # wrong token: closed with 4004
            assert (await ws.receive_json())["op"] == 10
            await ws.send_json({"op": 2, "d": {"token": "wrong", "intents": 1}})
            await ws.receive()
            assert ws.close_code == 4004

        ws = await http.ws_connect(fake.gateway_url)
        await ws.receive_json()  # HELLO
        await ws.send_json({"op": 1, "d": None})
        assert (await ws.receive_json())["op"] == 11
        await ws.send_json({"op": 2, "d": {"token": fake.bot_token, "intents": 1}})
        ready = await ws.receive_json()
        assert (ready["t"], ready["s"]) == ("READY", 1)
        assert (await ws.receive_json())["t"] == "GUILD_CREATE"
        await fake.wait_ready()
        await ws.close(code=4000)  # abnormal close: the session can be resumed

        fake.push_event("TYPING_START", {"channel_id": str(fake.channel_id), "user_id": "1"})
        ws = await http.ws_connect(fake.gateway_url)
        await ws.receive_json()
        resume = {"token": fake.bot_token, "session_id": ready["d"]["session_id"], "seq": 2}
        await ws.send_json({"op": 6, "d": resume})
        replayed, resumed = await ws.receive_json(), await ws.receive_json()
        assert (replayed["t"], replayed["s"], resumed["t"]) == ("TYPING_START", 3, "RESUMED")
        await ws.close()  # 1000: the session is over

        async with http.ws_connect(fake.gateway_url) as ws:
            await ws.receive_json()
            await ws.send_json({"op": 6, "d": resume})
            assert await ws.receive_json() == {"op": 9, "d": False, "s": None, "t": None}
    assert fake.identify_count == 1 and fake.resume_count == 1


async def test_the_bots_guilds_over_rest_with_their_permissions_paged(fake: FakeDiscord) -> None:
    """GET /users/@me/guilds, as discord.py's HTTP client asks it (`imagine-bot doctor`): each guild
    with the bot's own server-wide permissions, paged by `after`, ordered by id."""
    second = fake.add_guild(FakeGuild(name="Second", bot_permissions="3072"))
    client = discord.Client(intents=discord.Intents.none())
    async with client:
        await client.login(fake.bot_token)
        first_page = await client.http.get_guilds(1)
        second_page = await client.http.get_guilds(200, after=int(first_page[0]["id"]))
        with pytest.raises(discord.HTTPException) as too_many:
            await client.http.get_guilds(201)
    assert [(g["id"], g["permissions"], g["owner"]) for g in first_page + second_page] == [
        (str(fake.guild_id), "2248473465835073", False),
        (str(second.id), "3072", False),
    ]
    assert too_many.value.status == 400
    assert fake.identify_count == 0  # REST only: no gateway connection


# -- sharding ------------------------------------------------------------------------------------
@pytest.fixture
def sharded() -> Any:
    """A fake Discord with four guilds, two on each shard of two."""
    guilds = [FakeGuild.on_shard(n % 2, 2, name=f"Guild {n}") for n in range(4)]
    fake = FakeDiscord(guilds=guilds).start()
    restore = fake.point_discord_py_here()
    yield fake
    restore()
    fake.stop()


def on_shard(fake: FakeDiscord, shard: int) -> list[int]:
    return [g.id for g in fake.guilds if shard_of(g.id, 2) == shard]


async def answered(fake: FakeDiscord, sent: Any) -> str:
    return (await fake.wait_for(lambda f: f.original_message(sent.id))).content


async def test_an_auto_sharded_client_gets_each_guilds_events_on_its_shard(sharded: FakeDiscord) -> None:
    async with running(sharded, ShardedBot(shard_count=2)) as bot:
        assert sorted(p["shard"] for p in sharded.identify_payloads) == [[0, 2], [1, 2]]
        assert sharded.ready_shards == {(0, 2), (1, 2)}
        sessions = {s.shard: s for s in sharded.sessions}
        for shard in (0, 1):  # READY and GUILD_CREATE: only the shard's own guilds
            assert sorted(sessions[(shard, 2)].guild_ids) == sorted(on_shard(sharded, shard))
        assert {g.id for g in bot.guilds} == {g.id for g in sharded.guilds}

        sent = {gid: sharded.send_slash("where", guild_id=gid) for gid in (g.id for g in sharded.guilds)}
        dm = sharded.send_dm_slash("where", user_id=555)
        for gid, one in sent.items():
            assert await answered(sharded, one) == f"shard {shard_of(gid, 2)}"
        assert await answered(sharded, dm) == "shard 0"
        sessions = {s.shard: s for s in sharded.sessions}
        for shard in (0, 1):  # each interaction went to the session of its guild's shard, DMs to shard 0
            expected = [one.id for gid, one in sent.items() if shard_of(gid, 2) == shard] + (
                [dm.id] if shard == 0 else []
            )
            assert sorted(sessions[(shard, 2)].interaction_ids) == sorted(expected)
        assert sorted(bot.seen) == sorted([(gid, shard_of(gid, 2)) for gid in sent] + [(0, 0)])
    # Given the shard count, discord.py never asks GET /gateway/bot (it connects to DEFAULT_GATEWAY).
    assert sharded.requests_to("GET", r"^/gateway") == []


async def test_two_clients_with_one_shard_each_see_only_their_shards_guilds(sharded: FakeDiscord) -> None:
    async with running(sharded, ShardedBot(shard_count=2, shard_ids=[0])) as first:
        async with running(sharded, ShardedBot(shard_count=2, shard_ids=[1])) as second:
            assert {g.id for g in first.guilds} == set(on_shard(sharded, 0))
            assert {g.id for g in second.guilds} == set(on_shard(sharded, 1))
            sent = [sharded.send_slash("where", guild_id=g.id) for g in sharded.guilds]
            dm = sharded.send_dm_slash("where", user_id=555)
            for one in [*sent, dm]:
                await answered(sharded, one)
            assert sorted(first.seen) == sorted([(gid, 0) for gid in on_shard(sharded, 0)] + [(0, 0)])
            assert sorted(second.seen) == sorted((gid, 1) for gid in on_shard(sharded, 1))

            joined = sharded.add_guild(FakeGuild.on_shard(1, 2, name="Joined later"))  # to shard 1's bot only
            await sharded.wait_for(lambda f: second.get_guild(joined.id))
            assert first.get_guild(joined.id) is None
        # The shard-1 bot is gone (closed with 1000): its guilds' events have nowhere to go.
        await sharded.wait_for(lambda f: [s.replaced for s in f.sessions if s.shard == (1, 2)] == [True])
        with pytest.raises(RuntimeError, match="no bot has identified for the shard"):
            sharded.send_slash("where", guild_id=on_shard(sharded, 1)[0])
        second_guild = sharded.send_slash("where", guild_id=on_shard(sharded, 0)[1])
        assert await answered(sharded, second_guild) == "shard 0"


async def test_sessions_replace_only_their_own_shard_and_a_bad_shard_is_refused(sharded: FakeDiscord) -> None:
    async def identify(http: aiohttp.ClientSession, shard: list[int] | None) -> tuple[Any, list[str]]:
        ws = await http.ws_connect(sharded.gateway_url)
        await ws.receive_json()  # HELLO
        d: dict[str, Any] = {"token": sharded.bot_token, "intents": 1}
        if shard is not None:
            d["shard"] = shard
        await ws.send_json({"op": 2, "d": d})
        ready = await ws.receive_json()
        guilds = [(await ws.receive_json())["d"]["id"] for _ in ready["d"]["guilds"]]
        return ws, guilds

    async with aiohttp.ClientSession() as http:
        first, guilds0 = await identify(http, [0, 2])
        second, guilds1 = await identify(http, [1, 2])
        assert sorted(int(g) for g in guilds0) == sorted(on_shard(sharded, 0))
        assert sorted(int(g) for g in guilds1) == sorted(on_shard(sharded, 1))
        again, _ = await identify(http, [0, 2])  # shard 0 restarted elsewhere: replaces shard 0 only
        assert [(s.shard, s.replaced) for s in sharded.sessions] == [((0, 2), True), ((1, 2), False), ((0, 2), False)]
        whole, guilds = await identify(http, None)  # unsharded: every guild, replaces every shard
        assert sorted(int(g) for g in guilds) == sorted(g.id for g in sharded.guilds)
        assert [s.replaced for s in sharded.sessions] == [True, True, True, False]

        bad = await http.ws_connect(sharded.gateway_url)
        await bad.receive_json()
        await bad.send_json({"op": 2, "d": {"token": sharded.bot_token, "intents": 1, "shard": [2, 2]}})
        await bad.receive()
        assert bad.close_code == 4010
        for ws in (first, second, again, whole, bad):
            await ws.close()
    assert sharded.gateway_connections == 5


async def test_standalone_process() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.fakes.fake_discord",
        "--port",
        "0",
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode().split()
        assert line[0] == "FAKE_DISCORD" and line[1].endswith("/api/v10") and line[2].startswith("ws://")
        root = line[1].removesuffix("/api/v10")
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{line[1]}/gateway") as resp:
                assert (await resp.json())["url"] == line[2]
            async with http.get(f"{root}/_control/state") as resp:
                state = await resp.json()
                assert state["identify_count"] == 0 and len(state["guilds"]) == 1
            async with http.post(f"{root}/_control/slash", data=json.dumps({"name": "x"})) as resp:
                assert resp.status == 409  # no bot connected
            async with http.get(f"{root}/_control/messages") as resp:
                assert await resp.json() == []
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0


async def test_standalone_process_with_more_guilds() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.fakes.fake_discord",
        "--guilds",
        "3",
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode().split()
        root = line[1].removesuffix("/api/v10")
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{root}/_control/state") as resp:
                guilds = (await resp.json())["guilds"]
            assert len({g["id"] for g in guilds}) == 3 and all(len(g["channel_ids"]) == 2 for g in guilds)
            body = {"name": "x", "guild_id": int(guilds[2]["id"])}
            async with http.post(f"{root}/_control/slash", data=json.dumps(body)) as resp:
                assert resp.status == 409  # a known guild: refused only because no bot is connected
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0


class MessageMenuBot(TinyBot):
    """TinyBot plus one message context-menu command that echoes what discord.py read."""

    def __init__(self) -> None:
        super().__init__()
        self.targets: list[discord.Message] = []

        async def quote(interaction: discord.Interaction, message: discord.Message) -> None:
            self.targets.append(message)
            await interaction.response.send_message(message.clean_content or "-")

        self.tree.add_command(discord.app_commands.ContextMenu(name="Quote", callback=quote))


async def test_a_message_command_carries_the_message_it_was_used_on(fake: FakeDiscord) -> None:
    async with running(fake, MessageMenuBot()) as bot:
        sent = fake.send_message_command("Quote", "<@7> hi", author_id=5, mentions=[7], attachments=["a.png"])
        assert (sent.payload["type"], sent.payload["data"]["type"]) == (2, 3)
        reply = await fake.wait_for(lambda f: f.original_message(sent.id))
        [target] = bot.targets
        assert (target.content, target.author.id, [m.id for m in target.mentions]) == ("<@7> hi", 5, [7])
        assert [a.filename for a in target.attachments] == ["a.png"]
        assert reply.content  # answered like any application command
