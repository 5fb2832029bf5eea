"""Token entries (RECAP_TOKENS / RECAP_TOKENS_FILE), lookups and user scoping."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tracker.settings import ConfigError, load_settings
from web.auth import ADMIN, Principal, TokenTable, effective_user, load_tokens
from web.errors import ApiError

USER = uuid.UUID("11111111-2222-4333-8444-555555555555")


def test_tokens_from_the_variable_and_the_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"# operators\n\nfile-admin=admin\n  file-user = user:{USER}  \n")
    settings = load_settings({"RECAP_TOKENS": f"a=admin, u=user:{USER}", "RECAP_TOKENS_FILE": str(path)})
    table = load_tokens(settings)
    assert len(table) == 4
    assert table.lookup("a") == ADMIN and table.lookup("file-admin") == ADMIN
    assert table.lookup("u") == Principal(is_admin=False, user_id=USER) == table.lookup("file-user")
    assert table.lookup("nope") is None and table.lookup("") is None


@pytest.mark.parametrize(
    ("tokens", "message"),
    [
        ("secret-one", "RECAP_TOKENS entry 1 is not TOKEN=admin or TOKEN=user:UUID"),
        ("ok=admin,=admin", "RECAP_TOKENS entry 2 is not TOKEN=admin or TOKEN=user:UUID"),
        ("secret-one=root", "RECAP_TOKENS entry 1: role 'root' is neither admin nor user:UUID"),
        ("secret-one=user:42", "RECAP_TOKENS entry 1: '42' after user: is not a UUID"),
        ("secret-one=admin,secret-one=user:" + str(USER), "RECAP_TOKENS entry 2: this token is already configured"),
    ],
)
def test_a_bad_entry_names_the_variable_not_the_token(tokens: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_tokens(load_settings({"RECAP_TOKENS": tokens}))
    assert str(raised.value).startswith(message)
    assert "secret-one" not in str(raised.value)


def test_a_bad_file_names_the_variable_and_line(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("good=admin\n# comment\nbad-secret\n")
    with pytest.raises(ConfigError, match=r"^RECAP_TOKENS_FILE line 3 is not"):
        load_tokens(load_settings({"RECAP_TOKENS_FILE": str(path)}))
    with pytest.raises(ConfigError, match=r"^RECAP_TOKENS_FILE=.* cannot be read"):
        load_tokens(load_settings({"RECAP_TOKENS_FILE": str(tmp_path / "missing")}))


def test_a_token_may_contain_equals_signs() -> None:
    table = load_tokens(load_settings({"RECAP_TOKENS": "base64+token==admin"}))
    assert table.lookup("base64+token=") == ADMIN


def test_no_tokens_is_an_empty_table() -> None:
    assert len(TokenTable()) == 0 and TokenTable().lookup("x") is None


def test_effective_user() -> None:
    other = uuid.uuid4()
    user = Principal(is_admin=False, user_id=USER)
    assert effective_user(ADMIN, None) is None
    assert effective_user(ADMIN, other) == other
    assert effective_user(user, None) == USER
    assert effective_user(user, USER) == USER
    with pytest.raises(ApiError) as raised:
        effective_user(user, other)
    assert (raised.value.status, raised.value.parameter) == (403, "user_id")
    with pytest.raises(ApiError):
        effective_user(Principal(is_admin=False), None)
