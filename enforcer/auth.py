"""Bearer-token auth: a secret from a private file, compared in constant time."""

from __future__ import annotations

import hmac
import os
import stat
from pathlib import Path


class TokenFileError(ValueError):
    """The token file cannot be used; the message says what to fix."""


def load_token(path: str | os.PathLike[str]) -> str:
    """Read the token; refuse a file that group or others may read (or write)."""
    where = Path(path)
    try:
        info = where.stat()
    except FileNotFoundError:
        raise TokenFileError(f"token file {where} does not exist") from None
    except OSError as exc:
        raise TokenFileError(f"token file {where}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise TokenFileError(f"token file {where} is not a regular file")
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise TokenFileError(
            f"token file {where} is accessible by group or others (mode {mode:04o}); "
            f"run: chmod 600 {where}"
        )
    try:
        token = where.read_text().strip()
    except OSError as exc:
        raise TokenFileError(f"token file {where}: {exc.strerror}") from None
    if not token:
        raise TokenFileError(f"token file {where} is empty")
    return token


def authorized(header: str | None, token: str) -> bool:
    """True for `Bearer <token>`; the comparison takes the same time wherever it differs."""
    scheme, _, given = (header or "").partition(" ")
    expected = token.encode()
    supplied = given.strip().encode() if scheme.lower() == "bearer" else b""
    return hmac.compare_digest(supplied, expected)
