import pytest

from allocator import cli, container_cli
from allocator.container_listing import container_timing, exporter_state


def test_allocator_parser_defaults():
    args = cli.build_parser().parse_args([])
    assert args.socket is None and args.threads == 64
    assert args.tick == 0.1 and args.ticket_grace == 10.0


def test_allocator_parser_reads_durations():
    args = cli.build_parser().parse_args(["--tick", "250ms", "--ticket-grace", "1m"])
    assert args.tick == 0.25 and args.ticket_grace == 60.0


def test_listen_without_token_file_is_refused(capsys, tmp_path):
    with pytest.raises(SystemExit) as stop:
        cli.main(["--listen", "127.0.0.1:9999", "--state-dir", str(tmp_path)])
    assert stop.value.code == 2
    assert "--token-file" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--threads", "0"], "--threads: must be at least 1"),
        (["--listen", "nowhere"], "--listen:"),
        (["--token-file", "{tmp}/absent"], "--token-file: refusing to start: token file"),
        (["--token-file", "{tmp}/empty"], "is empty"),
        (["--token-file", "{tmp}/shared"], "accessible by group or others (mode 0644)"),
    ],
)
def test_bad_flags_are_refused_naming_the_flag(capsys, tmp_path, extra, message):
    (tmp_path / "empty").write_text("\n")
    (tmp_path / "empty").chmod(0o600)
    (tmp_path / "shared").write_text("secret\n")
    (tmp_path / "shared").chmod(0o644)
    argv = ["--state-dir", str(tmp_path), *(a.format(tmp=tmp_path) for a in extra)]
    with pytest.raises(SystemExit) as stop:
        cli.main(argv)
    assert stop.value.code == 2
    assert message in capsys.readouterr().err


def test_a_damaged_decision_log_is_refused_naming_the_file_and_line(capsys, tmp_path):
    """Starting without the decisions after a damaged line would lose track of devices: the
    admin decides (the message says how), the allocator does not guess."""
    segment = tmp_path / "allocator.sqlite-decisions.1"
    segment.write_bytes(b"not a decision\n{}\n")
    with pytest.raises(SystemExit) as stop:
        cli.main(["--state-dir", str(tmp_path), "--gpu-backend", "sim"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"refusing to start: {segment}, line 1, is not a decision record" in err
    assert "move the file aside" in err


def test_a_second_allocator_on_the_same_state_is_refused(capsys, tmp_path):
    """Each allocator trusts its own in-memory copy of the live allocations: two on one
    state file would hand out the same device."""
    from allocator.store_sqlite import SqliteAllocationStore

    first = SqliteAllocationStore(tmp_path / "allocator.sqlite")
    with pytest.raises(SystemExit) as stop:
        cli.main(["--state-dir", str(tmp_path), "--gpu-backend", "sim"])
    assert stop.value.code == 2
    assert "refusing to start: another allocator is using" in capsys.readouterr().err
    first.close()


def test_invalid_policy_is_refused_with_the_key(capsys, tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("gpu_wait: soon\n")
    with pytest.raises(SystemExit):
        cli.main(["--policy", str(bad)])
    assert "gpu_wait" in capsys.readouterr().err


def test_container_parser():
    parser = container_cli.build_parser()
    args = parser.parse_args(["deploy", "job", "--profile", "3g.71gb"])
    assert (args.action, args.name, args.profile, args.gpus) == ("deploy", "job", "3g.71gb", 1)
    assert parser.parse_args(["ls"]).action == "ls"
    with pytest.raises(SystemExit):
        parser.parse_args(["deploy", "job", "--gpus", "2", "--profile", "1g.18gb"])


def test_container_cli_without_allocator_says_so(capsys, tmp_path):
    code = container_cli.main(
        ["--socket", str(tmp_path / "none.sock"), "deploy", "job", "--image", "x"]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "container deploy:" in err


def test_timing_from_exporter_state():
    state = {
        "containers": [
            {
                "container_id": "abc",
                "last_busy": 1000.0,
                "idle_deadline": 4600.0,
                "runtime_deadline": float("inf"),
            }
        ]
    }
    idle, stops = container_timing(state, "abc", now=1600.0)
    assert idle == "10m" and stops != "-"
    assert container_timing(state, "other", now=1600.0) == ("-", "-")
    assert container_timing(None, "abc", now=1600.0) == ("-", "-")


def test_unreachable_exporter_degrades_to_none():
    assert exporter_state("http://127.0.0.1:9") is None
    assert exporter_state(None) is None


def test_history_and_list_flags_and_bad_values(capsys, tmp_path):
    from allocator.container_cli import build_parser

    args = build_parser().parse_args(["history", "--since", "2h", "--limit", "5", "--json"])
    assert (args.since, args.limit, args.json, args.user) == (7200, 5, True, None)
    listing = build_parser().parse_args(["ls", "-v", "--json"])
    assert listing.verbose and listing.json
    with pytest.raises(SystemExit):
        build_parser().parse_args(["history", "--since", "soon"])
    assert "argument --since: expected a duration" in capsys.readouterr().err
    socket = str(tmp_path / "none.sock")
    assert container_cli.main(["--socket", socket, "history", "--limit", "0"]) == 1
    assert "--limit: must be from 1 to 1000" in capsys.readouterr().err
    assert container_cli.main(["--socket", socket, "history"]) == 1  # no allocator: one line
    assert capsys.readouterr().err.startswith("container history: ")


def test_a_world_readable_token_file_is_refused(capsys, tmp_path):
    token = tmp_path / "allocator.token"
    token.write_text("admin-secret\n")
    token.chmod(0o644)
    with pytest.raises(SystemExit) as stop:
        cli.main(
            ["--listen", "127.0.0.1:0", "--token-file", str(token), "--state-dir", str(tmp_path)]
        )
    err = capsys.readouterr().err
    assert stop.value.code == 2
    assert "accessible by group or others (mode 0644)" in err and "admin-secret" not in err


@pytest.mark.integration
def test_a_second_allocator_refuses_a_live_socket_and_the_first_keeps_it(capsys, tmp_path):
    import subprocess
    import sys

    from allocator.client import AllocatorClient
    from tests.harness.waiting import eventually

    sock = tmp_path / "a.sock"
    argv = ["--socket", str(sock), "--state-dir", str(tmp_path), "--gpu-backend", "sim",
            "--docker-host", f"unix://{tmp_path}/no-docker.sock"]  # fmt: skip
    first = subprocess.Popen(
        [sys.executable, "-m", "ds01.cli", "allocator", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = AllocatorClient(str(sock))
        eventually(lambda: sock.exists() and client.call("GET", "/healthz")[0] == 200, 30, "up")

        with pytest.raises(SystemExit) as stop:
            cli.main([*argv, "--db", str(tmp_path / "second.sqlite")])

        assert stop.value.code == 2
        assert f"another server is listening on {sock}" in capsys.readouterr().err
        assert client.call("GET", "/healthz")[0] == 200  # the first one still serves its socket
    finally:
        first.terminate()
        first.wait(10)
    assert not sock.exists()  # the first removed its own socket on the way out
