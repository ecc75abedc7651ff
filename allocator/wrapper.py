"""`ds01-docker`: the docker wrapper admins install as `docker` ahead of the real one.

`run`/`create` asking for GPUs get devices from the allocator (waiting in its queue with a
progress line), are rewritten to `--gpus device=<uuid>` with the ds01.* labels, and run by the
real docker as a child: when it fails and no container carries the allocation, the wrapper
releases it at once (instead of leaving it to `reservation_ttl`). Everything else execs the
real docker untouched, so exit codes, signals and output are exactly docker's. With no Docker
host chosen, the real docker talks to the gateway; the gateway takes over the reservation
named in `ds01.allocation`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ds01.containers import LABEL_ALLOCATION, LABEL_DEVICES, LABEL_MANAGED, LABEL_TYPE, LABEL_USER

from .client import AllocatorClient, AllocatorUnavailable, Refused, progress_line
from .docker_args import RunCommand, gpu_request, parse_run, rewrite
from .docker_endpoint import gateway_host

REAL_DOCKER_ENV = "DS01_REAL_DOCKER"
_MARKERS = (b"docker_wrapper_main", b"allocator.wrapper")
EXIT_DOCKER_ERROR = 125  # what docker itself returns when it cannot run the container


class WrapperError(RuntimeError):
    """The wrapper cannot do its job (no real docker, allocator refused or unreachable)."""


def _is_wrapper(path: str, own: set[str]) -> bool:
    if os.path.realpath(path) in own:
        return True
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
    except OSError:
        return False
    return any(marker in head for marker in _MARKERS)


def find_real_docker(environ: Mapping[str, str] = os.environ, argv0: str | None = None) -> str:
    """$DS01_REAL_DOCKER, else the first `docker` on PATH that is not this wrapper."""
    explicit = environ.get(REAL_DOCKER_ENV)
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise WrapperError(f"{REAL_DOCKER_ENV}={explicit} is not an executable file")
        return explicit
    argv0 = argv0 or sys.argv[0]
    own = {os.path.realpath(shutil.which(argv0) or argv0)}
    for folder in environ.get("PATH", os.defpath).split(os.pathsep):
        candidate = os.path.join(folder or ".", "docker")
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            if not _is_wrapper(candidate, own):
                return candidate
    raise WrapperError(f"no real docker found on PATH (set {REAL_DOCKER_ENV})")


class Progress:
    """One line on stderr, rewritten in place on a terminal, printed on change otherwise."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.shown = False
        self._last_place: Any = None

    def __call__(self, answer: dict[str, Any]) -> None:
        line = progress_line(answer)
        if self.tty:
            self.stream.write(f"\r\033[K{line}")
        elif answer.get("position") != self._last_place or not self.shown:
            self.stream.write(line + "\n")
        self._last_place = answer.get("position")
        self.shown = True
        self.stream.flush()

    def done(self) -> None:
        if self.shown and self.tty:
            self.stream.write("\n")
            self.stream.flush()


@dataclass(frozen=True)
class Prepared:
    """What to run: the argv for the real docker, and the allocation made for it (if any)."""

    argv: list[str]
    allocation: str = ""
    docker_globals: tuple[str, ...] = ()  # -H, --context …: to ask the same daemon afterwards


def _globals(cmd: RunCommand) -> tuple[str, ...]:
    words = 2 if cmd.head[-2:-1] == ("container",) else 1
    return cmd.head[: len(cmd.head) - words]


