"""Every command the README shows exists and is accepted as printed.

The first-ten-minutes block runs against a live stack (tests/e2e/test_readme.py); here the
rest run for real where they can (`/etc/ds01` and `/opt/ds01` become this test's folders,
the policy the repository's example) and are at least parsed where they need a host (make's
targets dry-run, the sim activity as the README sets it, with a state file of our own).
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from ds01.gpu import sim_cli

REPO = Path(__file__).resolve().parents[2]
FIRST_TEN_MINUTES = {"gpu-status", "container", "docker", "."}  # run by the e2e test


def readme_commands() -> list[str]:
    """Each command of each ```sh block, continuation lines joined, comments dropped."""
    text = (REPO / "README.md").read_text()
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            command = line.split("  #", 1)[0].strip()
            if command:
                commands.append(command)
    return commands


SHELL_SETUP = {"head", "chown", "chmod"}  # an admin's token files: run, or syntax-checked


def test_the_readme_shows_only_commands_this_test_knows():
    known = FIRST_TEN_MINUTES | SHELL_SETUP
    known |= {"make", "/opt/ds01/.venv/bin/python", ".venv/bin/ds01", "ds01"}
    unknown = [c for c in readme_commands() if c.split()[0] not in known]
    assert unknown == [], "a README command nobody checks"


def real_argv(command: str, tmp_path: Path) -> list[str]:
    """The command with this test's stand-ins for /etc/ds01, /opt/ds01 and the venv."""
    argv = shlex.split(command)
    swapped = []
    for word in argv:
        if word == "/etc/ds01/ds01.yaml":
            word = str(REPO / "config" / "ds01.example.yaml")
        word = word.replace("/etc/ds01", str(tmp_path / "etc"))
        swapped.append(word)
    if swapped[0] in ("/opt/ds01/.venv/bin/python",):
        swapped[0] = sys.executable
    elif swapped[0] == ".venv/bin/ds01":
        swapped[:1] = [sys.executable, "-m", "ds01.cli"]
    return swapped


@pytest.mark.parametrize(
    "command",
    [
        c
        for c in readme_commands()
        if c.split()[0] in ("/opt/ds01/.venv/bin/python", ".venv/bin/ds01")
    ],
)
def test_admin_commands_run_as_printed(command, tmp_path):
    done = subprocess.run(
        real_argv(command, tmp_path), cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("command", [c for c in readme_commands() if c.startswith("make ")])
def test_make_targets_exist(command):
    done = subprocess.run(
        ["make", "-n", *shlex.split(command)[1:]], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("command", [c for c in readme_commands() if c.startswith("ds01 sim-gpu")])
def test_sim_gpu_commands_are_accepted(command, tmp_path):
    argv = shlex.split(command)[2:]
    args = sim_cli.build_parser().parse_args(["--state-file", str(tmp_path / "s.json"), *argv])
    assert args is not None
    if "--container" not in argv:  # needs a container by that name: parsed only
        assert sim_cli.main(["--state-file", str(tmp_path / "s.json"), *argv]) == 0


@pytest.mark.parametrize("command", [c for c in readme_commands() if c.split()[0] in SHELL_SETUP])
def test_token_setup_lines_run_in_a_folder_of_our_own(command, tmp_path):
    """`head … > /etc/ds01/x.token && chmod …` run for real on a stand-in /etc/ds01; a chown
    to service accounts this machine may lack is syntax-checked only."""
    (tmp_path / "etc").mkdir()
    script = command.replace("/etc/ds01", str(tmp_path / "etc"))
    syntax = subprocess.run(["bash", "-n", "-c", script], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    if command.startswith("chown"):
        return
    done = subprocess.run(["bash", "-e", "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    [token] = list((tmp_path / "etc").iterdir())
    assert len(token.read_text().strip()) >= 40  # 32 random bytes, base64
