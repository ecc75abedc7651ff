"""The units as shipped: each service as its unit's User=, files with the documented owners and
modes, and a stop that travels Prometheus -> Alertmanager -> enforcer with every credential.

systemd itself is not needed: `setpriv` gives each process the unit's user and groups, and the
units' ExecStart lines are run with /etc/ds01, /var/lib/ds01, /run/ds01 and the ports moved
into a temporary root. The layout is the README's table ("Files, owners and modes"). When this
interpreter is not readable by those users (a venv under /root), the enforcer runs in a forked
copy of it that became the unit's user instead of a fresh exec.
"""

from __future__ import annotations

import grp
import os
import pwd
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from ds01.promconfig import AlertmanagerSettings, render_alertmanager_config
from ds01.stack import free_port
from enforcer.audit import read_audit
from tests.enforcer.conftest import GPU, WAIT
from tests.exporter.helpers import UnixProxy
from tests.harness.components import require_binary, require_root
from tests.harness.waiting import eventually

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "deploy" / "systemd"
TOKEN = "systemd-layout-token"

# README "Files, owners and modes": path under /etc/ds01 -> (owner, group, mode).
LAYOUT = {
    "enforcer.token": ("ds01", "prometheus", 0o640),
    "alertmanager/web.yml": ("root", "prometheus", 0o640),
    "alertmanager/prometheus.password": ("root", "prometheus", 0o640),
    "alertmanager/admin.password": ("root", "root", 0o600),
}


def _ensure_system_user(name: str) -> None:
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home",
             "--shell", "/usr/sbin/nologin", name],
            check=True, capture_output=True,
        )  # fmt: skip


def unit_exec(name: str) -> list[str]:
    for line in (UNITS / name).read_text().splitlines():
        if line.startswith("ExecStart="):
            return shlex.split(line.removeprefix("ExecStart="))
    raise AssertionError(f"{name} has no ExecStart")


def unit_user(name: str) -> tuple[str, str | None]:
    values = dict(
        line.split("=", 1)
        for line in (UNITS / name).read_text().splitlines()
        if line.startswith(("User=", "Group="))
    )
    return values["User"], values.get("Group")


class ForkedService:
    """A service run in a forked copy of this interpreter that became the unit's user: for
    when this interpreter lives where that user cannot read it (a venv under /root)."""

    def __init__(self, uid: int, gid: int, groups: list[int], argv: list[str], log: Path):
        import multiprocessing

        import ds01.cli  # noqa: F401 - every module the service needs, loaded before the fork
        import enforcer.service  # noqa: F401

        context = multiprocessing.get_context("fork")
        self._process = context.Process(target=self._run, args=(uid, gid, groups, argv, log))
        self._process.start()

    @staticmethod
    def _run(uid: int, gid: int, groups: list[int], argv: list[str], log: Path) -> None:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.setgroups(groups)
        os.setgid(gid)
        os.setuid(uid)
        os.chdir("/")
        from ds01.cli import main

        try:
            code = main(argv[3:])  # past [python, -m, ds01.cli]
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        os._exit(code or 0)

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int | None:
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired("forked service", timeout or 0)
        return self._process.exitcode

    def terminate(self) -> None:
        self._process.terminate()

    def kill(self) -> None:
        self._process.kill()


@dataclass
class Host:
    """A temporary root standing in for /etc/ds01, /var/lib/ds01 and /run/ds01."""

    root: Path
    python: str
    forked_python: bool = False  # the interpreter is not usable by the services' users
    ports: dict[str, int] = field(default_factory=dict)
    children: list[Any] = field(default_factory=list)

    @property
    def etc(self) -> Path:
        return self.root / "etc" / "ds01"

    def path_map(self) -> dict[str, str]:
        return {
            "/etc/ds01": str(self.etc),
            "/var/lib/ds01": str(self.root / "var"),
            "/run/ds01": str(self.root / "run"),
            "127.0.0.1:9093": f"127.0.0.1:{self.ports['alertmanager']}",
            "127.0.0.1:9102": f"127.0.0.1:{self.ports['enforcer']}",
            "127.0.0.1:9090": f"127.0.0.1:{self.ports['prometheus']}",
        }

    def argv(self, unit: str, **replace: str) -> list[str]:
        argv = []
        for arg in unit_exec(unit):
            for old, new in {**self.path_map(), **replace}.items():
                arg = arg.replace(old, new)
            argv.append(arg)
        if argv[0].endswith("/ds01"):  # /opt/ds01/.venv/bin/ds01
            argv[:1] = [self.python, "-m", "ds01.cli"]
        return argv

    def run_as_unit(self, unit: str, *, log: str, **replace: str) -> Any:
        user, group = unit_user(unit)
        argv = self.argv(unit, **replace)
        if self.forked_python and argv[0] == self.python:
            entry = pwd.getpwnam(user)
            gid = grp.getgrnam(group).gr_gid if group else entry.pw_gid
            groups = [] if group else os.getgrouplist(user, entry.pw_gid)
            child = ForkedService(entry.pw_uid, gid, groups, argv, self.root / f"{log}.log")
            self.children.append(child)
            return child
        groups = ["--clear-groups"] if group else ["--init-groups"]  # systemd: User= alone
        setpriv = [require_binary("setpriv"), f"--reuid={user}", f"--regid={group or user}"]
        out = open(self.root / f"{log}.log", "ab")
        child = subprocess.Popen(
            [*setpriv, *groups, *argv],
            stdout=out, stderr=subprocess.STDOUT, cwd="/",
        )  # fmt: skip
        out.close()
        self.children.append(child)
        return child

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


