"""`ds01 check-config FILE --what-if` against a live stack with three users' containers: a
stricter file names exactly the containers that would be stopped, and nothing is stopped."""

from __future__ import annotations

import json
import textwrap

import pytest

from tests.e2e.test_lifecycle import audit_records, deploy
from tests.gateway.clients import DEBIAN_DOCKER, require_docker_cli, run_as

pytestmark = [pytest.mark.e2e, pytest.mark.integration]
WAIT = 60.0  # bounds a hang

TOPOLOGY = """
seed: ds01-whatif
gpus:
  - model: NVIDIA H200
    memory: 141gb
    gpm: true
    mig:
      - {profile: 2g.35gb, gi_id: 1, mig_index: 0}
      - {profile: 2g.35gb, gi_id: 2, mig_index: 1}
      - {profile: 2g.35gb, gi_id: 3, mig_index: 2}
"""

GROUPS = """
groups:
  student: {max_gpus: 2, max_runtime: 24h}
  researcher: {max_gpus: 2, max_runtime: 48h}
  admin: {max_gpus: null, max_runtime: 72h, allow_full_gpu: true}
users: {root: student, ds01alice: student, ds01bob: researcher}
"""

POLICY = (
    "default_group: student\n"
    + GROUPS
    + """
idle_timeout: 10m
idle_warning: 2m
runtime_warning: 1m
gpu_wait: 90s
gpu_hold_after_stop: 2s
container_hold_after_stop: 10m
reservation_ttl: 60s
stop_grace: 2s
unmanaged_gpu: {action: stop, grace: 6s}
gpu: {backend: sim, sim_topology: %s}
"""
)


@pytest.fixture
def stack_policy() -> str:
    return POLICY


@pytest.fixture
def stack_topology() -> str:
    return TOPOLOGY


def test_a_stricter_file_names_exactly_the_containers_it_would_stop_and_stops_nothing(
    stack, docker_client, busybox_image, unprivileged_users, eventually, tmp_path
):
    docker_cli = require_docker_cli(DEBIAN_DOCKER)
    student, researcher = unprivileged_users
    assert (student.name, researcher.name) == ("ds01alice", "ds01bob")
    env = {"DOCKER_HOST": stack.endpoints.gateway_host}
    for user, name in ((student, "wi-student"), (researcher, "wi-researcher")):
        made = run_as(
            user,
            [docker_cli, "run", "-d", "--name", name, "--gpus", "1", "--network", "none"]
            + [busybox_image, "sleep", "3600"],
            env=env,
        )
        assert made.returncode == 0, made.stderr
    stack.cli(*deploy(stack, "wi-root"))
    names = {"wi-student", "wi-researcher", "wi-root"}

    def all_known() -> bool:
        result = stack.cli("ds01", "check-config", "--what-if", "--json", _path(tmp_path, POLICY))
        return {c["container"] for c in json.loads(result.stdout)["containers"]} == names

    eventually(all_known, WAIT, "the three containers' facts in Prometheus")

    # Students' idle timeout down to 1s: every student container has been idle longer (the
    # start-up grace counts as idle time), the researcher's keeps its 10 minutes.
    stricter = POLICY.replace(
        "student: {max_gpus: 2, max_runtime: 24h}",
        "student: {max_gpus: 2, max_runtime: 24h, idle_timeout: 1s}",
    )
    result = stack.cli(
        "ds01", "check-config", "--what-if", "--json", _path(tmp_path, stricter, "strict")
    )
    report = json.loads(result.stdout)
    assert sorted(report["stopped"]) == ["wi-root", "wi-student"]
    verdicts = {c["container"]: c for c in report["containers"]}
    assert verdicts["wi-root"]["reason"] == "idle"
    assert verdicts["wi-researcher"]["action"] == "none"
    assert verdicts["wi-researcher"]["idle_moves_by"] == 0
    assert verdicts["wi-student"]["idle_moves_by"] == pytest.approx(1 - 600)

    text = stack.cli("ds01", "check-config", "--what-if", _path(tmp_path, stricter, "t")).stdout
    assert (
        "stopped at once (2):" in text
        and "wi-researcher (ds01bob" not in text.split("warned at once")[0]
    )

    # A quota of 0 for researchers names the holder with the numbers.
    tight = POLICY.replace("researcher: {max_gpus: 2", "researcher: {max_gpus: 0")
    quota = json.loads(
        stack.cli("ds01", "check-config", "--what-if", "--json", _path(tmp_path, tight, "q")).stdout
    )
    assert quota["over_quota"] == [
        {"user": "ds01bob", "group": "researcher", "holding": 1, "max_gpus": 0}
    ]

    # Nothing changed: every container still runs, no stop was recorded, the policy in force
    # is the installed one.
    for name in names:
        assert docker_client.containers.get(name).status == "running"
    assert not [
        r for r in audit_records(stack.endpoints.audit_log) if r.get("decision") == "stopped"
    ]


def _path(folder, text: str, name: str = "same") -> str:
    path = folder / f"candidate-{name}.yaml"
    topology = folder / "topology.yaml"
    path.write_text(textwrap.dedent(text.replace("%s", str(topology))))
    return str(path)
