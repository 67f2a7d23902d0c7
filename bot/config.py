"""Settings: read once at start from the environment and `.env`, then passed down.

The environment variable names are the interface (documented in `.env.example` and the
README). Secrets are `SecretStr` so they never print by accident. A missing or invalid value
stops the program with one line naming the variable and what to do (`ConfigError`).
"""

from __future__ import annotations

from decimal import Decimal
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from bot.errors import ConfigError
from bot.money import cny_to_fen

SPEC_SIZES = ("1328*1328", "1664*928", "928*1664", "1472*1140", "1140*1472")

CommaList = Annotated[tuple[str, ...], NoDecode]
#: SHARD_IDS: None = every shard of SHARD_COUNT, () = none (a pure worker), else these shards
ShardIds = Annotated[tuple[int, ...] | None, NoDecode]


def _split_commas(value: object) -> object:
    """`IMAGE_SIZES=1328*1328,1664*928` -> a tuple; empty items dropped."""
    if isinstance(value, str):
        return tuple(item.strip() for item in value.split(",") if item.strip())
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        frozen=True,
    )

    # -- secrets and endpoints ----------------------------------------------------------------
    discord_token: SecretStr | None = None
    nebula_api_key: SecretStr | None = None
    nebula_base_url: str = "https://llm.ai-nebula.com/v1"
    image_model: str = "qwen-image-plus"
    #: "parameters" (the simple shape) or "messages" (extra.input.messages + extra.parameters)
    image_request_shape: Literal["parameters", "messages"] = "parameters"
    database_url: str = "sqlite:///data/imagine.db"
    discord_api_base: str | None = None
    discord_gateway_url: str | None = None
    dev_guild_id: int | None = None
    log_level: str = "INFO"
    #: "text": one readable line per event; "json": one JSON object per line, for log shippers
    log_format: Literal["text", "json"] = "text"

    # -- sharding (several processes, one shared store) ----------------------------------------
    #: how many shards the bot's guilds are split into; None = discord.py asks Discord (one shard
    #: below 2,500 guilds) and this process runs them all
    shard_count: int | None = Field(None, ge=1, le=10_000)
    #: the shards this process connects; None = all of SHARD_COUNT, () = none (a pure worker)
    shard_ids: ShardIds = None

    # -- operating it: metrics and health probes ----------------------------------------------------
    #: /metrics, /livez and /readyz on this port; None = off (no port bound); 0 = any free port
    #: (the one bound is logged)
    metrics_port: int | None = Field(None, ge=0, le=65_535)
    #: loopback by default: the endpoints have no authentication, so exposing them is a choice
    metrics_host: str = "127.0.0.1"

    # -- upstream limits ----------------------------------------------------------------------
    upstream_rpm: int = Field(60, ge=1, le=6000)
    upstream_concurrency: int = Field(2, ge=1, le=100)
    upstream_timeout_s: float = Field(120.0, gt=0, le=1800)
    upstream_max_retries: int = Field(2, ge=0, le=10)
    #: longest Retry-After we honour before failing the attempt back to the scheduler
    upstream_retry_after_cap_s: float = Field(60.0, gt=0)
    #: added to each rate window: starts are stamped as the request leaves, so this only has to
    #: cover how much the request's transit time varies between two requests
    upstream_window_margin_ms: int = Field(15, ge=0, le=1000)
    #: PostgreSQL: how long a job stays with a process that stops renewing it (it died) before
    #: another process takes it over
    job_lease_s: float = Field(30.0, ge=5, le=600)

    # -- input and output bounds --------------------------------------------------------------
    prompt_max_chars: int = Field(800, ge=1, le=10_000)
    negative_prompt_max_chars: int = Field(500, ge=0, le=10_000)
    image_max_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    image_host_allowlist: CommaList = ("*.aliyuncs.com",)
    #: whole fen only (at most two decimals): see bot/money.py
    price_per_image_cny: Decimal = Field(Decimal("0.18"), ge=0, max_digits=10)
    image_sizes: CommaList = SPEC_SIZES
    cache_dir: Path = Path("data/cache")
    #: delivered images are reused for identical requests this long, within this much disk
    cache_ttl_hours: float = Field(24.0, ge=0, le=24 * 365)
    cache_max_mb: int = Field(500, ge=0)

    # -- queue admission (the Discord bot) ------------------------------------------------------
    guild_queue_max: int = Field(25, ge=1, le=1000)
    user_pending_max: int = Field(2, ge=1, le=100)
    shutdown_grace_s: float = Field(30.0, ge=0, le=600)

    # -- per-user and per-guild limits (defaults; admins change them per guild) -----------------------
    #: images per user per day / month; "none" or empty = unlimited
    user_daily_limit: int | None = Field(20, ge=0)
    user_monthly_limit: int | None = Field(None, ge=0)
    cooldown_seconds: int = Field(0, ge=0, le=86_400)
    #: money per guild per day / month, in CNY; "none" or empty = unlimited
    guild_daily_budget_cny: Decimal | None = Field(Decimal("10"), ge=0)
    guild_monthly_budget_cny: Decimal | None = Field(Decimal("100"), ge=0)
    #: days and months roll over at midnight here, unless a guild sets its own
    default_timezone: str = "UTC"

    _split = field_validator("image_host_allowlist", "image_sizes", mode="before")(_split_commas)

    @field_validator(
        "user_daily_limit",
        "user_monthly_limit",
        "guild_daily_budget_cny",
        "guild_monthly_budget_cny",
        mode="before",
    )
    @classmethod
    def _unlimited(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().lower() in ("", "none", "unlimited"):
            return None
        return value

    @field_validator("price_per_image_cny", "guild_daily_budget_cny", "guild_monthly_budget_cny")
    @classmethod
    def _whole_fen(cls, amount: Decimal | None) -> Decimal | None:
        if amount is not None:
            cny_to_fen(amount)  # the one money rule: ValueError for a sub-fen amount (0.185, 0.005)
        return amount

    @field_validator("default_timezone")
    @classmethod
    def _known_zone(cls, name: str) -> str:
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"'{name}' is not an IANA time zone such as UTC or Asia/Shanghai") from None
        return name

    @field_validator("image_sizes")
    @classmethod
    def _sizes_look_like_sizes(cls, sizes: tuple[str, ...]) -> tuple[str, ...]:
        if not sizes:
            raise ValueError("needs at least one size such as 1328*1328")
        for size in sizes:
            width, _, height = size.partition("*")
            if not (width.isdigit() and height.isdigit()):
                raise ValueError(f"'{size}' is not WIDTH*HEIGHT (e.g. 1328*1328)")
        return sizes

    @field_validator("nebula_base_url", "discord_api_base")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url is None:
            return None
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"'{url}' is not an http(s) URL")
        return url.rstrip("/")

    @field_validator("discord_gateway_url")
    @classmethod
    def _ws_url(cls, url: str | None) -> str | None:
        if url is not None and urlsplit(url).scheme not in ("ws", "wss"):
            raise ValueError(f"'{url}' is not a ws:// or wss:// URL")
        return url

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, url: str) -> str:
        if not url.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ValueError("use sqlite:///path/to/file.db or postgresql://user@host:port/database")
        return url

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower_case(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("shard_count", "metrics_port", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("metrics_host")
    @classmethod
    def _a_host(cls, host: str) -> str:
        """A name or an address to bind (IPv6 without brackets: `::1`), not a URL."""
        host = host.strip()
        if not host or any(ch.isspace() or ch in "/@[]" for ch in host):
            raise ValueError(f"'{host}' is not a host name or an IP address such as 127.0.0.1, 0.0.0.0 or ::1")
        return host

    @field_validator("shard_ids", mode="before")
    @classmethod
    def _parse_shard_ids(cls, value: object) -> object:
        """Empty = every shard, `none` = no shard (a pure worker), `0,2` = these shards."""
        if not isinstance(value, str):
            return value
        text = value.strip()
        if not text:
            return None
        if text.lower() == "none":
            return ()
        ids = []
        for item in (part.strip() for part in text.split(",")):
            if not item:
                continue
            if not item.isdigit():
                raise ValueError(f"'{item}' is not a shard number: use a comma list such as 0,1, or none")
            ids.append(int(item))
        return tuple(ids)

    @field_validator("shard_ids")
    @classmethod
    def _shards_fit_the_count(cls, ids: tuple[int, ...] | None, info: ValidationInfo) -> tuple[int, ...] | None:
        if ids is None:
            return None
        if len(set(ids)) != len(ids):
            raise ValueError("lists a shard twice")
        if any(i < 0 for i in ids):
            raise ValueError("shard numbers start at 0")
        if ids and "shard_count" in info.data:  # absent: SHARD_COUNT itself is invalid (reported)
            count = info.data["shard_count"]
            if count is None:
                raise ValueError("needs SHARD_COUNT, the total number of shards across every process")
            if too_big := [i for i in ids if i >= count]:
                raise ValueError(
                    f"shard {too_big[0]} does not exist with SHARD_COUNT={count} (shards are 0 to {count - 1})"
                )
        on_sqlite = str(info.data.get("database_url", "")).startswith("sqlite:///")
        if on_sqlite and (ids == () or len(ids) < (info.data.get("shard_count") or 0)):
            what = "none makes a pure worker" if ids == () else "runs only some of the shards here"
            raise ValueError(
                f"{what}, so other bot processes must share one job queue with it: that needs"
                " DATABASE_URL=postgresql://... (on SQLite each bot process keeps a queue of its own)"
            )
        return ids

    # -- derived values -------------------------------------------------------------------------
    # Money is integer fen (0.18 CNY = 18) everywhere below the settings (bot/money.py).
    @cached_property  # read on every request: settings do not change while the bot runs
    def price_per_image_fen(self) -> int:
        return cny_to_fen(self.price_per_image_cny)

    @property
    def guild_daily_budget_fen(self) -> int | None:
        return None if self.guild_daily_budget_cny is None else cny_to_fen(self.guild_daily_budget_cny)

    @property
    def guild_monthly_budget_fen(self) -> int | None:
        return None if self.guild_monthly_budget_cny is None else cny_to_fen(self.guild_monthly_budget_cny)

    @property
    def database_path(self) -> Path:
        """`sqlite:///data/x.db` is relative to the working directory, `sqlite:////abs/x.db` absolute."""
        if self.uses_postgres:
            raise ValueError("DATABASE_URL is a PostgreSQL URL: there is no database file")
        return Path(self.database_url.removeprefix("sqlite:///"))

    @property
    def uses_postgres(self) -> bool:
        return not self.database_url.startswith("sqlite:///")

    @property
    def pure_worker(self) -> bool:
        """SHARD_IDS=none: no gateway connection; this process only runs and delivers queued jobs."""
        return self.shard_ids == ()

    @property
    def syncs_commands(self) -> bool:
        """Only one process pushes the command definitions: the one with shard 0 (or every shard)."""
        return self.shard_ids is None or 0 in self.shard_ids

    def require(self, *names: str) -> None:
        """Stop with a clear line if a value needed by this command is missing."""
        for name in names:
            value = getattr(self, name.lower())
            if value is None or (isinstance(value, SecretStr) and not value.get_secret_value().strip()):
                raise ConfigError(f"{name} is not set: {_HOW_TO_SET[name]}")


_HOW_TO_SET = {
    "NEBULA_API_KEY": "put your Nebula gateway API key in .env (see .env.example) or the environment.",
    "DISCORD_TOKEN": "put your bot's token (Discord developer portal > Bot > Reset Token) in .env.",
}


def load_settings(**overrides: object) -> Settings:
    """Build the settings once; turn pydantic's report into one line per bad variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            name = str(error["loc"][0]).upper() if error["loc"] else "settings"
            message = str(error["msg"]).removeprefix("Value error, ")
            lines.append(f"{name} is invalid: {message}. Fix it in .env or the environment.")
        raise ConfigError(" ".join(lines)) from None