def prepare(
    argv: Sequence[str], client: AllocatorClient, environ: Mapping[str, str], progress: Progress
) -> Prepared:
    """The argv to hand to the real docker (allocating first when GPUs are asked for)."""
    cmd = parse_run(argv)
    request = gpu_request(cmd, environ) if cmd is not None else None
    if cmd is None or request is None:
        return Prepared(list(argv))
    try:
        alloc = client.allocate(
            count=request.count,
            container_type=request.container_type,
            name=request.name,
            progress=progress,
        )
    except Refused as exc:
        raise WrapperError(exc.message) from exc
    except AllocatorUnavailable as exc:
        raise WrapperError(
            f"{exc}\nGPU containers are started through the allocator; ask an admin if it is down."
        ) from exc
    finally:
        progress.done()
    if request.asked_all:
        shown = described_devices(client, alloc["devices"])
        progress.stream.write(
            f"ds01: --gpus all gives one device here: {shown} "
            "(ask for more with --gpus N, within your quota)\n"
        )
        progress.stream.flush()
    labels = {
        LABEL_MANAGED: "true",
        LABEL_USER: alloc["user"],
        LABEL_ALLOCATION: alloc["id"],
        LABEL_DEVICES: ",".join(alloc["devices"]),
        LABEL_TYPE: request.container_type,
    }
    argv_out = rewrite(cmd, devices=alloc["devices"], labels=labels, environ=environ)
    return Prepared(argv_out, alloc["id"], _globals(cmd))


def run_child(args: list[str]) -> int:
    """Run the real docker as a child and return its exit code the way a shell reports it.

    SIGINT from the terminal reaches docker itself (same process group), so the wrapper only
    ignores it; SIGTERM and SIGHUP sent to the wrapper are passed on.
    """
    child = subprocess.Popen(args)

    def forward(signum: int, _frame: object) -> None:
        child.send_signal(signum)

    previous = {
        signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),
        signal.SIGTERM: signal.signal(signal.SIGTERM, forward),
        signal.SIGHUP: signal.signal(signal.SIGHUP, forward),
    }
    try:
        code = child.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return code if code >= 0 else 128 - code


def release_if_unused(client: AllocatorClient, real: str, prepared: Prepared) -> bool:
    """After a failed run: free the allocation when no container carries it. True if freed.

    When Docker cannot be asked, the allocation is kept (`reservation_ttl` frees it later).
    """
    label = f"label={LABEL_ALLOCATION}={prepared.allocation}"
    listing = subprocess.run(
        [real, *prepared.docker_globals, "ps", "-aq", "--filter", label],
        capture_output=True,
        text=True,
        check=False,
    )
    if listing.returncode != 0 or listing.stdout.strip():
        return False
    try:
        client.release(prepared.allocation)
    except (Refused, AllocatorUnavailable) as exc:
        print(f"ds01: could not release allocation {prepared.allocation}: {exc}", file=sys.stderr)
        return False
    print(f"ds01: docker failed; released GPU allocation {prepared.allocation}", file=sys.stderr)
    return True


def described_devices(client: AllocatorClient, uuids: Sequence[str]) -> str:
    """`0:2 (1g.18gb)`: what users type and the profile; the UUID only when it is unknown."""
    try:
        known = {d["device_uuid"]: d for d in client.devices()}
    except (AllocatorUnavailable, Refused):
        known = {}
    names = []
    for uuid in uuids:
        device = known.get(uuid)
        names.append(f"{device['index']} ({device['profile'] or 'full GPU'})" if device else uuid)
    return ", ".join(names)


def run(
    argv: Sequence[str],
    *,
    environ: Mapping[str, str] = os.environ,
    execv: Callable[[str, list[str]], Any] = os.execv,
    client: AllocatorClient | None = None,
) -> int:
    client = client or AllocatorClient()
    try:
        real = find_real_docker(environ)
        prepared = prepare(argv, client, environ, Progress())
    except WrapperError as exc:
        print(f"ds01: {exc}", file=sys.stderr)
        return EXIT_DOCKER_ERROR
    sys.stdout.flush()
    sys.stderr.flush()
    if not prepared.allocation:
        execv(real, [Path(real).name, *prepared.argv])
        return 0  # only reached with a test execv
    code = run_child([real, *prepared.argv])
    if code != 0:
        release_if_unused(client, real, prepared)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    host, warning = gateway_host(args, os.environ)
    if warning:
        print(f"ds01: {warning}", file=sys.stderr)
    if host:
        os.environ["DOCKER_HOST"] = host  # the real docker, exec'd below, inherits it
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
