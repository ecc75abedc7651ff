"""Bearer-token auth: a secret from a private file (ds01.tokenfile), compared in constant time."""

from __future__ import annotations

import hmac

from ds01.tokenfile import TokenFileError, load_token

__all__ = ["TokenFileError", "authorized", "load_token"]  # load_token: ds01.tokenfile's checks


def authorized(header: str | None, token: str) -> bool:
    """True for `Bearer <token>`; the comparison takes the same time wherever it differs."""
    scheme, _, given = (header or "").partition(" ")
    expected = token.encode()
    supplied = given.strip().encode() if scheme.lower() == "bearer" else b""
    return hmac.compare_digest(supplied, expected)
