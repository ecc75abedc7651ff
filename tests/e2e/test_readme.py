"""The README's "first ten minutes", run as printed against `ds01 up --demo`.

The only change made to the README's lines is the state folder (`/var/lib/ds01/up` becomes
this test's own), so a test never meets a stack somebody else left running there.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests

from tests.harness.components import require_binary
from tests.harness.containers import remove_named
from tests.harness.processes import stop_stack
from tests.harness.waiting import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
DEFAULT_STATE = "/var/lib/ds01/up"


def readme_commands() -> list[str]:
    """The lines of the README's marked shell block, as printed."""
    text = (REPO / "README.md").read_text()
    block = re.search(
        r"<!-- readme-commands: begin -->\n```sh\n(.*?)```\n<!-- readme-commands: end -->",
        text,
        re.S,
    )
    assert block, "README.md lost its marked first-ten-minutes block"
    return [line for line in block[1].splitlines() if line.strip()]


def test_the_readme_block_starts_with_the_env_file_and_uses_our_commands():
    lines = readme_commands()
    assert lines[0].startswith(f". {DEFAULT_STATE}/env.sh")
    words = {line.split()[0] for line in lines[1:]}
    assert words <= {"gpu-status", "container", "docker"}, words


def wait_for(path: Path, needle: str, proc: subprocess.Popen, timeout: float = 180) -> str:
    deadline = time.monotonic() + timeout
    while needle not in path.read_text():
        assert proc.poll() is None, path.read_text()
        assert time.monotonic() < deadline, path.read_text()
        time.sleep(0.2)
    return path.read_text()


def test_every_command_of_the_first_ten_minutes_works_as_printed(
    dockerd, docker_client, busybox_image, tmp_path
):
    require_binary("docker")
    require_binary("useradd")
    state = Path(tempfile.mkdtemp(prefix="ds01readme-", dir="/tmp"))
    os.chmod(state, 0o755)
    env = dict(os.environ, DOCKER_HOST=dockerd.url, PYTHONUNBUFFERED="1")
    env.pop("DS01_POLICY", None)
    log = tmp_path / "up.out"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ds01.cli", "up", "--demo", "--state-dir", str(state),
             "--policy", str(REPO / "config" / "ds01.example.yaml")],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        banner = wait_for(log, "demo: ", proc)
        assert f". {state}/env.sh" in banner
        assert docker_client.containers.get("demo-idle").labels["ds01.user"] == "ds01demo"
        # a reader needs a few seconds to get here; Prometheus' first scrapes take as long
        prometheus = re.search(r"^  Prometheus\s+(http://\S+)/alerts", banner, re.M)[1]
        query = (
            'count(ds01_container_info{container="demo-idle"}) '
            "and count(ds01_allocator_queue_length)"
        )
        eventually(
            lambda: requests.get(
                f"{prometheus}/api/v1/query", params={"query": query}, timeout=5
            ).json()["data"]["result"],
            60,
            "Prometheus' first scrape of the demo",
        )
        script = "\n".join(line.replace(DEFAULT_STATE, str(state)) for line in readme_commands())
        # a login shell's environment: nothing of this test's DOCKER_HOST or venv leaks in
        clean = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}
        done = subprocess.run(
            ["bash", "-e", "-x", "-c", script],
            env=clean, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        out = done.stdout
        assert re.search(r"^0:\d\s", out, re.M), out  # gpu-status rows by index
        assert "deployed mine" in out and "MIG-" not in out.split("In force for")[0]
        assert re.search(r"ds01: --gpus all gives one device here: \d+(:\d+)? \(", done.stderr)
        assert re.search(r"^mine\s+\d+(:\d+)? \(", out, re.M), out  # container ls
        assert "In force for root:" in out
        assert re.search(r"grant\s+mine", out), out  # container history
        assert "retired mine" in out
    finally:
        stop_stack(proc, state)
        for name in ("mine", "try", "demo-busy", "demo-idle"):
            try:
                remove_named(docker_client, name)
            except Exception:  # noqa: BLE001 - already gone
                continue
        shutil.rmtree(state, ignore_errors=True)
