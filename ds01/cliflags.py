"""The flags every service shares (DESIGN.md "Command-line conventions"), in one place."""

from __future__ import annotations

import argparse
import os

from .durations import parse_duration
from .policy import DEFAULT_POLICY_PATH, Policy, PolicyError, load_policy_or_default


def add_common_flags(parser: argparse.ArgumentParser, *, default_listen: str | None) -> None:
    parser.add_argument(
        "--policy",
        default=os.environ.get("DS01_POLICY"),
        help=f"policy file (env DS01_POLICY; default {DEFAULT_POLICY_PATH}, "
        "built-in defaults when that file does not exist)",
    )
    parser.add_argument(
        "--state-dir",
        default=os.environ.get("DS01_STATE_DIR"),
        help="folder for persistent state (env DS01_STATE_DIR; default: the policy's "
        "services.state_dir, /var/lib/ds01)",
    )
    if default_listen is not None:
        parser.add_argument(
            "--listen",
            default=None,
            help=f"HOST:PORT to serve on (default {default_listen}, loopback only)",
        )
    add_docker_host_flag(parser)
    parser.add_argument(
        "--log-level",
        default=os.environ.get("DS01_LOG_LEVEL", "INFO"),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log verbosity (default INFO)",
    )


def add_docker_host_flag(parser: argparse.ArgumentParser) -> None:
    """--docker-host, defaulting to DOCKER_HOST (the services and the `container` command)."""
    parser.add_argument(
        "--docker-host",
        default=os.environ.get("DOCKER_HOST"),
        help="Docker API URL (default: DOCKER_HOST or the local socket)",
    )


def add_policy_file_flag(parser: argparse.ArgumentParser) -> None:
    """--policy for the render tools; `load_policy_or_default(args.policy)` resolves None."""
    parser.add_argument(
        "--policy",
        default=None,
        help="policy file (default: DS01_POLICY or /etc/ds01/ds01.yaml; built-in defaults "
        "when neither exists)",
    )


def duration_arg(text: str) -> float:
    """argparse type: a duration such as 500ms, 5s, 1m or 7d (a bare number is seconds)."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_duration_arg(text: str) -> float:
    """argparse type: like `duration_arg`, but zero is refused too."""
    value = duration_arg(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be longer than 0, got {text!r}")
    return value


def load_policy_for(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Policy:
    """The policy named by the flags; an invalid one ends the program through parser.error."""
    try:
        return load_policy_or_default(args.policy)
    except PolicyError as exc:
        parser.error(str(exc))
        raise  # unreachable: parser.error exits


def split_listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)
