"""bot/messages.py: the sentence for each outcome, in English and in Chinese."""

from __future__ import annotations

import pytest

from bot import messages
from bot.contracts import ImageLost, JobInterrupted
from bot.errors import ImagineError
from bot.i18n import Text

CASES = {
    "a lost image": (
        ImageLost(Text("error.image_lost")),
        "The generated image was lost before it could be delivered. Nothing was charged.",
        "生成的图片在送达前丢失了。未收取任何费用。",
    ),
    "a failed delivery": (
        ImagineError(messages.DELIVERY_FAILED),
        "The image was generated but could not be posted to Discord. Nothing was charged.",
        "图片已生成，但无法发送到 Discord。未收取任何费用。",
    ),
    "an interrupted job": (
        JobInterrupted(messages.INTERRUPTED),
        "The bot restarted while generating this image twice in a row; it was not retried again. Nothing was charged.",
        "生成这张图片时机器人连续两次重启，因此不再重试。未收取任何费用。",
    ),
    "a reroll of a job that is gone": (
        ImagineError(Text("reply.job_gone")),
        "This image's record is no longer available. Nothing was charged.",
        "这张图片的记录已不存在。未收取任何费用。",
    ),
    "a bare phrase": (
        ImagineError("the job did not finish"),
        "the job did not finish. Nothing was charged.",
        "the job did not finish。未收取任何费用。",
    ),
}


@pytest.mark.parametrize(("error", "english", "chinese"), CASES.values(), ids=CASES.keys())
def test_a_failure_says_nothing_was_charged_once(error: ImagineError, english: str, chinese: str) -> None:
    assert messages.describe(error) == english
    assert messages.describe(error, "zh_Hans") == chinese
