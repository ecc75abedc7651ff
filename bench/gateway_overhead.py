"""Docker API gateway against dockerd directly (issue 12): per-request overhead, run, streams.

`ds01 gateway` and `ds01 allocator` run as their own processes in front of a private dockerd,
as in production, and the measuring clients are separate processes, so no figure shares an
interpreter with the gateway. Direct and gateway calls alternate (noise hits both). Requests
run as root (an admin: no ownership probe) and as an unprivileged user (inspect costs the
gateway one extra inspect); `docker run` likewise; streams as root. Goals: overhead < 2 ms p50
per request, `docker run` within 1.1x of direct, streams at least 0.8x of direct throughput.
Goals are judged on the median over turns of the paired figure (gateway - direct, or their
ratio), with a 95% interval; "gw CPU/op" is the gateway process's CPU time per call (from
/proc), the figure that noise cannot move. Prints each goal held / not held and exits 0: the
summary, not the exit code, tells.

    .venv/bin/python bench/gateway_overhead.py [--requests 500] [--runs 12] [--cp-mib 1024]
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import pickle
import pwd
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import docker
import yaml

from bench.goals import Goal
from ds01.stack import ChildProcess, Dockerd, ensure_busybox_image, find_binary, start_dockerd

API = "/v1.41"  # what Debian's dockerd 20.10 speaks; clients send a versioned path
BENCH_USER = "ds01bench"  # made with useradd when absent, removed again at the end
USER_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass
class Stack:
    work: Path
    engine: Dockerd
    children: list[ChildProcess]
    gateway_socket: str
    image: str

    @property
    def direct_socket(self) -> str:
        return str(self.engine.socket_path)

    @property
    def gateway_pid(self) -> int:
        return self.children[-1].pid or 0


def start_stack(work: Path, engine: Dockerd, image: str, user: str | None) -> Stack:
    """Allocator and gateway as child processes, as `ds01 up` runs them."""
    topology = {"seed": "bench", "gpus": [{"model": "NVIDIA H200", "memory": "141gb"}]}
    (work / "topology.yaml").write_text(yaml.safe_dump(topology))
    users = {"root": "admin", **({user: "student"} if user else {})}
    (work / "ds01.yaml").write_text(yaml.safe_dump({"users": users}))
    allocator_socket, gateway_socket = str(work / "allocator.sock"), str(work / "gw.sock")
    common = [sys.executable, "-m", "ds01.cli"]
    policy = ["--policy", str(work / "ds01.yaml")]
    allocator = ChildProcess(
        "allocator",
        [*common, "allocator", *policy, "--state-dir", str(work / "state"),
         "--socket", allocator_socket, "--docker-host", engine.url, "--gpu-backend", "sim",
         "--sim-topology", str(work / "topology.yaml")],
        work / "allocator.log",
    ).start()  # fmt: skip
    stack = Stack(work, engine, [allocator], gateway_socket, image)
    allocator.wait_until(lambda: os.path.exists(allocator_socket), 30, "serving")
    gateway = ChildProcess(
        "gateway",
        [*common, "gateway", *policy, "--socket", gateway_socket, "--docker-host", engine.url,
         "--allocator-socket", allocator_socket],
        work / "gateway.log",
    ).start()  # fmt: skip
    stack.children.append(gateway)
    gateway.wait_until(lambda: ping(gateway_socket), 30, "answering")
    return stack


# --- a small HTTP client on a Unix socket: the same cost on both paths ----------------------


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: str | None = None, sock: socket.socket | None = None) -> None:
        super().__init__("docker", timeout=120)
        self.unix_path = path
        if sock is not None:
            self.sock = sock  # opened by root before the measuring child dropped to a user

    def connect(self) -> None:
        if self.unix_path is None:
            raise ConnectionError("a pre-opened connection was closed")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.unix_path)


def call(
    conn: UnixHTTP, method: str, path: str, body: dict | None = None, expect: int = 299
) -> bytes:
    """One request on a kept-alive connection; an answer above `expect` is an error."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"} if data is not None else {}
    conn.request(method, API + path, body=data, headers=headers)
    response = conn.getresponse()
    raw = response.read()
    if response.status > expect:
        raise RuntimeError(f"{method} {path}: {response.status} {raw[:200]!r}")
    return raw


