"""Reading and rewriting a `docker run/create` command line (pure; no I/O).

Finds every way the command asks for GPUs (`--gpus` in any form, `--runtime=nvidia`,
`-e NVIDIA_VISIBLE_DEVICES=…`) among the options before the image, and rewrites them into
one `--gpus device=<uuid>[,<uuid>]` plus the ds01.* labels. The image and the command after
it are never touched.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

GLOBAL_VALUE = {"--config", "--context", "--host", "--log-level", "--tlscacert", "--tlscert"}
GLOBAL_VALUE |= {"--tlskey"}
GLOBAL_SHORT_VALUE = {"c": "--context", "H": "--host", "l": "--log-level"}

RUN_VALUE = set(
    """add-host annotation attach blkio-weight blkio-weight-device cap-add cap-drop cgroup-parent
    cgroupns cidfile cpu-count cpu-percent cpu-period cpu-quota cpu-rt-period cpu-rt-runtime
    cpu-shares cpus cpuset-cpus cpuset-mems detach-keys device device-cgroup-rule
    device-read-bps device-read-iops device-write-bps device-write-iops dns dns-option dns-opt
    dns-search domainname entrypoint env env-file expose gpus group-add health-cmd
    health-interval health-retries health-start-interval health-start-period health-timeout
    hostname io-maxbandwidth io-maxiops ip ip6 ipc isolation kernel-memory label label-file link
    link-local-ip log-driver log-opt mac-address memory memory-reservation memory-swap
    memory-swappiness mount name network net network-alias net-alias oom-score-adj pid
    pids-limit platform publish pull restart runtime security-opt shm-size stop-signal
    stop-timeout storage-opt sysctl tmpfs ulimit user userns uts volume volume-driver
    volumes-from workdir""".split()
)
RUN_SHORT_VALUE = {
    "a": "attach",
    "c": "cpu-shares",
    "e": "env",
    "h": "hostname",
    "l": "label",
    "m": "memory",
    "p": "publish",
    "u": "user",
    "v": "volume",
    "w": "workdir",
}
VISIBLE = "NVIDIA_VISIBLE_DEVICES"
NO_GPU = ("", "void", "none")


@dataclass(frozen=True)
class Option:
    """One option before the image: canonical long name, value, and its original tokens."""

    name: str
    value: str | None
    tokens: tuple[str, ...]
    keep_prefix: str = ""  # bool short flags bundled in front of it (`-d` of `-de X=1`)


@dataclass(frozen=True)
class RunCommand:
    head: tuple[str, ...]  # global options and the subcommand words
    options: tuple[Option, ...]
    tail: tuple[str, ...]  # image and command, untouched
    subcommand: str  # run | create


@dataclass(frozen=True)
class GpuRequest:
    count: int
    container_type: str
    name: str
    asked_all: bool = False  # `--gpus all` / NVIDIA_VISIBLE_DEVICES=all: given one device


def asks_all(value: str) -> bool:
    """Whether a `--gpus` value asks for every GPU (`all`, `count=all`)."""
    fields = next(csv.reader([value.strip().strip("'")]), [])
    return any(f.strip().strip('"') in ("all", "count=all") for f in fields)


def parse_run(argv: Sequence[str]) -> RunCommand | None:
    """The parts of a `docker [globals] [container] run|create …` line; None for anything else."""
    i, head = 0, []
    while i < len(argv):
        token = argv[i]
        if token.startswith("--") and len(token) > 2:
            head.append(token)
            if "=" not in token and token in GLOBAL_VALUE and i + 1 < len(argv):
                head.append(argv[i + 1])
                i += 1
        elif token.startswith("-") and len(token) > 1:
            head.append(token)
            if token[1:] in GLOBAL_SHORT_VALUE and i + 1 < len(argv):
                head.append(argv[i + 1])
                i += 1
        else:
            break
        i += 1
    words = list(argv[i : i + 2])
    if words[:1] == ["container"] and len(words) == 2 and words[1] in ("run", "create"):
        head += words
        i += 2
    elif words[:1] in (["run"], ["create"]):
        head += words[:1]
        i += 1
    else:
        return None
    subcommand = head[-1]
    options: list[Option] = []
    while i < len(argv):
        token = argv[i]
        if token == "--":
            options.append(Option("--", None, (token,)))
            i += 1
            break
        if token.startswith("--") and len(token) > 2:
            name, sep, value = token[2:].partition("=")
            if sep:
                options.append(Option(name, value, (token,)))
            elif name in RUN_VALUE and i + 1 < len(argv):
                options.append(Option(name, argv[i + 1], (token, argv[i + 1])))
                i += 1
            else:
                options.append(Option(name, None, (token,)))
        elif token.startswith("-") and len(token) > 1:
            i = _short_cluster(argv, i, options)
        else:
            break
        i += 1
    return RunCommand(tuple(head), tuple(options), tuple(argv[i:]), subcommand)


def _short_cluster(argv: Sequence[str], i: int, options: list[Option]) -> int:
    token = argv[i]
    letters = token[1:]
    for pos, letter in enumerate(letters):
        if letter in RUN_SHORT_VALUE:
            name, prefix, rest = RUN_SHORT_VALUE[letter], letters[:pos], letters[pos + 1 :]
            if rest:
                options.append(Option(name, rest.removeprefix("="), (token,), prefix))
            elif i + 1 < len(argv):
                options.append(Option(name, argv[i + 1], (token, argv[i + 1]), prefix))
                return i + 1
            else:
                options.append(Option(name, None, (token,), prefix))
            return i
    options.append(Option(f"-{letters}", None, (token,)))
    return i


def gpus_count(value: str) -> int:
    """Devices a `--gpus` value asks for: `all` counts as 1, a device list as its length."""
    fields = next(csv.reader([value.strip().strip("'")]), [])
    count = 0
    in_devices = False
    for field in (f.strip().strip('"') for f in fields):
        key, sep, val = field.partition("=")
        if sep and key == "device":
            count, in_devices = len([v for v in val.split(",") if v]), True
        elif sep and key == "count":
            count, in_devices = (1 if val == "all" else int(val)), False
        elif sep:
            in_devices = False
            if key == "capabilities":
                continue
        elif in_devices and field:
            count += 1
        elif field == "all":
            count = 1
        elif field.isdigit():
            count = int(field)
    return count


def _visible_value(option: Option, environ: Mapping[str, str]) -> str | None:
    """The NVIDIA_VISIBLE_DEVICES value an -e option sets, None if it sets something else."""
    if option.name != "env" or option.value is None:
        return None
    key, sep, value = option.value.partition("=")
    if key != VISIBLE:
        return None
    return value if sep else environ.get(VISIBLE, "")


def gpu_request(cmd: RunCommand, environ: Mapping[str, str]) -> GpuRequest | None:
    """What the command asks for, or None when it asks for no GPU at all."""
    count = 0
    runtime_nvidia = False
    visible: str | None = None
    labels: dict[str, str] = {}
    name = ""
    everything = False
    for opt in cmd.options:
        if opt.name == "gpus" and opt.value is not None:
            everything = everything or asks_all(opt.value)
            try:
                count = max(count, gpus_count(opt.value))
            except ValueError:
                count = max(count, 1)
        elif opt.name == "runtime" and opt.value == "nvidia":
            runtime_nvidia = True
        elif _visible_value(opt, environ) is not None:
            visible = _visible_value(opt, environ)
        elif opt.name == "label" and opt.value:
            key, _, val = opt.value.partition("=")
            labels[key] = val
        elif opt.name == "name" and opt.value:
            name = opt.value
    if visible is not None and visible.strip().lower() not in NO_GPU:
        wanted = [v for v in visible.split(",") if v.strip()]
        count = max(count, 1 if wanted == ["all"] else len(wanted))
        everything = everything or wanted == ["all"]
    elif runtime_nvidia and visible is None:
        count = max(count, 1)
    if count <= 0:
        return None
    if "devcontainer.local_folder" in labels or "devcontainer.config_file" in labels:
        ctype = "devcontainer"
    elif "com.docker.compose.project" in labels:
        ctype = "compose"
    else:
        ctype = "docker"
    return GpuRequest(count, ctype, name, asked_all=everything and count == 1)


def rewrite(
    cmd: RunCommand,
    *,
    devices: Sequence[str],
    labels: Mapping[str, str],
    environ: Mapping[str, str],
) -> list[str]:
    """The command with every GPU option replaced by one `--gpus device=…` and our labels."""
    kept: list[str] = []
    for opt in cmd.options:
        drop = (
            opt.name == "gpus"
            or (opt.name == "runtime" and opt.value == "nvidia")
            or _visible_value(opt, environ) is not None
            or (opt.name == "label" and (opt.value or "").startswith("ds01."))
        )
        if not drop:
            kept.extend(opt.tokens)
        elif opt.keep_prefix:
            kept.append(f"-{opt.keep_prefix}")
    end_marker = kept[-1:] == ["--"]
    if end_marker:
        kept.pop()
    # The docker CLI reads --gpus as CSV: `device=A,B` would be two fields ("B" an unknown
    # key), so a list of devices goes in double quotes, as NVIDIA documents.
    spec = f"device={','.join(devices)}"
    added = ["--gpus", f'"{spec}"' if len(devices) > 1 else spec]
    for key, value in labels.items():
        added += ["--label", f"{key}={value}"]
    return [*cmd.head, *kept, *added, *(["--"] if end_marker else []), *cmd.tail]
