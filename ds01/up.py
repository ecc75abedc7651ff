"""`ds01 up`: the whole stack in the foreground, with a banner of where to look; Ctrl-C stops it.

Users reach Docker through the gateway it starts: the banner prints the DOCKER_HOST to use.
`--demo` compresses time (idle timeout 2 m, warning at 1 m, max runtime 10 m) and starts two
containers through the wrapper and the gateway, one busy and one idle, so a newcomer can watch
the idle one be warned, stopped and its MIG instance freed.
"""

from __future__ import annotations

import argparse
import logging
import os
import pwd
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from .keeper import Keeper
from .logs import setup_logging
from .policy import PolicyError, load_policy, parse_policy, policy_path
from .stack import StackError, ensure_busybox_image
from .supervisor import Endpoints, StackOptions, StackSupervisor, Timings

logger = logging.getLogger(__name__)

DEMO_OVERRIDES: dict[str, Any] = {
    "idle_timeout": "2m",
    "idle_warning": "1m",
    "runtime_warning": "2m",
    "gpu_hold_after_stop": "1m",
    "container_hold_after_stop": "5m",
    "stop_grace": "5s",
    "unmanaged_gpu": {"action": "stop", "grace": "1m"},
}
DEMO_RUNTIME = "10m"
DEMO_USER = "ds01demo"  # owns the demo containers, so root's own quota stays free to try things
# Put on users' PATH by env.sh (`docker` is the ds01 wrapper, which finds the real one itself).
USER_COMMANDS = {"docker": "ds01-docker", "gpu-status": "gpu-status", "container": "container",
                 "ds01": "ds01", "ds01-docker": "ds01-docker"}  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ds01 up", description=__doc__)
    parser.add_argument(
        "--demo", action="store_true", help="compressed timings + two demo containers"
    )
    parser.add_argument(
        "--state-dir",
        default=os.environ.get("DS01_STATE_DIR", "/var/lib/ds01/up"),
        help="one folder for every part's state, logs and configs (default /var/lib/ds01/up)",
    )
    parser.add_argument(
        "--policy",
        default=None,
        help="policy file (env DS01_POLICY; default /etc/ds01/ds01.yaml, else the repo example)",
    )
    parser.add_argument(
        "--nodes",
        type=int,
        default=1,
        help="pretend to be N GPU hosts on this machine (default 1): N private dockerds and "
        "service sets, one PostgreSQL quota store, one Prometheus and Alertmanager; sim GPUs; "
        "needs root (docs/cluster.md)",
    )
    parser.add_argument("--gpu-backend", choices=["auto", "nvml", "sim"], default=None)
    parser.add_argument("--docker-host", default=None, help="Docker API URL (default: detect)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"])
    return parser


def demo_policy(data: dict[str, Any]) -> dict[str, Any]:
    """The policy document with demo timings: every runtime 10 m, idle 2 m, warnings at 1 m."""
    result = dict(data)
    result.update(DEMO_OVERRIDES)
    groups = result.get("groups") or {
        "student": {"max_gpus": 2},
        "researcher": {"max_gpus": 4},
        "faculty": {"max_gpus": 4},
        "admin": {"max_gpus": None, "allow_full_gpu": True},
    }
    result["groups"] = {
        name: {
            **{k: v for k, v in (g or {}).items() if k != "idle_timeout"},
            "max_runtime": DEMO_RUNTIME,
        }
        for name, g in groups.items()
    }
    result["container_types"] = {
        t: {"max_runtime": DEMO_RUNTIME} for t in ("ds01", "devcontainer", "compose", "docker")
    }
    return result


def effective_policy(args: argparse.Namespace, state_dir: Path) -> Path:
    """The policy file every part reads: the admin's, or the repo example, demo-adjusted."""
    source = Path(args.policy or policy_path())
    if args.policy is None and "DS01_POLICY" not in os.environ and not source.exists():
        source = Path(__file__).resolve().parent.parent / "config" / "ds01.example.yaml"
    load_policy(source)  # fail early, with the file's own name in the message
    if not args.demo:
        return source
    data = yaml.safe_load(source.read_text()) or {}
    adjusted = demo_policy(data)
    parse_policy(adjusted, f"{source} (demo)")
    target = state_dir / "ds01-demo.yaml"
    target.write_text(yaml.safe_dump(adjusted, sort_keys=False))
    return target


