"""The private PostgreSQL launcher: start, databases, outage (stop/start) and clear errors."""

from __future__ import annotations

import os

import psycopg
import pytest

from ds01.postgres_server import PostgresServer, find_postgres_bindir, start_postgres
from ds01.stack import StackError


def test_bindir_holds_the_server_binaries(postgres_server: PostgresServer) -> None:
    bindir = find_postgres_bindir()
    assert bindir is not None
    assert (bindir / "postgres").is_file() and (bindir / "initdb").is_file()


def test_a_database_dsn_connects_as_the_superuser(postgres_dsn: str) -> None:
    with psycopg.connect(postgres_dsn) as conn:
        name, user = conn.execute("SELECT current_database(), current_user").fetchone()
    assert name.startswith("t_") and user == "ds01"


def test_wrong_password_is_refused(postgres_server: PostgresServer) -> None:
    dsn = postgres_server.dsn().replace(postgres_server.password, "wrong")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(dsn)


def test_stop_then_start_keeps_the_data(postgres_factory) -> None:
    server = postgres_factory()
    dsn = server.create_database("keep")
    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE TABLE t (x int)")
        conn.execute("INSERT INTO t VALUES (42)")
    server.stop()
    assert not server.running()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=2)
    server.start()
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT x FROM t").fetchone() == (42,)


def test_second_start_on_the_same_folder_reuses_the_cluster(postgres_factory) -> None:
    server = postgres_factory()
    server.create_database("again")
    server.stop()
    other = start_postgres(server.root, port=server.port, fsync=False)
    try:
        assert other.password == server.password
        with psycopg.connect(other.dsn("again")) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        other.close()


def test_bad_database_name_is_refused(postgres_server: PostgresServer) -> None:
    with pytest.raises(ValueError, match="database name"):
        postgres_server.create_database('x"; DROP DATABASE postgres; --')


@pytest.mark.skipif(os.geteuid() != 0, reason="the account matters only when run as root")
def test_missing_account_is_named(tmp_path) -> None:
    with pytest.raises(StackError, match="no-such-account"):
        start_postgres(tmp_path / "pg", account="no-such-account")


@pytest.mark.skipif(os.geteuid() != 0, reason="reachability matters only when run as root")
def test_unreachable_folder_is_named(tmp_path) -> None:
    os.chmod(tmp_path, 0o700)
    with pytest.raises(StackError, match="cannot reach"):
        start_postgres(tmp_path / "pg")