def ping(path: str) -> bool:
    conn = UnixHTTP(path)
    try:
        return call(conn, "GET", "/_ping") == b"OK"
    finally:
        conn.close()


@dataclass(frozen=True)
class Sample:
    """Seconds per call on each path, paired by turn, and the gateway's CPU seconds per call."""

    direct: list[float]
    gateway: list[float]
    gateway_cpu: float


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads, from /proc."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def alternate(
    rounds: int, direct: Callable[[], float], gateway: Callable[[], float], gateway_pid: int
) -> Sample:
    """Direct and gateway take turns at going first; the gateway is idle while dockerd works."""
    times: tuple[list[float], list[float]] = ([], [])
    cpu_before = process_cpu(gateway_pid)
    for turn in range(rounds):
        order = ((0, direct), (1, gateway)) if turn % 2 == 0 else ((1, gateway), (0, direct))
        for index, measure in order:
            times[index].append(measure())
    return Sample(*times, (process_cpu(gateway_pid) - cpu_before) / rounds)


def timed(fn: Callable[[], object]) -> Callable[[], float]:
    def measure() -> float:
        began = time.perf_counter()
        fn()
        return time.perf_counter() - began

    return measure


def request_times(
    direct_sock: socket.socket, direct_path: str | None, stack: Stack, args
) -> dict[str, Sample]:
    """In the measuring child: ping, inspect, create on kept-alive connections (as a CLI does)."""
    gateway_path, pid = stack.gateway_socket, stack.gateway_pid
    direct, gateway = UnixHTTP(sock=direct_sock), UnixHTTP(gateway_path)
    spec = {"Image": stack.image, "Cmd": ["true"], "HostConfig": {"NetworkMode": "none"}}
    missing = {**spec, "Image": "ds01-bench-no-such-image:none"}
    own = json.loads(call(gateway, "POST", "/containers/create", spec))["Id"]  # the caller's

    def create(conn: UnixHTTP) -> float:
        began = time.perf_counter()
        made = json.loads(call(conn, "POST", "/containers/create", spec))["Id"]
        elapsed = time.perf_counter() - began
        call(conn, "DELETE", f"/containers/{made}?force=1")
        return elapsed

    try:
        for _ in range(5):  # warm both paths (threads, kept-alive upstream, page cache)
            call(direct, "GET", "/_ping")
            call(gateway, "GET", "/_ping")
        found = {
            "GET /_ping": alternate(
                args.requests,
                timed(lambda: call(direct, "GET", "/_ping")),
                timed(lambda: call(gateway, "GET", "/_ping")),
                pid,
            ),
            "GET /containers/{id}/json": alternate(
                args.requests,
                timed(lambda: call(direct, "GET", f"/containers/{own}/json")),
                timed(lambda: call(gateway, "GET", f"/containers/{own}/json")),
                pid,
            ),
            "POST /containers/create": alternate(
                args.creates, lambda: create(direct), lambda: create(gateway), pid
            ),
            # dockerd answers 404 at once, so what remains is the gateway's own create path
            "create, no such image (404)": alternate(
                args.requests,
                timed(lambda: call(direct, "POST", "/containers/create", missing, 404)),
                timed(lambda: call(gateway, "POST", "/containers/create", missing, 404)),
                pid,
            ),
        }
        if direct_path is not None:  # a new connection per request: what each CLI call pays
            found["GET /_ping, new connection"] = alternate(
                args.requests,
                timed(lambda: ping(direct_path)),
                timed(lambda: ping(gateway_path)),
                pid,
            )
        return found
    finally:
        call(gateway, "DELETE", f"/containers/{own}?force=1")


