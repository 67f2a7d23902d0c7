"""Each command's happy path through the real discord.py client, the fake Discord and image API."""

from __future__ import annotations

from tests.discord.conftest import BotHarness
from tests.fakes.png import png_size


async def test_imagine_defers_then_edits_the_same_message_with_the_image(harness: BotHarness) -> None:
    await harness.start()
    sent = harness.slash("imagine", {"prompt": "A cute orange kitten"})
    message = await harness.result(sent)
    assert harness.discord.callbacks(sent.id)[0] == 5  # deferred at once, "thinking…"
    [attachment] = message.attachments
    assert attachment["filename"] == f"imagine-{sent.id}.png"
    assert png_size(attachment["bytes"]) == (1328, 1328)
    [embed] = message.embeds
    assert embed["description"] == "A cute orange kitten"
    assert embed["image"]["url"] == f"attachment://imagine-{sent.id}.png"
    assert message.custom_ids() == [
        f"imagine:reroll:{sent.id}",
        f"imagine:details:{sent.id}",
        f"imagine:delete:{sent.id}",
    ]
    assert message.allowed_mentions == {"parse": []}
    job = await harness.job(sent.id)
    assert (job.state, job.cost_fen, job.interaction_token) == ("delivered", 18, None)
