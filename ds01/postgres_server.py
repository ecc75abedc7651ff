"""A private PostgreSQL from Debian's `postgresql` package: for tests and for `ds01 up --nodes N`.

Its own data folder, port and Unix-socket folder, so it sits beside a system PostgreSQL and
other test runs. PostgreSQL refuses to run as root: as root the server runs as an unprivileged
account (`postgres`, which the Debian package creates). Password (SCRAM) authentication only.
"""

from __future__ import annotations

import glob
import logging
import os
import pwd
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from .stack import ChildProcess, StackError, free_port
from .webauth import new_password, write_private

logger = logging.getLogger(__name__)

SUPERUSER = "ds01"
DEFAULT_ACCOUNT = "postgres"
_BIN_GLOB = "/usr/lib/postgresql/*/bin"
_DB_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_SOCKET_MAX = 100  # sun_path is 108 bytes; libpq appends "/.s.PGSQL.<port>"


def find_postgres_bindir() -> Path | None:
    """The folder holding `postgres`, `initdb`: PATH first, then Debian's newest version."""
    on_path = shutil.which("postgres") or shutil.which("initdb")
    if on_path:
        folder = Path(os.path.realpath(on_path)).parent
        if (folder / "postgres").is_file() and (folder / "initdb").is_file():
            return folder
    candidates = [Path(p) for p in glob.glob(_BIN_GLOB) if Path(p, "postgres").is_file()]

    def version(path: Path) -> tuple[int, ...]:
        digits = re.findall(r"\d+", path.parent.name)
        return tuple(int(d) for d in digits)

    return max(candidates, key=version) if candidates else None