def in_child(fn: Callable[..., object], *args: object, uid: int | None = None) -> object:
    """Run `fn` in a forked process (as `uid` when given); its result comes back pickled."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.close(read_end)
            if uid is not None:
                entry = pwd.getpwuid(uid)
                os.setgroups([])
                os.setgid(entry.pw_gid)
                os.setuid(uid)
            with os.fdopen(write_end, "wb") as out:
                pickle.dump(fn(*args), out)
            code = 0
        except BaseException:  # noqa: BLE001 - reported, then the child exits
            traceback.print_exc()
        os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as source:
        data = source.read()
    os.waitpid(pid, 0)
    if not data:
        raise RuntimeError("the measuring child failed (traceback above)")
    return pickle.loads(data)


# --- docker CLI wall times -------------------------------------------------------------------


def cli_env(home: str, docker_host: str, **extra: str) -> dict[str, str]:
    env = {"PATH": USER_PATH, "HOME": home, "LANG": "C.UTF-8", "DOCKER_HOST": docker_host}
    return {**env, **extra}


def run_cli(argv: list[str], env: dict[str, str]) -> float:
    began = time.perf_counter()
    done = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - began
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.decode(errors='replace')[-500:]}")
    return elapsed


def cli_times(stack: Stack, argv: list[str], rounds: int, user: str | None, **extra: str):
    """`argv` against dockerd and against the gateway, alternating; as `user` via runuser."""
    runuser = find_binary("runuser")
    direct_env = cli_env("/root", f"unix://{stack.direct_socket}", **extra)
    direct_env["DOCKER_CONFIG"] = str(stack.work / "docker-config")
    if user is None:
        gateway_env = {**direct_env, "DOCKER_HOST": f"unix://{stack.gateway_socket}"}
        direct_argv = gateway_argv = argv
    else:  # both through runuser, so both pay its start-up
        gateway_env = cli_env(pwd.getpwnam(user).pw_dir, f"unix://{stack.gateway_socket}", **extra)
        direct_argv = [runuser, "-u", "root", "--", *argv]
        gateway_argv = [runuser, "-u", user, "--", *argv]
    run_cli(direct_argv, direct_env)  # warm-up: page cache, CLI binary, gateway threads
    run_cli(gateway_argv, gateway_env)
    return alternate(
        rounds,
        lambda: run_cli(direct_argv, direct_env),
        lambda: run_cli(gateway_argv, gateway_env),
        stack.gateway_pid,
    )


def stream_sources(stack: Stack, client, args) -> tuple[str, Path]:
    """A container holding a `cp_mib` file (busybox dd) and a build context of `context_mib`."""
    source = client.containers.create(
        stack.image,
        ["/bin/busybox", "dd", "if=/dev/zero", "of=/big", "bs=1M", f"count={args.cp_mib}"],
        name="gwbench-cp",
        network_mode="none",
    )
    source.start()
    if source.wait(timeout=300)["StatusCode"] != 0:
        raise RuntimeError(f"dd in the cp source failed: {source.logs()[-300:]!r}")
    context = stack.work / "context"
    context.mkdir()
    (context / "Dockerfile").write_text(f"FROM {stack.image}\n")
    block = os.urandom(1024 * 1024)
    with open(context / "payload.bin", "wb") as out:
        for _ in range(args.context_mib):
            out.write(block)
    return source.id, context


# --- report ----------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


@dataclass(frozen=True)
class Figure:
    """One measured operation; `kind` picks its goal: request, run or stream (`mib` moved)."""

    name: str
    who: str
    sample: Sample
    kind: str
    mib: float = 0.0


def paired(figure: Figure) -> list[float]:
    """Per turn, so load that drifts during the run cancels out: the request overhead in
    seconds, the run-time ratio, or the throughput ratio (direct time / gateway time)."""
    pairs = list(zip(figure.sample.direct, figure.sample.gateway, strict=True))
    if figure.kind == "request":
        return [g - d for d, g in pairs]
    if figure.kind == "run":
        return [g / d for d, g in pairs]
    return [d / g for d, g in pairs]


def median_interval(values: list[float]) -> tuple[float, float]:
    """A 95% confidence interval of the median from order statistics (sign test)."""
    ordered = sorted(values)
    k = max(0, math.floor((len(ordered) - 1.96 * math.sqrt(len(ordered))) / 2))
    return ordered[k], ordered[len(ordered) - 1 - k]


def judge(figure: Figure) -> tuple[str, bool, str]:
    """The goal on the paired median; the interval says whether noise could flip it."""
    values = paired(figure)
    value, (low, high) = statistics.median(values), median_interval(values)
    if figure.kind == "request":
        text = f"overhead {value * 1000:+.2f} ms p50 [95%: {low * 1000:+.2f}, {high * 1000:+.2f}]"
        held, spans = value < 0.002, low < 0.002 <= high
        goal = "< 2 ms"
    elif figure.kind == "run":
        text = f"wall-time ratio {value:.3f} [95%: {low:.3f}, {high:.3f}]"
        held, spans, goal = value <= 1.1, low <= 1.1 < high, "<= 1.1"
    else:
        g50 = statistics.median(figure.sample.gateway)
        d50 = statistics.median(figure.sample.direct)
        text = (
            f"{figure.mib / g50:.0f} vs {figure.mib / d50:.0f} MiB/s direct, throughput ratio "
            f"{value:.2f} [95%: {low:.2f}, {high:.2f}]"
        )
        held, spans, goal = value >= 0.8, low < 0.8 <= high, ">= 0.8"
        if figure.sample.gateway_cpu > 0:  # what the gateway could pass with a core to itself
            text += f"; gateway alone {figure.mib / figure.sample.gateway_cpu:.0f} MiB/s per core"
    noise = "; the interval spans the goal: noise" if spans else ""
    return f"{text}{noise}", held, goal


def report(figures: list[Figure]) -> None:
    print(
        f"{'operation':30} {'as':5} {'direct p50 / p99':>19} {'gateway p50 / p99':>19} "
        f"{'paired p50':>12} {'gw CPU/op':>10}"
    )
    for f in figures:
        unit, scale = ("ms", 1000) if f.kind == "request" else ("s", 1)
        cols = [
            f"{statistics.median(v) * scale:7.2f} / {percentile(v, 0.99) * scale:7.2f} {unit}"
            for v in (f.sample.direct, f.sample.gateway)
        ]
        value = statistics.median(paired(f))
        shown = f"{value * 1000:+.2f} ms" if f.kind == "request" else f"x{value:.3f}"
        cpu = f"{f.sample.gateway_cpu * 1000:.2f} ms"
        print(f"{f.name:30} {f.who:5} {cols[0]:>19} {cols[1]:>19} {shown:>12} {cpu:>10}")
    print(
        "goals (paired p50: overhead gateway - direct; run gateway/direct; stream direct/gateway):"
    )
    for f in figures:
        text, held, goal = judge(f)
        print(f"  {'HELD    ' if held else 'NOT HELD'}  {f.name} as {f.who}: {text} (goal {goal})")
        print(Goal("gateway_overhead", f"{f.name} as {f.who}", text, goal, held).line())


# --- main ------------------------------------------------------------------------------------


def ensure_user() -> tuple[str | None, bool]:
    """The unprivileged bench user (name, made-here); None where users cannot be made."""
    if os.geteuid() != 0 or not find_binary("useradd") or not find_binary("runuser"):
        print("not root or no useradd/runuser: unprivileged figures are left out")
        return None, False
    try:
        pwd.getpwnam(BENCH_USER)
        return BENCH_USER, False
    except KeyError:
        subprocess.run(
            [find_binary("useradd"), "--create-home", "--shell", "/bin/sh", BENCH_USER],
            check=True,
            capture_output=True,
        )
        return BENCH_USER, True


def measure(stack: Stack, client, user: str | None, args) -> list[Figure]:
    figures: list[Figure] = []
    callers: list[tuple[str, str, int | None]] = [("admin", "root", None)]
    if user:
        callers.append(("user", user, pwd.getpwnam(user).pw_uid))
    for label, _name, uid in callers:
        direct_sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        direct_sock.connect(stack.direct_socket)  # opened as root: dockerd's socket is root-only
        new_conns = stack.direct_socket if uid is None else None  # a user cannot connect anew
        found = in_child(request_times, direct_sock, new_conns, stack, args, uid=uid)
        direct_sock.close()
        figures += [Figure(name, label, sample, "request") for name, sample in found.items()]
    docker_cli = find_binary("docker")
    run = [docker_cli, "run", "--rm", "--network", "none", stack.image, "true"]
    for label, name, uid in callers:
        sample = cli_times(stack, run, args.runs, None if uid is None else name)
        figures.append(Figure("docker run --rm", label, sample, "run"))
    source, context = stream_sources(stack, client, args)
    cp = [docker_cli, "cp", f"{source}:/big", "-"]
    sample = cli_times(stack, cp, args.stream_rounds, None)
    figures.append(
        Figure(f"docker cp {args.cp_mib} MiB out", "admin", sample, "stream", args.cp_mib)
    )
    build = [docker_cli, "build", "-q", "-t", "gwbench-build:latest", str(context)]
    sample = cli_times(stack, build, args.stream_rounds, None, DOCKER_BUILDKIT="0")
    name = f"build, {args.context_mib} MiB context"
    figures.append(Figure(name, "admin", sample, "stream", args.context_mib))
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500, help="per request kind (500)")
    parser.add_argument("--creates", type=int, default=40, help="container creates (40)")
    parser.add_argument("--runs", type=int, default=12, help="docker run --rm, per path (12)")
    parser.add_argument("--stream-rounds", type=int, default=3, help="cp and build (3)")
    parser.add_argument("--cp-mib", type=int, default=1024, help="docker cp size (1024)")
    parser.add_argument("--context-mib", type=int, default=200, help="build context (200)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # still clean up under `timeout`
    began = time.monotonic()
    user, made_user = ensure_user()
    work = Path(tempfile.mkdtemp(prefix="ds01gw-", dir="/tmp"))
    os.chmod(work, 0o755)  # the bench user reaches the gateway socket through it
    engine = start_dockerd(work / "d")
    client = docker.DockerClient(base_url=engine.url, timeout=300)
    stack: Stack | None = None
    try:
        stack = start_stack(work, engine, ensure_busybox_image(client), user)
        load_before = os.getloadavg()[0]
        figures = measure(stack, client, user, args)
        print(
            f"gateway_overhead: gateway and allocator in their own processes; storage driver "
            f"vfs; {args.requests} requests, {args.creates} creates, {args.runs} runs, "
            f"{args.stream_rounds} stream rounds per path, alternating; "
            f"{time.monotonic() - began:.0f}s in all; {os.cpu_count()} CPUs, load average "
            f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
        )
        report(figures)
        return 0
    finally:
        for container in client.containers.list(all=True):
            container.remove(force=True)
        if client.images.list(name="gwbench-build"):
            client.images.remove("gwbench-build:latest")
        client.close()
        for child in reversed(stack.children if stack else []):
            child.stop()
        engine.stop()
        shutil.rmtree(work, ignore_errors=True)
        if made_user:
            subprocess.run([find_binary("userdel"), "--remove", BENCH_USER], capture_output=True)


if __name__ == "__main__":
    sys.exit(main())
