"""Secrets from files: refuse a file that anyone but its service (and root) could read or change.

Every service that reads a token checks the same things at start, with an error that says what
to run: a regular file, owned by the user the service runs as or by root, writable by nobody
else, readable by no other user. A group may read it only when that group has no people in it
(a service group such as `prometheus`: Alertmanager reads the enforcer's token that way).
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from pathlib import Path

FIRST_PERSON_UID = 1000  # Debian's UID_MIN: accounts from here on are people


class TokenFileError(ValueError):
    """The token file cannot be used; the message says what to fix."""


def _name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def people_in_group(gid: int) -> list[str]:
    """Accounts of people (uid >= 1000, or any listed member but root) who read as `gid`."""
    try:
        group = grp.getgrgid(gid)
    except KeyError:
        return []
    found = set()
    for member in group.gr_mem:
        try:
            if pwd.getpwnam(member).pw_uid >= FIRST_PERSON_UID:
                found.add(member)
        except KeyError:
            continue
    found.update(p.pw_name for p in pwd.getpwall() if p.pw_gid == gid and p.pw_uid >= 1000)
    return sorted(found)


def check_token_file(info: os.stat_result, where: Path, *, euid: int) -> None:
    """Pure check of one file's metadata; raises TokenFileError naming the fix."""
    if not stat.S_ISREG(info.st_mode):
        raise TokenFileError(f"token file {where} is not a regular file")
    if info.st_uid not in (euid, 0):
        raise TokenFileError(
            f"token file {where} is owned by {_name(info.st_uid)}; it must belong to "
            f"{_name(euid)} (this service) or root: run chown {_name(euid)} {where}"
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o027:
        raise TokenFileError(
            f"token file {where} is accessible by group or others (mode {mode:04o}); "
            f"run: chmod 600 {where} (or 640 with a service group that must read it)"
        )
    if mode & 0o040:
        people = people_in_group(info.st_gid)
        if people:
            group = grp.getgrgid(info.st_gid).gr_name
            raise TokenFileError(
                f"token file {where} is accessible by group {group} (mode {mode:04o}), which "
                f"people belong to ({', '.join(people[:3])}); run: chmod 600 {where}, or chgrp "
                "it to the service group that must read it"
            )


def load_token(path: str | os.PathLike[str], *, euid: int | None = None) -> str:
    """Read the token after the checks above; its text never appears in an error."""
    where = Path(path)
    try:
        info = where.stat()
    except FileNotFoundError:
        raise TokenFileError(f"token file {where} does not exist") from None
    except OSError as exc:
        raise TokenFileError(f"token file {where}: {exc.strerror}") from None
    check_token_file(info, where, euid=os.geteuid() if euid is None else euid)
    try:
        token = where.read_text().strip()
    except OSError as exc:
        raise TokenFileError(f"token file {where}: {exc.strerror}") from None
    if not token:
        raise TokenFileError(f"token file {where} is empty")
    return token
