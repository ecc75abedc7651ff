"""Keep-alive reads: through the host's view of a mount, else the archive API once per interval."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ds01.containers import ContainerFacts
from ds01.dockerio import DockerLink, connect
from exporter.health import ErrorCounters
from exporter.inventory import KnownContainer, Mount, known_container
from exporter.keepalive import KeepAliveChecker, docker_archive_stat, host_path, next_check
from tests.exporter.helpers import UnixProxy
from tests.harness.components import require_binary, require_root

PATH = "/workspace/.keep-alive"


def test_host_path_uses_the_deepest_mount_holding_the_file():
    mounts = [
        Mount("/", "/srv/root", "bind"),
        Mount("/workspace", "/home/u/ws", "bind"),
        Mount("/workspace/data", "/data", "bind"),
        Mount("/tmp", "", "tmpfs"),
    ]
    assert host_path(mounts, PATH) == ("/home/u/ws/.keep-alive", "/home/u/ws")
    assert host_path([Mount(PATH, "/host/ka", "bind")], PATH) == ("/host/ka", "/host/ka")
    assert host_path([Mount("/workspace2", "/x", "bind")], PATH) is None
    assert host_path([Mount("/workspace", "", "tmpfs")], PATH) is None


def container(cid: str = "c" * 64, mounts: tuple[Mount, ...] = ()) -> KnownContainer:
    facts = ContainerFacts(cid, "n", "img", "docker", "u", False, "", ("MIG-x",), True, 1.0, 1.0)
    return KnownContainer(facts, mounts)


class ArchiveStub:
    """Stands in for Docker's archive endpoint (tests only; the real one runs in integration)."""

    def __init__(self, mtime: float | None = None, fail: bool = False) -> None:
        self.mtime, self.fail, self.calls = mtime, fail, 0

    def __call__(self, container_id: str, path: str) -> float | None:
        self.calls += 1
        if self.fail:
            raise ConnectionError("docker is down")
        return self.mtime


def checker(stub: ArchiveStub | None, errors: ErrorCounters | None = None) -> KeepAliveChecker:
    return KeepAliveChecker(
        path=PATH, archive_stat=stub, interval=60.0, errors=errors or ErrorCounters()
    )


def test_reads_through_the_mount_every_time_without_docker(tmp_path):
    stub = ArchiveStub(mtime=1.0)
    ka = checker(stub)
    c = container(mounts=(Mount("/workspace", str(tmp_path), "bind"),))
    assert ka.mtime(c, now=0.0) is None  # absent: the mount is visible, the file is not there
    (tmp_path / ".keep-alive").touch()
    os.utime(tmp_path / ".keep-alive", (1234.0, 1234.0))
    assert ka.mtime(c, now=1.0) == 1234.0
    assert stub.calls == 0


def test_a_reloaded_keep_alive_path_is_read_at_its_new_place(tmp_path):
    """The host path of each container is remembered between cycles, but per policy path."""
    ka = checker(None)
    c = container(mounts=(Mount("/workspace", str(tmp_path), "bind"),))
    for name, mtime in ((".keep-alive", 1000.0), ("keep", 2000.0)):
        (tmp_path / name).touch()
        os.utime(tmp_path / name, (mtime, mtime))
    assert ka.mtime(c, now=0.0) == 1000.0
    ka.path = "/workspace/keep"  # SIGHUP with a new keep_alive.path
    assert ka.mtime(c, now=1.0) == 2000.0
    same_id_new_mounts = container(mounts=(Mount("/workspace", str(tmp_path / "gone"), "bind"),))
    assert ka.mtime(same_id_new_mounts, now=2.0) is None  # not the remembered place


def test_a_host_path_that_cannot_be_a_folder_is_counted_not_taken_as_absent(tmp_path):
    errors = ErrorCounters()
    stub = ArchiveStub(mtime=42.0)
    (tmp_path / "ws").write_text("a file where a folder was expected")
    c = container(mounts=(Mount("/workspace", str(tmp_path / "ws"), "bind"),))
    assert checker(stub, errors).mtime(c, now=0.0) is None
    assert errors.values()["keepalive"] == 1
    assert stub.calls == 0


def test_a_mount_not_visible_here_falls_back_to_the_archive_api(tmp_path):
    stub = ArchiveStub(mtime=42.0)
    c = container(mounts=(Mount("/workspace", str(tmp_path / "not-here"), "bind"),))
    assert checker(stub).mtime(c, now=0.0) == 42.0
    assert stub.calls == 1


def test_archive_reads_happen_about_once_per_interval():
    stub = ArchiveStub(mtime=42.0)
    ka = checker(stub)
    c = container()
    assert [ka.mtime(c, now=t) for t in (0.0, 29.9)] == [42.0, 42.0]
    assert stub.calls == 1  # never twice within half an interval
    stub.mtime = None
    assert ka.mtime(c, now=90.0) is None  # always again within one and a half
    assert stub.calls == 2
    due = next_check(c.facts.container_id, checked_at=90.0, interval=60.0)
    assert ka.mtime(c, now=due - 0.1) is None and stub.calls == 2
    assert ka.mtime(c, now=due) is None and stub.calls == 3


@pytest.mark.parametrize("checked_at", [0.0, 17.5, 59.0, 1000.0])
def test_next_check_keeps_each_container_on_its_own_phase(checked_at):
    for cid in ("a" * 64, "b" * 64, "c" * 64):
        due = next_check(cid, checked_at=checked_at, interval=60.0)
        assert checked_at + 30.0 <= due < checked_at + 90.0
        # read on time, the next read comes exactly one interval later
        assert next_check(cid, checked_at=due, interval=60.0) == pytest.approx(due + 60.0)


