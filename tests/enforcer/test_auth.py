"""The token file and the bearer check."""

from __future__ import annotations

import pytest

from enforcer.auth import TokenFileError, authorized, load_token


def test_loads_a_private_token_file(tmp_path):
    path = tmp_path / "token"
    path.write_text("  abc123\n")
    path.chmod(0o600)

    assert load_token(path) == "abc123"
    path.chmod(0o400)
    assert load_token(path) == "abc123"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o606])
def test_refuses_a_token_file_others_can_read_or_write(tmp_path, mode):
    path = tmp_path / "token"
    path.write_text("abc")
    path.chmod(mode)

    with pytest.raises(TokenFileError, match=f"mode {mode:04o}.*chmod 600"):
        load_token(path)


def test_refuses_empty_missing_and_non_files(tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("\n")
    empty.chmod(0o600)
    with pytest.raises(TokenFileError, match="is empty"):
        load_token(empty)
    with pytest.raises(TokenFileError, match="does not exist"):
        load_token(tmp_path / "missing")
    folder = tmp_path / "dir"
    folder.mkdir(mode=0o700)
    with pytest.raises(TokenFileError, match="not a regular file"):
        load_token(folder)


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        ("Bearer abc123", True),
        ("bearer abc123", True),
        ("Bearer abc12", False),
        ("Bearer abc1234", False),
        ("Basic abc123", False),
        ("abc123", False),
        ("Bearer ", False),
        ("", False),
        (None, False),
        ("Bearer ünïcode", False),
    ],
)
def test_bearer_header(header, ok):
    assert authorized(header, "abc123") is ok
