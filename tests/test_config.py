"""Settings precedence (flags > environment > TOML > defaults) and model routing."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from batchd.backends.router import Router, backend_configs
from batchd.config import BackendConfig, Settings, load_settings

TOML = """
port = 9001
batch_ttl_seconds = 60

[[backends]]
name = "upstream"
kind = "anthropic"
base_url = "http://127.0.0.1:9100/"
api_key_env = "UPSTREAM_API_KEY"
models = ["claude-*"]
max_concurrency = 8

[[backends]]
name = "fallback"
kind = "mock"
models = ["claude-3*", "local-?"]
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "batchd.toml"
    path.write_text(TOML)
    return path


def test_toml_file_is_read(config_file: Path) -> None:
    settings = load_settings(config=config_file)
    assert (settings.port, settings.batch_ttl_seconds) == (9001, 60)
    assert settings.backends[0].base_url == "http://127.0.0.1:9100"  # trailing slash dropped
    assert settings.backends[0].max_concurrency == 8


def test_environment_beats_toml_and_flags_beat_environment(
    config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCHD_PORT", "9002")
    monkeypatch.setenv("BATCHD_DB", "sqlite:///from-env.db")
    settings = load_settings(config=config_file, db="sqlite:///from-flag.db", host=None)
    assert (settings.port, settings.db, settings.host) == (
        9002,
        "sqlite:///from-flag.db",
        "127.0.0.1",
    )


def test_config_file_can_come_from_the_environment(
    config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCHD_CONFIG", str(config_file))
    assert [b.name for b in Settings().backends] == ["upstream", "fallback"]


def test_unknown_keys_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "typo.toml"
    path.write_text('[[backends]]\nname = "x"\nkind = "mock"\nmax_concurency = 3\n')
    with pytest.raises(ValidationError, match="max_concurency"):
        load_settings(config=path)


def test_a_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="config file not found"):
        load_settings(config=tmp_path / "nope.toml")


@pytest.mark.parametrize(
    ("model", "backend"),
    [
        ("claude-sonnet-4", "upstream"),  # first matching backend wins
        ("claude-3-haiku", "upstream"),  # even when a later one matches too
        ("local-1", "fallback"),
        ("local-10", None),  # ? is one character
        ("mock", "mock"),  # the built-in mock
        ("gpt-4o", None),
    ],
)
def test_routing(config_file: Path, model: str, backend: str | None) -> None:
    router = Router(backend_configs(load_settings(config=config_file)))
    assert router.route(model) == backend


def test_model_names_lists_exact_names_only(config_file: Path) -> None:
    router = Router(backend_configs(load_settings(config=config_file)))
    assert router.model_names() == ["mock"]


def test_a_backend_named_mock_replaces_the_built_in_one() -> None:
    settings = Settings(backends=[BackendConfig(name="mock", kind="mock", models=["m-*"])])
    router = Router(backend_configs(settings))
    assert (router.route("m-1"), router.route("mock")) == ("mock", None)


def test_backend_names_must_be_unique() -> None:
    with pytest.raises(ValidationError, match="unique"):
        Settings(
            backends=[BackendConfig(name="a", kind="mock"), BackendConfig(name="a", kind="mock")]
        )


def test_an_upstream_backend_needs_a_url() -> None:
    with pytest.raises(ValidationError, match="needs base_url"):
        Settings(backends=[BackendConfig(name="a", kind="anthropic", models=["*"])])
