"""Large images, end to end: the real ImagineBot (discord.py) against the fake Discord and the fake
image API serving real PNGs padded to a size (real outputs are 2-7 MB; Discord takes up to 10 MiB
by default, more in boosted servers).

An image streams from the upstream into a spool file, is renamed into the image store, and goes to
Discord from that file; what is checked is what reached the fake Discord (byte for byte), what is
left on disk afterwards, and the job rows.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

from bot.storage.images import ImageStore
from tests.discord.conftest import BotHarness
from tests.fakes.fake_discord import FakeMessage, SentInteraction
from tests.fakes.image_api import Reply
from tests.fakes.png import png_size

MIB = 1024 * 1024
PRICE_FEN = 18
WEBHOOK_EDIT = r"/webhooks/\d+/[^/]+/messages/"


@pytest.fixture
def boosted(harness: BotHarness) -> BotHarness:
    """A server that takes 25 MiB attachments, and a bot that accepts images up to 32 MiB."""
    harness.discord.attachment_size_limit = 25 * MIB
    harness.overrides["image_max_bytes"] = 32 * MIB
    return harness


def store_of(harness: BotHarness) -> ImageStore:
    assert harness.bot is not None and harness.bot.pipeline is not None
    return ImageStore(harness.bot.pipeline.settings.cache_dir)


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


async def generating(harness: BotHarness, sent: SentInteraction) -> FakeMessage:
    return await harness.reply(sent, lambda m: "Generating" in m.content)


async def test_a_20_mib_image_reaches_discord_byte_identical_from_the_stored_file(boosted: BotHarness) -> None:
    boosted.api.script(Reply.ok(image_bytes=20 * MIB))
    await boosted.start()
    sent = boosted.slash("imagine", {"prompt": "A lighthouse at dusk"})

    message = await boosted.result(sent, timeout=30)

    job = await boosted.job(sent.id)
    [attachment] = message.attachments
    served = boosted.api.served_image(job.image_url)
    assert len(served) == 20 * MIB and attachment["bytes"] == served
    assert png_size(attachment["bytes"]) == (1328, 1328)
    assert (job.state, job.cost_fen, job.image_sha256) == ("delivered", PRICE_FEN, hashlib.sha256(served).hexdigest())
    store = store_of(boosted)
    # the download was renamed into the store, which the result cache keeps; no spool file is left
    assert files_under(store.root) == [store.path_for(job.image_sha256)]


async def test_a_retried_upload_sends_the_whole_file_again(boosted: BotHarness) -> None:
    """Discord answers the first upload with a 500: discord.py sends the same open file again (from
    its start), and the runner's own retry opens it anew; both times the whole image goes out."""
    boosted.api.script(Reply.ok(delay=0.8, image_bytes=12 * MIB))
    await boosted.start()
    sent = boosted.slash("imagine", {"prompt": "A lighthouse at dusk"})
    await generating(boosted, sent)
    boosted.discord.fail_next("PATCH", WEBHOOK_EDIT, status=500, times=1)  # retried inside discord.py
    boosted.discord.drop_next("PATCH", WEBHOOK_EDIT, times=1)  # retried by the runner

    message = await boosted.result(sent, timeout=30)

    job = await boosted.job(sent.id)
    served = boosted.api.served_image(job.image_url)
    uploads = [r for r in boosted.discord.requests_to("PATCH", WEBHOOK_EDIT) if r.files]
    assert len(uploads) == 3 and all(list(r.files.values()) == [served] for r in uploads)
    assert message.attachments[0]["bytes"] == served
    assert (boosted.api.generation_count, len(boosted.api.downloads)) == (1, 1)


async def test_an_image_posted_in_the_channel_once_the_token_expired_is_byte_identical(
    boosted: BotHarness,
) -> None:
    boosted.api.script(Reply.ok(delay=1.0, image_bytes=16 * MIB))
    await boosted.start()
    channel_id = boosted.discord.guilds[0].channel_ids[1]
    sent = boosted.slash("imagine", {"prompt": "A lighthouse at dusk"}, channel_id=channel_id)
    await generating(boosted, sent)

    boosted.discord.expire_token(sent.id)
    [posted] = await boosted.discord.wait_for(
        lambda f: [m for m in f.channel_messages(channel_id) if not m.webhook and m.attachments], timeout=30
    )

    job = await boosted.job(sent.id)
    assert posted.attachments[0]["bytes"] == boosted.api.served_image(job.image_url)
    assert (job.state, job.cost_fen) == ("delivered", PRICE_FEN)


async def test_with_the_cache_off_a_delivered_image_leaves_no_file(boosted: BotHarness) -> None:
    boosted.api.script(Reply.ok(image_bytes=8 * MIB))
    await boosted.start(cache_ttl_hours=0)
    sent = boosted.slash("imagine", {"prompt": "A lighthouse at dusk"})

    message = await boosted.result(sent, timeout=30)

    job = await boosted.job(sent.id)
    assert message.attachments[0]["bytes"] == boosted.api.served_image(job.image_url)
    # the file is released once the delivery is recorded, a moment after Discord shows the image
    for _ in range(100):
        if not files_under(store_of(boosted).root):
            break
        await asyncio.sleep(0.1)
    assert files_under(store_of(boosted).root) == []  # neither the spool file nor the stored image


async def test_an_image_over_the_cap_fails_uncharged_and_leaves_no_file(harness: BotHarness) -> None:
    """64 MiB sent without a length to a bot with the default cap (10 MiB): refused while reading,
    the job fails uncharged, and nothing of it stays on disk."""
    harness.api.script(Reply.ok(image_bytes=64 * MIB, chunked=True))
    await harness.start()
    sent = harness.slash("imagine", {"prompt": "A lighthouse at dusk"})

    job = await harness.job(sent.id, states=("failed",), timeout=30)

    assert (job.error_code, job.cost_fen) == ("ImageTooLarge", 0)
    message = await harness.reply(sent, lambda m: m.content.startswith("❌"))
    assert not message.attachments
    [transfer] = harness.api.transfers
    assert not transfer.complete  # the bot hung up
    assert files_under(store_of(harness).root) == []


async def test_a_large_inline_image_is_delivered(boosted: BotHarness) -> None:
    """An 8 MiB image inline in base64 (about 11 MB of JSON): decoded into the store, delivered whole."""
    boosted.api.script(Reply.ok(b64=True, image_bytes=8 * MIB))
    await boosted.start()
    sent = boosted.slash("imagine", {"prompt": "A lighthouse at dusk"})

    message = await boosted.result(sent, timeout=30)

    job = await boosted.job(sent.id)
    data = message.attachments[0]["bytes"]
    assert len(data) == 8 * MIB and png_size(data) == (1328, 1328)
    assert hashlib.sha256(data).hexdigest() == job.image_sha256 and job.image_url in (None, "")
    store = store_of(boosted)
    assert files_under(store.root) == [store.path_for(job.image_sha256)]
