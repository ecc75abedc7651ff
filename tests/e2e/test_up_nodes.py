"""`ds01 up --nodes 2` as an admin runs it: a banner per node with its DOCKER_HOST, each node's
gateway answering as a user, SIGHUP re-rendering every node's policy, Ctrl-C stopping all."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from ds01.cluster_up import ClusterEndpoints, cluster_banner
from ds01.supervisor import Endpoints
from ds01.up import build_parser
from tests.gateway.clients import run_as, unprivileged_users  # noqa: F401 - a fixture
from tests.harness.components import require_cluster_stack, require_root
from tests.harness.processes import processes_mentioning, stop_stack, wait_for_log

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]


def _up(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ds01.cli", "up", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def test_the_nodes_flag_defaults_to_one_host():
    assert build_parser().parse_args([]).nodes == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--nodes", "0"], "--nodes: must be 1 or more, got 0"),
        (["--nodes", "17"], "--nodes: at most 16 on one machine, got 17"),
        (["--nodes", "2", "--gpu-backend", "nvml"], "every pretend node has simulated GPUs"),
        (["--nodes", "2", "--docker-host", "unix:///x.sock"], "drop --docker-host"),
        (["--nodes", "2", "--state-dir", "/tmp/" + "d" * 80], "too long for the nodes' Unix"),
    ],
)
def test_nodes_refuses_what_cannot_work_on_one_machine(argv, message, tmp_path):
    done = _up("--state-dir", str(tmp_path / "state"), *argv)
    assert done.returncode == 2
    assert message in done.stderr
    given = argv[argv.index("--state-dir") + 1] if "--state-dir" in argv else tmp_path / "state"
    assert not Path(given).exists(), "nothing started, nothing written"


def _refused_two_nodes(tmp_path: Path, changes: dict, first_part: str):
    """`ds01 up --nodes 2` with the example policy plus `changes`: (its result, the policy);
    asserts that `first_part` of the state (the first thing it would start) never appeared."""
    require_root("ds01 up --nodes")
    example = yaml.safe_load((REPO / "config" / "ds01.example.yaml").read_text())
    policy = tmp_path / "mine.yaml"
    policy.write_text(yaml.safe_dump({**example, **changes}))
    state = Path(tempfile.mkdtemp(prefix="ds01p-", dir="/tmp"))  # short: socket paths
    try:
        done = _up("--nodes", "2", "--state-dir", str(state / "s"), "--policy", str(policy))
        assert not (state / "s" / first_part).exists(), "refused before anything started"
    finally:
        shutil.rmtree(state, ignore_errors=True)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    return done, policy


def test_a_policy_with_its_own_cluster_section_is_refused_by_name(tmp_path):
    cluster = {"nodes": [{"name": "a", "exporter": "a:1", "enforcer": "http://a:2"}]}
    done, policy = _refused_two_nodes(tmp_path, {"cluster": cluster}, "node-1")
    assert f"{policy}: cluster: ds01 up --nodes writes its own cluster section" in done.stderr


def test_a_topology_whose_fixed_uuids_every_node_would_share_is_refused(tmp_path):
    topology = tmp_path / "fixed.yaml"
    topology.write_text("gpus:\n  - {model: NVIDIA H200, uuid: GPU-fixed-0}\n")
    gpu = {"backend": "sim", "sim_topology": str(topology)}
    done, _ = _refused_two_nodes(tmp_path, {"gpu": gpu}, "postgres")
    assert f"sim topology {topology} gives every node the same devices (GPU-fixed-0" in done.stderr


def test_cluster_banner_prints_each_nodes_docker_host_and_the_shared_parts():
    nodes = {
        name: Endpoints(
            docker_host=f"unix:///c/{name}/docker/docker.sock",
            gateway_socket=f"/c/{name}/docker.sock",
            exporter=f"http://127.0.0.1:{port}",
            audit_log=f"/c/{name}/enforcer/enforcer-audit.jsonl",
        )
        for name, port in (("node-1", 1), ("node-2", 2))
    }
    ep = ClusterEndpoints(
        nodes=nodes,
        prometheus="http://127.0.0.1:9",
        alertmanager="http://127.0.0.1:8",
        postgres="127.0.0.1:7",
        dsn_file="/c/postgres.dsn",
    )
    text = cluster_banner(ep, Path("/p.yaml"), demo=False)
    assert "2 nodes on this machine" in text
    for name in nodes:
        assert f"  {name}:" in text
        host = f"unix:///c/{name}/docker.sock"
        assert re.search(
            rf"^    gateway\s+{re.escape(host)}   export DOCKER_HOST={host}$", text, re.M
        )
        assert f"audit log /c/{name}/enforcer/enforcer-audit.jsonl" in text
    assert "http://127.0.0.1:9/alerts" in text and "127.0.0.1:7" in text
    assert "password" not in text.lower().replace("basic auth", "")


def test_ds01_up_nodes_2_runs_two_nodes_reloads_them_and_ctrl_c_stops_all(
    unprivileged_users,  # noqa: F811
):
    require_cluster_stack()
    base = Path(tempfile.mkdtemp(prefix="ds01n-", dir="/tmp"))
    os.chmod(base, 0o755)
    policy = base / "ds01.yaml"
    example = (REPO / "config" / "ds01.example.yaml").read_text()
    policy.write_text(example)
    state, log = base / "s", base / "up.out"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("DS01_POLICY", None)
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ds01.cli", "up", "--nodes", "2"]
            + ["--state-dir", str(state), "--policy", str(policy)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        text = wait_for_log(log, "Ctrl-C stops everything", proc, 180.0)
        hosts = re.findall(r"^    gateway\s+(unix://\S+)\s+export DOCKER_HOST=(\S+)$", text, re.M)
        assert len(hosts) == 2 and all(a == b for a, b in hosts), text
        alice = unprivileged_users[0]
        for node, (_, host) in zip(("node-1", "node-2"), hosts, strict=True):
            done = run_as(alice, ["docker", "info", "--format", "{{.DockerRootDir}}"],
                          env={"DOCKER_HOST": host})  # fmt: skip
            assert done.returncode == 0, done.stderr
            assert done.stdout.strip() == str(state / node / "docker" / "data"), done.stdout
        for node in ("node-1", "node-2"):
            assert (state / node / "env.sh").exists()
            mine = yaml.safe_load((state / node / "ds01.yaml").read_text())
            assert mine["services"]["node"] == node
        # A running GPU container at Ctrl-C: its node's dockerd stops it, nothing outlives it.
        argv = ["docker", "run", "-d", "--gpus", "1", "--network", "none", "ds01/busybox"]
        done = run_as(alice, [*argv, "sleep", "3600"], env={"DOCKER_HOST": hosts[0][1]})
        assert done.returncode == 0, done.stderr
        # SIGHUP: a bad file is refused and no node's policy changes; a good one reaches all.
        before = {n: (state / n / "ds01.yaml").read_text() for n in ("node-1", "node-2")}
        policy.write_text(example + "\nidle_warning: soon\n")
        proc.send_signal(signal.SIGHUP)
        wait_for_log(log, "policy reload refused", proc, 180.0)
        assert {n: (state / n / "ds01.yaml").read_text() for n in before} == before
        policy.write_text(example + "\nidle_warning: 7m\n")
        proc.send_signal(signal.SIGHUP)
        wait_for_log(log, "policy reloaded from", proc, 180.0)
        for node in ("node-1", "node-2"):
            assert yaml.safe_load((state / node / "ds01.yaml").read_text())["idle_warning"] == "7m"
        rules = "".join(p.read_text() for p in (state / "prometheus" / "rules").glob("*"))
        assert "time() + 420" in rules
        proc.send_signal(signal.SIGINT)
        assert proc.wait(90) == 0
        assert processes_mentioning(str(state)) == []
    finally:
        stop_stack(proc, state)
        shutil.rmtree(base, ignore_errors=True)