def _chown(path: Path, owner: str, group: str, mode: int) -> None:
    os.chown(path, pwd.getpwnam(owner).pw_uid, grp.getgrnam(group).gr_gid)
    os.chmod(path, mode)


@pytest.fixture
def host() -> Iterator[Host]:
    require_root("running services as their units' users")
    for binary in ("setpriv", "useradd"):
        require_binary(binary)
    for user in ("ds01", "prometheus"):
        _ensure_system_user(user)
    python = os.environ.get("DS01_SERVICE_PYTHON", sys.executable)
    probe = subprocess.run(
        ["setpriv", "--reuid=ds01", "--regid=ds01", "--clear-groups", python, "-c",
         "import enforcer.cli"],
        capture_output=True, text=True,
    )  # fmt: skip
    root = Path(tempfile.mkdtemp(prefix="ds01u-", dir="/tmp"))
    root.chmod(0o755)
    host = Host(root, python, forked_python=probe.returncode != 0)
    host.ports = {n: free_port() for n in ("alertmanager", "enforcer", "prometheus")}
    for folder in (host.etc / "alertmanager", host.etc / "prometheus", root / "run"):
        folder.mkdir(parents=True)
    for folder in (root / "etc", host.etc, host.etc / "alertmanager", host.etc / "prometheus",
                   root / "run"):  # fmt: skip
        folder.chmod(0o755)
    # StateDirectory= folders, as systemd makes them: owned by the unit's user.
    for unit, sub, mode in (
        ("ds01-enforcer.service", "enforcer", 0o750),
        ("ds01-alertmanager.service", "alertmanager", 0o700),
        ("ds01-prometheus.service", "prometheus", 0o700),
    ):
        folder = root / "var" / sub
        folder.mkdir(parents=True)
        user, group = unit_user(unit)
        _chown(folder, user, group or user, mode)
    (root / "var").chmod(0o755)
    yield host
    for child in host.children:
        if child.poll() is None:
            child.terminate()
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(5)
    shutil.rmtree(root, ignore_errors=True)


def _write_policy(host: Host) -> None:
    policy = host.etc / "ds01.yaml"
    policy.write_text("stop_grace: 0s\n")
    policy.chmod(0o644)


def _write_token(host: Host, owner: str, group: str, mode: int) -> Path:
    token = host.etc / "enforcer.token"
    token.write_text(TOKEN + "\n")
    _chown(token, owner, group, mode)
    return token


