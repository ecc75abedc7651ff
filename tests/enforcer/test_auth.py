"""The token file and the bearer check."""

from __future__ import annotations

import os

import pytest

from enforcer.auth import TokenFileError, authorized, load_token
from tests.gateway.clients import COMPAT_USER_NAMES, ensure_user
from tests.harness.components import require_root


def test_loads_a_private_token_file(tmp_path):
    path = tmp_path / "token"
    path.write_text("  abc123\n")
    path.chmod(0o600)

    assert load_token(path) == "abc123"
    path.chmod(0o400)
    assert load_token(path) == "abc123"


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o660, 0o606, 0o620])
def test_refuses_a_token_file_others_can_read_or_write(tmp_path, mode):
    path = tmp_path / "token"
    path.write_text("abc")
    path.chmod(mode)

    with pytest.raises(TokenFileError, match=f"mode {mode:04o}.*chmod 600"):
        load_token(path)


def test_a_service_group_may_read_it_a_group_with_people_may_not(tmp_path):
    """The documented layout: enforcer.token ds01:prometheus 0640 (Alertmanager reads it)."""
    require_root("chown and creating a user")
    path = tmp_path / "token"
    path.write_text("abc")
    path.chmod(0o640)
    os.chown(path, -1, 0)  # root's group: no people in it

    assert load_token(path) == "abc"
    person = ensure_user(COMPAT_USER_NAMES[0])
    os.chown(path, -1, person.gid)  # the person's own group
    with pytest.raises(TokenFileError, match=f"people belong to \\({person.name}\\)"):
        load_token(path)


def test_refuses_a_token_file_owned_by_someone_else(tmp_path):
    require_root("chown and creating a user")
    person = ensure_user(COMPAT_USER_NAMES[0])
    path = tmp_path / "token"
    path.write_text("abc")
    path.chmod(0o600)
    os.chown(path, person.uid, person.gid)

    with pytest.raises(TokenFileError, match=f"owned by {person.name}.*run chown root"):
        load_token(path, euid=0)
    assert load_token(path, euid=person.uid) == "abc"  # as that user's own service


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