@dataclass
class PostgresServer:
    """One postmaster: `dsn()` for clients, `stop()`/`start()` for outages, `close()` at the end."""

    root: Path
    port: int
    bindir: Path
    account: str | None  # the OS user the server runs as; None = this process's user
    password: str
    host: str = "127.0.0.1"
    fsync: bool = True  # off for throwaway test clusters (faster commits, nothing to keep)
    process: ChildProcess | None = field(default=None, repr=False)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "run"

    @property
    def log_path(self) -> Path:
        return self.root / "postgres.log"

    def dsn(self, dbname: str = "postgres") -> str:
        """A libpq keyword/value DSN over TCP (what an allocator on another host would use)."""
        return (
            f"host={self.host} port={self.port} dbname={dbname} user={SUPERUSER} "
            f"password={self.password} connect_timeout=5"
        )

    def running(self) -> bool:
        return self.process is not None and self.process.running()

    def ready(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.dsn(), connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False

    def start(self, timeout: float = 60.0) -> PostgresServer:
        """Start (or restart after `stop`) the postmaster on the same port and data."""
        if self.running():
            return self
        argv = [
            str(self.bindir / "postgres"),
            "-D",
            str(self.data_dir),
            "-p",
            str(self.port),
            "-c",
            f"listen_addresses={self.host}",
            "-c",
            f"unix_socket_directories={self.socket_dir}",
            "-c",
            "max_connections=300",
            "-c",
            f"fsync={'on' if self.fsync else 'off'}",
        ]
        self.process = ChildProcess("postgres", argv, self.log_path, user=self.account).start()
        self.process.wait_until(self.ready, timeout, "accepting connections")
        logger.info("postgres ready on %s:%d (data %s)", self.host, self.port, self.data_dir)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT: clients are disconnected, nothing is lost), then make sure."""
        if self.process is None:
            return
        self.process.signal(signal.SIGINT)
        if self.process.process is not None:
            try:
                self.process.process.wait(timeout)
            except subprocess.TimeoutExpired:
                logger.warning("postgres did not shut down in %.0fs", timeout)
        self.process.stop()

    def create_database(self, name: str) -> str:
        """Create database `name` (if new) and return its DSN."""
        if not _DB_NAME.match(name):
            raise ValueError(f"database name must match {_DB_NAME.pattern}, got {name!r}")
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if found.fetchone() is None:
                conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        if not _DB_NAME.match(name):
            raise ValueError(f"database name must match {_DB_NAME.pattern}, got {name!r}")
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def close(self) -> None:
        self.stop()


def start_postgres(
    root: str | os.PathLike[str],
    *,
    port: int | None = None,
    account: str | None = DEFAULT_ACCOUNT,
    fsync: bool = True,
    timeout: float = 60.0,
) -> PostgresServer:
    """Initialise `root` (once) and start a server on `port` (a free one by default).

    As root the server runs as `account`; as any other user it runs as that user. `root` keeps
    the data, the socket folder, the log and the superuser's password (`password`, 0600): a
    second call on the same folder starts the same cluster again.
    """
    bindir = find_postgres_bindir()
    if bindir is None:
        raise StackError(
            "PostgreSQL is not installed (no postgres/initdb on PATH or under "
            f"{_BIN_GLOB}): apt-get install postgresql"
        )
    folder = Path(root).resolve()
    run_as = _account(account)
    if len(str(folder / "run" / ".s.PGSQL.65535")) > _SOCKET_MAX:
        raise StackError(f"postgres root {folder} is too long for a Unix socket path")
    folder.mkdir(parents=True, exist_ok=True)
    password_file = folder / "password"
    if password_file.exists():
        password = password_file.read_text().strip()
    else:
        password = new_password()
        write_private(password_file, password + "\n")
    data, sockets = folder / "data", folder / "run"
    for path in (data, sockets):
        path.mkdir(exist_ok=True)
        _give(path, run_as)
    os.chmod(data, 0o700)
    if run_as is not None:
        _check_reachable(folder, run_as)
    if not (data / "PG_VERSION").exists():
        _initdb(bindir, data, password, run_as, folder / "initdb.log")
    server = PostgresServer(
        root=folder,
        port=port or free_port(),
        bindir=bindir,
        account=run_as,
        password=password,
        fsync=fsync,
    )
    return server.start(timeout)


def _account(account: str | None) -> str | None:
    """Root must hand the server to an unprivileged account; anyone else runs it themselves."""
    if os.geteuid() != 0:
        return None
    name = account or DEFAULT_ACCOUNT
    try:
        pwd.getpwnam(name)
    except KeyError:
        raise StackError(
            f"PostgreSQL refuses to run as root and account {name!r} does not exist "
            "(Debian's postgresql package creates 'postgres')"
        ) from None
    return name


def _give(path: Path, account: str | None) -> None:
    if account is not None:
        entry = pwd.getpwnam(account)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def _check_reachable(folder: Path, account: str) -> None:
    """Every parent must be traversable by the account, or initdb fails with a cryptic error."""
    for parent in (folder, *folder.parents):
        if not os.stat(parent).st_mode & 0o001:
            owner = pwd.getpwuid(os.stat(parent).st_uid).pw_name
            if owner != account:
                raise StackError(
                    f"account {account!r} cannot reach {folder}: {parent} is not "
                    "world-traversable (chmod o+x it, or use a folder under /tmp)"
                )


def _initdb(bindir: Path, data: Path, password: str, account: str | None, log: Path) -> None:
    pwfile = data.parent / "initdb.pw"
    write_private(pwfile, password + "\n")
    _give(pwfile, account)
    argv = [
        str(bindir / "initdb"),
        "-D",
        str(data),
        "-U",
        SUPERUSER,
        f"--pwfile={pwfile}",
        "--auth=scram-sha-256",
        "--encoding=UTF8",
        "--locale=C",
        "--no-sync",
    ]
    try:
        with open(log, "ab") as out:
            done = subprocess.run(
                argv, stdout=out, stderr=subprocess.STDOUT, user=account, check=False
            )
    finally:
        pwfile.unlink(missing_ok=True)
    if done.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise StackError(f"initdb failed (exit {done.returncode}); log {log}:\n{tail}")
    logger.info("initialised a PostgreSQL cluster in %s", data)