def test_a_stop_travels_prometheus_alertmanager_enforcer_as_the_units_users(
    host, dockerd, containers, deadlines, series_server
):
    require_binary("prometheus")
    require_binary("prometheus-alertmanager", "alertmanager")
    _write_policy(host)
    token = _write_token(host, *LAYOUT["enforcer.token"])
    webauth = subprocess.run(
        [sys.executable, "-m", "ds01.webauth", "--out-dir", str(host.etc / "alertmanager"),
         "--group", "prometheus"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "web.yml" in webauth.stdout
    for name, (owner, group, mode) in LAYOUT.items():
        info = (host.etc / name).stat()
        assert (pwd.getpwuid(info.st_uid).pw_name, grp.getgrgid(info.st_gid).gr_name) == (
            owner,
            group,
        ), name
        assert info.st_mode & 0o777 == mode, name
    admin = ("admin", (host.etc / "alertmanager" / "admin.password").read_text().strip())

    am_config = render_alertmanager_config(
        AlertmanagerSettings(
            enforcer_url=f"http://127.0.0.1:{host.ports['enforcer']}",
            token_file=str(token),
            group_wait=0,
            group_interval=1,
            repeat_interval=3600,
        )
    )
    (host.etc / "alertmanager" / "alertmanager.yml").write_text(am_config)
    (host.etc / "alertmanager" / "alertmanager.yml").chmod(0o644)
    _write_prometheus_config(host, series_server.target)

    # dockerd's socket as the docker.socket drop-in leaves it: root:ds01 0660 in /run/ds01.
    proxy = UnixProxy(host.root / "run" / "dockerd.sock", dockerd.socket_path)
    proxy.restore()
    _chown(proxy.path, "root", "ds01", 0o660)
    try:
        enforcer = host.run_as_unit(
            "ds01-enforcer.service",
            log="enforcer",
            **{"http://127.0.0.1:9090": deadlines.prometheus.url},
        )
        alertmanager = host.run_as_unit("ds01-alertmanager.service", log="alertmanager")
        prometheus = host.run_as_unit("ds01-prometheus.service", log="prometheus")
        _wait_up(host, enforcer, "enforcer", f"http://127.0.0.1:{host.ports['enforcer']}/healthz")
        _wait_up(
            host, alertmanager, "alertmanager",
            f"http://127.0.0.1:{host.ports['alertmanager']}/-/ready", auth=admin,
        )  # fmt: skip
        _wait_up(
            host, prometheus, "prometheus", f"http://127.0.0.1:{host.ports['prometheus']}/-/ready"
        )

        box = containers(gpus=[GPU])
        deadlines.publish(box, idle=time.time() + 3600, runtime=time.time() - 5)

        def stopped() -> bool:
            box.reload()
            return box.status == "exited"

        eventually(stopped, 60, f"the stop delivered end to end\n{host.log('alertmanager')}")
    finally:
        proxy.cut()
    audit = host.root / "var" / "enforcer" / "enforcer-audit.jsonl"
    [record] = eventually(
        lambda: [r for r in read_audit(audit) if r["container_id"] == box.id],
        WAIT,
        "the stop's audit record (written once the stop returned)",
    )
    assert record["decision"] == "stopped" and record["reason"] == "max_runtime"
    ds01 = pwd.getpwnam("ds01").pw_uid
    for name, mode in (("enforcer-audit.jsonl", 0o640), ("enforcer.db", 0o600)):
        info = (host.root / "var" / "enforcer" / name).stat()
        assert (info.st_uid, info.st_mode & 0o777) == (ds01, mode), name


@pytest.mark.parametrize(
    ("owner", "group", "mode", "message"),
    [
        ("prometheus", "prometheus", 0o600, "is owned by prometheus; it must belong to ds01"),
        ("ds01", "prometheus", 0o644, "accessible by group or others (mode 0644)"),
        ("ds01", "ds01", 0o660, "accessible by group or others (mode 0660)"),
    ],
)
def test_the_enforcer_refuses_a_token_file_with_the_wrong_owner_or_mode(
    host, owner, group, mode, message
):
    _write_policy(host)
    _write_token(host, owner, group, mode)

    child = host.run_as_unit("ds01-enforcer.service", log="refused")

    assert child.wait(30) == 2
    text = host.log("refused")
    assert "refusing to start" in text and message in text
    assert TOKEN not in text


def _write_prometheus_config(host: Host, target: str) -> None:
    """Prometheus signs in to Alertmanager with the password file; one stop rule."""
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["stop.yml"],
        "alerting": {
            "alertmanagers": [
                {
                    "basic_auth": {
                        "username": "prometheus",
                        "password_file": str(host.etc / "alertmanager" / "prometheus.password"),
                    },
                    "static_configs": [{"targets": [f"127.0.0.1:{host.ports['alertmanager']}"]}],
                }
            ]
        },
        "scrape_configs": [
            {"job_name": "ds01-exporter", "static_configs": [{"targets": [target]}]}
        ],
    }
    rule = {
        "groups": [
            {
                "name": "stop",
                "rules": [
                    {
                        "alert": "GPUContainerMaxRuntime",
                        "expr": "ds01_container_runtime_deadline_timestamp_seconds < time()",
                        "labels": {"severity": "critical", "action": "stop",
                                   "reason": "max_runtime"},
                    }
                ],
            }
        ]
    }  # fmt: skip
    for name, data in (("prometheus.yml", config), ("stop.yml", rule)):
        path = host.etc / "prometheus" / name
        path.write_text(yaml.safe_dump(data))
        path.chmod(0o644)


def _wait_up(
    host: Host, child: subprocess.Popen, name: str, url: str, auth: tuple[str, str] | None = None
) -> None:
    def up() -> bool:
        if child.poll() is not None:
            pytest.fail(f"{name} exited {child.returncode}:\n{host.log(name)}")
        try:
            return requests.get(url, timeout=1, auth=auth).status_code == 200
        except requests.RequestException:
            return False

    eventually(up, WAIT, f"{name} answering")
