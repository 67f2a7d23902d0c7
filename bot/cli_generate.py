"""`imagine-bot generate`: one image through the same pipeline as the bot, written to a file."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import shutil
import sys
import time
from pathlib import Path
from typing import TextIO

from bot.cli_outcome import describe_failure, exit_code_for
from bot.config import Settings
from bot.contracts import Requester
from bot.errors import ImagineError
from bot.pipeline import Pipeline
from bot.presets import size_label
from bot.requests import GenerationRequest, RequestBuilder
from bot.scheduler import QueuePosition
from bot.storage.images import OpenImage
from bot.storage.jobs import Job
from bot.storage.reports import fen_to_cny


class FileDelivery:
    """The CLI's `Delivery`: progress on stderr, the image into a file (`output`, or
    `<name_prefix>-<job id>.<ext>` in the working directory)."""

    def __init__(self, output: Path | None, progress: Progress, name_prefix: str = "imagine") -> None:
        self._output = output
        self._progress = progress
        self._name_prefix = name_prefix
        self.written: Path | None = None
        self.written_bytes = 0
        self.error: BaseException | None = None

    async def queued(self, job: Job, position: QueuePosition) -> None:
        self._progress.status(f"queued (#{position.global_position})")

    async def started(self, job: Job) -> None:
        self._progress.status("generating")

    async def deliver(self, job: Job, image: OpenImage) -> None:
        path = self._output or Path(f"{self._name_prefix}-{job.id}.{image.extension}")
        await asyncio.to_thread(_copy_file, image, path)
        self.written = path
        self.written_bytes = image.size

    async def failed(self, job: Job, error: BaseException) -> None:
        self.error = error

    async def cancelled(self, job: Job) -> None:
        """Only a Discord button cancels: a CLI job is never cancelled this way."""

    async def moderation(self, channel_id: int, text: str) -> None:
        """CLI jobs belong to no guild: there is no moderation log to post to."""


def _copy_file(image: OpenImage, path: Path) -> None:
    """A copy, never a move: the stored file may stay in the result cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image.file.seek(0)
    with path.open("wb") as out:
        shutil.copyfileobj(image.file, out)


class Progress:
    """A spinner with elapsed time on a TTY; silent otherwise (logs and pipes stay clean)."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self._stream = stream
        self._enabled = stream.isatty()
        self._text = "starting"
        self._task: asyncio.Task[None] | None = None
        self._started = time.monotonic()

    def status(self, text: str) -> None:
        self._text = text

    def __enter__(self) -> Progress:
        if self._enabled:
            self._task = asyncio.get_running_loop().create_task(self._spin())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            self._stream.write("\r\033[K")
            self._stream.flush()

    async def _spin(self) -> None:
        for frame in itertools.cycle("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"):
            elapsed = time.monotonic() - self._started
            self._stream.write(f"\r\033[K{frame} {self._text}… {elapsed:4.1f} s")
            self._stream.flush()
            await asyncio.sleep(0.1)


async def generate_to_file(
    settings: Settings,
    request: GenerationRequest,
    who: Requester,
    *,
    output: Path | None = None,
    name_prefix: str = "imagine",
) -> tuple[Job, FileDelivery]:
    """One job through the bot's pipeline (the store, the shared upstream budget, the ledger), its
    image written to a file; `failure_of` tells whether it worked. Used by `generate` and `doctor --paid`."""
    progress = Progress()
    delivery = FileDelivery(output, progress, name_prefix)
    pipeline = await Pipeline.open(settings, delivery, max_requeues=0, claims=False)  # its own job only
    try:
        await pipeline.service.start(resume=False)
        with progress:
            ticket = await pipeline.service.submit(request, who)
            job = await pipeline.service.wait(ticket.job_id)
    finally:
        await pipeline.close(grace_s=5)
    return job, delivery


def failure_of(job: Job, delivery: FileDelivery) -> BaseException | None:
    """None when the image was delivered into its file, else what went wrong."""
    if job.state == "delivered" and delivery.written is not None:
        return None
    return delivery.error or ImagineError(job.error_message or "the job did not finish")


async def generate_once(settings: Settings, args: argparse.Namespace) -> int:
    try:
        request = RequestBuilder(settings).imagine(
            args.prompt,
            size=args.size,
            style=args.style,
            negative_prompt=args.negative,
            prompt_extend=False if args.no_extend else None,
            watermark=False if args.no_watermark else None,
            command="cli",
        )
    except ImagineError as exc:  # invalid input: refused before anything is sent
        print(f"imagine-bot: {describe_failure(exc)}", file=sys.stderr)
        return exit_code_for(exc)

    job, delivery = await generate_to_file(settings, request, Requester("cli"), output=args.output)
    if (error := failure_of(job, delivery)) is not None:
        print(f"imagine-bot: {describe_failure(error)}", file=sys.stderr)
        return exit_code_for(error)
    print(f"wrote {delivery.written}")
    print(f"size: {size_label(job.size)}; bytes: {delivery.written_bytes:,}")
    source = " (from cache: the same request was made before)" if job.cache_hit else ""
    print(f"cost: ¥{fen_to_cny(job.cost_fen)}{source}; request id: {job.request_id or '-'}; job id: {job.id}")
    if job.revised_prompt:
        print(f"revised prompt: {job.revised_prompt}")
    return 0
