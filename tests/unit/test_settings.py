"""A bad setting stops the process at start with a message naming the variable."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tracker.settings import ENV_NAMES, ConfigError, Settings, load_settings


def test_defaults_work_for_demo() -> None:
    settings = load_settings({})
    assert settings.events_stream == "recap:events"
    assert settings.dead_stream == "recap:events:dead"
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)


def test_values_are_read_from_the_environment_and_typed() -> None:
    settings = load_settings({"RECAP_PORT": "9000", "RECAP_STALL_AFTER": "42.5", "RECAP_EVENTS_STREAM": "{recap}:events"})
    assert settings.port == 9000 and settings.stall_after == 42.5 and settings.events_stream == "{recap}:events"


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("RECAP_PORT", "eighty", "Expected `int`"),
        ("RECAP_PORT", "70000", "<= 65535"),
        ("RECAP_BATCH_SIZE", "0", ">= 1"),
        ("RECAP_STALL_AFTER", "-5", "> 0"),
        ("DATABASE_URL", "mysql://db", "postgres://"),
        ("REDIS_URL", "http://cache", "redis://"),
        ("RECAP_EVENTS_STREAM", "has spaces", "letters, digits"),
        ("RECAP_LOG_LEVEL", "LOUD", "DEBUG, INFO"),
    ],
)
def test_a_bad_value_names_the_variable(variable: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings({variable: value})
    assert variable in str(raised.value) and expected in str(raised.value)


def test_every_setting_has_an_environment_variable() -> None:
    assert set(ENV_NAMES) == set(Settings.__struct_fields__)


def test_the_command_stops_at_start_naming_the_bad_variable() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tracker"], env={"RECAP_BATCH_SIZE": "lots", "PATH": ""},
        capture_output=True, text=True, timeout=30,
    )
    assert done.returncode == 2
    assert "RECAP_BATCH_SIZE='lots' is not valid" in done.stderr


def test_a_missing_connection_setting_is_named() -> None:
    done = subprocess.run([sys.executable, "-m", "tracker"], env={"PATH": ""}, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "DATABASE_URL is not set" in done.stderr


def test_the_readme_lists_every_setting_with_its_default() -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    defaults = Settings()
    for field, variable in ENV_NAMES.items():
        row = next((line for line in readme.splitlines() if line.startswith(f"| `{variable}` |")), None)
        assert row is not None, f"{variable} is missing from the README's configuration table"
        default = getattr(defaults, field)
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            assert f"`{default:g}`" in row, f"{variable}: the README does not give the default {default:g}"
