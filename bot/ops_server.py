"""One small HTTP server for operators, on METRICS_HOST:METRICS_PORT: /metrics (Prometheus text),
/livez and /readyz (a supervisor's or an orchestrator's probes).

It runs on the bot's own event loop (aiohttp, already there under discord.py), not in a thread:
so /livez answering proves that the loop itself answers, which is what a stuck bot fails at.
No authentication: it binds to loopback unless METRICS_HOST says otherwise.
"""

from __future__ import annotations

import json
import logging

from aiohttp import web
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

from bot.errors import ConfigError
from bot.metrics import Metrics
from bot.readiness import Readiness

log = logging.getLogger("imagine.ops")


class OpsServer:
    def __init__(self, metrics: Metrics, readiness: Readiness, *, host: str, port: int) -> None:
        self._metrics = metrics
        self._readiness = readiness
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        #: the port bound (METRICS_PORT=0 asks the system for a free one)
        self.port: int | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._serve_metrics)
        app.router.add_get("/livez", self._serve_livez)
        app.router.add_get("/readyz", self._serve_readyz)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)  # a scrape is no log line
        await runner.setup()
        try:
            await web.TCPSite(runner, self._host, self._port).start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(
                f"METRICS_PORT {self._port} cannot be used on METRICS_HOST {self._host} ({exc.strerror or exc}):"
                " choose a free port, or leave METRICS_PORT unset to turn metrics off."
            ) from None
        self._runner = runner
        self.port = runner.addresses[0][1]
        log.info("metrics and health probes on http://%s:%d (/metrics, /livez, /readyz)", self._host, self.port)

    async def stop(self) -> None:
        self._readiness.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _serve_metrics(self, request: web.Request) -> web.Response:
        await self._metrics.before_scrape()
        body = generate_latest(self._metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})

    async def _serve_livez(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _serve_readyz(self, request: web.Request) -> web.Response:
        checks = await self._readiness.checks()
        ready = all(check.ok for check in checks)
        body = {
            "ready": ready,
            "checks": {check.name: {"ok": check.ok, "detail": check.detail} for check in checks},
        }
        return web.Response(
            text=json.dumps(body, indent=1) + "\n", status=200 if ready else 503, content_type="application/json"
        )