def test_containers_first_read_together_are_reread_spread_over_the_interval():
    """250 containers first read in one cycle: later reads spread over 5-second cycles."""
    stub = ArchiveStub(mtime=42.0)
    ka = checker(stub)
    boxes = [container(f"{n:064x}") for n in range(250)]
    calls = []
    for cycle in range(40):
        before = stub.calls
        for box in boxes:
            ka.mtime(box, now=cycle * 5.0)
        calls.append(stub.calls - before)
    assert calls[0] == 250  # each read at once when first seen
    assert max(calls[1:]) <= 2.5 * 250 / 12  # then ~21 a cycle, never all in one
    assert sum(calls[18:30]) == 250  # and each once per interval (12 cycles)


def test_archive_failures_are_counted_and_keep_the_last_answer():
    errors = ErrorCounters()
    stub = ArchiveStub(mtime=42.0)
    ka = checker(stub, errors)
    c = container()
    assert ka.mtime(c, now=0.0) == 42.0
    stub.fail = True
    assert ka.mtime(c, now=100.0) == 42.0
    assert errors.values()["keepalive"] == 1
    assert ka.mtime(c, now=120.0) == 42.0  # not retried before the interval passes
    assert stub.calls == 2


def test_without_docker_or_mount_the_file_counts_as_absent():
    assert checker(None).mtime(container(), now=0.0) is None


def test_retain_forgets_removed_containers():
    stub = ArchiveStub(mtime=1.0)
    ka = checker(stub)
    ka.mtime(container("a" * 64), now=0.0)
    ka.retain([])
    ka.mtime(container("a" * 64), now=1.0)
    assert stub.calls == 2


# --- as the shipped unit runs it: an unprivileged service user, a 0700 home -----------------

SERVICE_USER = "ds01-test-svc"


@pytest.fixture(scope="session")
def service_user() -> tuple[int, int]:
    """(uid, gid) of an unprivileged system user, created once; tolerant of a concurrent run."""
    require_root("creating a service user")
    useradd = require_binary("useradd")
    try:
        entry = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        done = subprocess.run(
            [useradd, "--system", "--user-group", "--no-create-home",
             "--shell", "/usr/sbin/nologin", SERVICE_USER],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode not in (0, 9):  # 9: it exists (made meanwhile by another run)
            pytest.fail(f"useradd {SERVICE_USER}: {done.stderr}", pytrace=False)
        entry = pwd.getpwnam(SERVICE_USER)
    return entry.pw_uid, entry.pw_gid


@pytest.fixture
def private_home() -> Iterator[Path]:
    """A home folder like /home/alice: mode 0700, owned by someone else than the service."""
    root = Path(tempfile.mkdtemp(prefix="ds01k-", dir="/tmp"))
    os.chmod(root, 0o755)
    home = root / "alice"
    (home / "ws").mkdir(parents=True)
    os.chmod(home, 0o700)
    yield home
    shutil.rmtree(root, ignore_errors=True)


def _read_as(uid: int, gid: int, read) -> dict:
    """Run `read()` in a child that has dropped to uid/gid (no groups), return its JSON answer."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 0
        try:
            os.close(rfd)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            os.write(wfd, json.dumps(read()).encode())
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, then exit
            os.write(wfd, json.dumps({"child_error": repr(exc)}).encode())
            code = 1
        finally:
            os._exit(code)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as reader:
        answer = json.loads(reader.read() or b"{}")
    os.waitpid(pid, 0)
    return answer


@pytest.mark.integration
def test_an_unprivileged_exporter_reads_a_keep_alive_file_in_a_0700_home(
    service_user, private_home, dockerd, containers
):
    uid, gid = service_user
    keep_alive = private_home / "ws" / ".keep-alive"
    keep_alive.touch()
    os.utime(keep_alive, (1_700_000_000.0, 1_700_000_000.0))
    box = containers(gpus=["0"], volumes={str(private_home / "ws"): {"bind": "/workspace"}})
    proxy = UnixProxy(
        Path(tempfile.mkdtemp(prefix="ds01k-", dir="/tmp")) / "d.sock", dockerd.socket_path
    )
    os.chmod(proxy.path.parent, 0o755)
    proxy.restore()
    os.chown(proxy.path, uid, gid)  # the service's access to Docker (the unit: group docker)
    try:
        entry = known_container(box.client.api.inspect_container(box.id), ())
        assert host_path(entry.mounts, PATH) == (str(keep_alive), str(private_home / "ws"))

        def read() -> dict:
            errors = ErrorCounters()
            ka = KeepAliveChecker(
                path=PATH,
                archive_stat=docker_archive_stat(DockerLink(lambda: connect(proxy.url))),
                interval=60.0,
                errors=errors,
            )
            try:
                os.lstat(keep_alive)
                direct = "readable"
            except PermissionError:
                direct = "denied"
            return {"direct": direct, "mtime": ka.mtime(entry, now=0.0), "errors": errors.values()}

        answer = _read_as(uid, gid, read)
    finally:
        proxy.cut()
        shutil.rmtree(proxy.path.parent, ignore_errors=True)
    assert answer.get("direct") == "denied", answer  # the home really is closed to the service
    assert answer["mtime"] == pytest.approx(1_700_000_000.0), answer
    assert answer["errors"]["keepalive"] == 0