def gateway_row(ep: Endpoints) -> str:
    """Where users' Docker clients should point, or why there is no gateway."""
    if not ep.gateway_socket:
        return ep.gateway_note or "not started"
    row = f"{ep.gateway_host}   export DOCKER_HOST={ep.gateway_host}"
    return row + (f"   ({ep.gateway_note})" if ep.gateway_note else "")


def banner(ep: Endpoints, policy_file: Path, demo: bool, env_file: Path | None = None) -> str:
    docker = ep.docker_host + (" (private dockerd started by ds01 up)" if ep.docker_private else "")
    backend = {"sim": "sim (no NVIDIA driver: simulated H200 MIG + whole GPU)"}.get(
        ep.backend, ep.backend
    )
    rows = [
        ("GPU backend", backend),
        ("Docker", docker),
        ("policy", str(policy_file) + ("  [demo timings]" if demo else "")),
        ("exporter", f"{ep.exporter}/metrics   {ep.exporter}/api/state"),
        ("allocator", f"unix://{ep.allocator_socket}   {ep.allocator_http}/metrics"),
        ("gateway", gateway_row(ep)),
        ("enforcer", f"{ep.enforcer}/metrics   audit log {ep.audit_log}"),
        ("Prometheus", f"{ep.prometheus}/alerts"),
        (
            "Alertmanager",
            f"{ep.alertmanager}   (basic auth: amtool --http.config.file="
            f"{ep.alertmanager_http_config} --alertmanager.url={ep.alertmanager} …)",
        ),
    ]
    width = max(len(k) for k, _ in rows)
    lines = ["", "DS01 GPU lifecycle stack is up.", ""]
    lines += [f"  {k.ljust(width)}  {v}" for k, v in rows]
    deploy_extra = (
        f" --image {ep.local_image} --network none --command 'sleep 3600'" if ep.local_image else ""
    )
    if env_file is not None:
        setup = f"  . {env_file}   # PATH: gpu-status, container, docker (wrapper); DOCKER_HOST"
    else:
        setup = "  export " + " ".join(f"{k}={v}" for k, v in user_environment(ep).items())
    lines += [
        "",
        "Try next (in another shell):",
        setup,
        "  gpu-status                       # every GPU / MIG instance, holder, idle for, stops at",
        f"  container deploy mine --gpus 1{deploy_extra}   # through the allocator",
        "  container ls                     # yours: GPU, next stop; for stopped ones why",
        "  ds01 sim-gpu set 0:2 --busy      # make a simulated device busy",
        f"  Grafana: add a Prometheus datasource at {ep.prometheus}, import grafana/dashboards/",
        "",
        "Ctrl-C stops everything.",
    ]
    return "\n".join(lines)


def user_environment(ep: Endpoints) -> dict[str, str]:
    """What a user's shell needs to use this stack (env.sh exports it; PATH separately)."""
    return {
        "DOCKER_HOST": ep.gateway_host,
        "DS01_ALLOCATOR_SOCKET": ep.allocator_socket,
        "DS01_PROMETHEUS_URL": ep.prometheus,
        "DS01_EXPORTER_URL": ep.exporter,
        "DS01_SIM_STATE": ep.sim_state,
    }


def write_user_env(ep: Endpoints, state_dir: Path, bin_dir: Path | None = None) -> Path:
    """`<state>/bin` with our commands (docker = the wrapper) and `<state>/env.sh` that puts
    it first on PATH and exports DOCKER_HOST and the service addresses; returns env.sh."""
    source = bin_dir or Path(sys.executable).parent
    commands = state_dir / "bin"
    commands.mkdir(parents=True, exist_ok=True)
    for name, target in USER_COMMANDS.items():
        link = commands / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(source / target)
    lines = [f"# Written by ds01 up: . {state_dir / 'env.sh'}", f"export PATH={commands}:$PATH"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in user_environment(ep).items() if v]
    env_file = state_dir / "env.sh"
    env_file.write_text("\n".join(lines) + "\n")
    env_file.chmod(0o644)
    return env_file


