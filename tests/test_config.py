from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from bot.config import SPEC_SIZES, load_settings
from bot.errors import ConfigError


def test_defaults_match_the_documented_interface() -> None:
    settings = load_settings(_env_file=None)
    assert settings.nebula_base_url == "https://llm.ai-nebula.com/v1"
    assert settings.image_model == "qwen-image-plus"
    assert settings.database_url == "sqlite:///data/imagine.db"
    assert (settings.upstream_rpm, settings.upstream_concurrency) == (60, 2)
    assert (settings.upstream_timeout_s, settings.upstream_max_retries) == (120, 2)
    assert (settings.prompt_max_chars, settings.negative_prompt_max_chars) == (800, 500)
    assert settings.image_max_bytes == 10 * 1024 * 1024
    assert settings.image_host_allowlist == ("*.aliyuncs.com",)
    assert settings.price_per_image_cny == Decimal("0.18")
    assert settings.image_sizes == SPEC_SIZES


def test_price_becomes_integer_fen() -> None:
    assert load_settings(_env_file=None).price_per_image_fen == 18
    assert load_settings(_env_file=None, price_per_image_cny="1.05").price_per_image_fen == 105


def test_reads_environment_and_comma_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UPSTREAM_RPM", "30")
    monkeypatch.setenv("IMAGE_SIZES", "1328*1328, 1024*1024")
    monkeypatch.setenv("IMAGE_HOST_ALLOWLIST", "*.aliyuncs.com,cdn.example.com")
    settings = load_settings(_env_file=None)
    assert settings.upstream_rpm == 30
    assert settings.image_sizes == ("1328*1328", "1024*1024")
    assert settings.image_host_allowlist == ("*.aliyuncs.com", "cdn.example.com")


def test_reads_dot_env_file(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("NEBULA_API_KEY=sk-from-dotenv\nIMAGE_MODEL=other-model\n")
    settings = load_settings()  # the working directory is tmp_path (conftest)
    assert settings.nebula_api_key is not None
    assert settings.nebula_api_key.get_secret_value() == "sk-from-dotenv"
    assert settings.image_model == "other-model"


def test_secrets_do_not_print() -> None:
    settings = load_settings(_env_file=None, nebula_api_key="sk-secret-value", discord_token="bot-secret")
    assert "sk-secret-value" not in repr(settings)
    assert "bot-secret" not in str(settings)


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("UPSTREAM_RPM", "many", "UPSTREAM_RPM is invalid"),
        ("UPSTREAM_CONCURRENCY", "0", "UPSTREAM_CONCURRENCY is invalid"),
        ("IMAGE_SIZES", "big", "IMAGE_SIZES is invalid"),
        ("NEBULA_BASE_URL", "ftp://x", "NEBULA_BASE_URL is invalid"),
        ("DATABASE_URL", "mysql://x", "DATABASE_URL is invalid"),
        ("PRICE_PER_IMAGE_CNY", "-1", "PRICE_PER_IMAGE_CNY is invalid"),
        ("LOG_FORMAT", "xml", "LOG_FORMAT is invalid"),
        ("METRICS_PORT", "http", "METRICS_PORT is invalid"),
        ("METRICS_PORT", "65536", "METRICS_PORT is invalid"),
        ("METRICS_HOST", "http://0.0.0.0", "METRICS_HOST is invalid: 'http://0.0.0.0' is not a host name"),
        ("METRICS_HOST", " ", "METRICS_HOST is invalid"),
    ],
)
def test_invalid_value_is_one_clear_line(monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings(_env_file=None)
    assert caught.value.message.startswith(expected)
    assert "\n" not in caught.value.message
    assert "Fix it in .env or the environment" in caught.value.message


def test_log_format_is_text_by_default_and_json_on_request(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings(_env_file=None).log_format == "text"
    monkeypatch.setenv("LOG_FORMAT", " JSON ")
    assert load_settings(_env_file=None).log_format == "json"


def test_metrics_are_off_by_default_and_loopback_when_on(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(_env_file=None)
    assert (settings.metrics_port, settings.metrics_host) == (None, "127.0.0.1")
    monkeypatch.setenv("METRICS_PORT", "")  # blank, as .env.example leaves it: still off
    assert load_settings(_env_file=None).metrics_port is None
    monkeypatch.setenv("METRICS_PORT", "9464")
    monkeypatch.setenv("METRICS_HOST", "::")
    assert (load_settings(_env_file=None).metrics_port, load_settings(_env_file=None).metrics_host) == (9464, "::")


@pytest.mark.parametrize("name", ["NEBULA_API_KEY", "DISCORD_TOKEN"])
def test_missing_required_secret_names_the_variable(name: str) -> None:
    settings = load_settings(_env_file=None)
    with pytest.raises(ConfigError, match=f"^{name} is not set: "):
        settings.require(name)


def test_blank_secret_counts_as_missing() -> None:
    settings = load_settings(_env_file=None, nebula_api_key="  ")
    with pytest.raises(ConfigError, match="NEBULA_API_KEY is not set"):
        settings.require("NEBULA_API_KEY")


def test_database_path_relative_and_absolute() -> None:
    assert load_settings(_env_file=None).database_path == Path("data/imagine.db")
    absolute = load_settings(_env_file=None, database_url="sqlite:////var/lib/imagine/x.db")
    assert absolute.database_path == Path("/var/lib/imagine/x.db")