def demo_account() -> pwd.struct_passwd | None:
    """The demo user (created when we are root and it is missing); None: run as ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(DEMO_USER)
    except KeyError:
        made = subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", DEMO_USER],
            capture_output=True,
            text=True,
            check=False,
        )
        if made.returncode != 0:
            logger.warning("cannot create %s (%s): demo runs as root", DEMO_USER, made.stderr)
            return None
        return pwd.getpwnam(DEMO_USER)


def run_wrapper_as(account: pwd.struct_passwd | None, argv: list[str], env: dict[str, str],
                   log_path: Path) -> int:  # fmt: skip
    """`ds01-docker argv` in a forked child that became `account` (the venv's interpreter may
    be unreadable to it; the fork already has it loaded); output goes to `log_path`."""
    from allocator import wrapper

    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    pid = os.fork()
    if pid == 0:  # the child execs docker, or exits with the wrapper's code
        code = 125
        try:
            os.dup2(log, 1)
            os.dup2(log, 2)
            if account is not None:
                os.setgroups([])
                os.setgid(account.pw_gid)
                os.setuid(account.pw_uid)
            os.environ.clear()
            os.environ.update(env)
            code = wrapper.main(argv)
        finally:
            os._exit(code)
    os.close(log)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def start_demo_containers(ep: Endpoints, log_path: Path) -> None:
    """Two containers of the demo user, through the wrapper and the gateway: `demo-busy` (kept
    busy) and `demo-idle`; root stays free to deploy its own at once."""
    import docker

    client = docker.DockerClient(base_url=ep.docker_host)
    image = ensure_busybox_image(client)
    account = demo_account()
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": account.pw_dir if account else os.environ.get("HOME", "/"),
        "DOCKER_HOST": ep.gateway_host,
        "DS01_ALLOCATOR_SOCKET": ep.allocator_socket,
    }
    for name in ("demo-busy", "demo-idle"):
        try:
            client.containers.get(name).remove(force=True)
        except docker.errors.NotFound:
            logger.debug("no old %s to remove", name)
        cmd = [
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "none",
            "--gpus",
            "1",
            image,
            "sleep",
            "86400",
        ]
        code = run_wrapper_as(account, cmd, env, log_path)
        if code != 0:
            raise StackError(f"demo container {name} not started (exit {code}); see {log_path}")
    busy = client.containers.get("demo-busy")
    device = busy.labels.get("ds01.gpu.devices", "").split(",")[0]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "ds01.cli",
            "sim-gpu",
            "--state-file",
            ep.sim_state,
            "set",
            device,
            "--busy",
            "--pid",
            str(busy.attrs["State"]["Pid"]),
        ],
        check=True,
        capture_output=True,
    )
    owner = account.pw_name if account else "you"
    print(
        f"demo: {owner}'s demo-busy holds {device} (kept busy); demo-idle will be warned at "
        "1 m, stopped at 2 m, and its device freed.",
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    if args.nodes < 1:
        parser.error(f"--nodes: must be 1 or more, got {args.nodes}")
    if args.nodes > 1:
        from .cluster_run import check_cluster_args

        check_cluster_args(parser, args)
    state_dir = Path(args.state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    try:
        policy_file = effective_policy(args, state_dir)
    except PolicyError as exc:
        parser.error(str(exc))
    timings = (
        Timings(
            collect_interval=2.0,
            scrape_interval=5.0,
            evaluation_interval=5.0,
            group_interval=30.0,
            repeat_interval=120.0,
        )
        if args.demo
        else Timings()
    )
    if args.nodes > 1:
        from .cluster_run import run_cluster

        return run_cluster(args, policy_file, timings)
    supervisor = StackSupervisor(
        StackOptions(
            policy_file,
            state_dir,
            timings,
            args.gpu_backend,
            None,
            args.docker_host,
            args.log_level,
        )
    )
    stop, reload = signal_events()
    try:
        endpoints = supervisor.start()
        env_file = write_user_env(endpoints, state_dir)
        print(banner(endpoints, policy_file, args.demo, env_file), flush=True)
        if args.demo:
            start_demo_containers(endpoints, state_dir / "logs" / "demo.log")
        serve(supervisor, stop, reload)
        return 0
    except (StackError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or ""
        print(f"ds01 up: {exc}\n{detail}", file=sys.stderr)
        return 1
    finally:
        supervisor.stop()


def signal_events() -> tuple[threading.Event, threading.Event]:
    """(stop, reload): set by SIGINT/SIGTERM and by SIGHUP, acted on within a second."""
    stop = threading.Event()
    reload = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: reload.set())
    return stop, reload


def serve(supervisor: Any, stop: threading.Event, reload: threading.Event) -> None:
    """Until Ctrl-C: a part that exits is restarted, never fatal; SIGHUP reloads the policy."""
    keeper = Keeper(supervisor.children)
    while not stop.wait(1.0):
        if reload.is_set():
            reload.clear()
            supervisor.reload_policy()
        keeper.check()
    print("\nstopping…", flush=True)
