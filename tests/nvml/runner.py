"""Run the NVML backend in a fresh process (pynvml keeps its library per process) and print JSON.

Usage: python -m tests.nvml.runner ACTIVE_SCENARIO FILE [FILE ...] [--kind nvml|auto]
Each FILE is copied over ACTIVE_SCENARIO (which FAKENVML_SCENARIO names) before one read;
the first is also in place when the backend opens. Prints {"backend", "reads"} or
{"unavailable": message}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("active", help="the scenario path FAKENVML_SCENARIO names")
    parser.add_argument("files", nargs="+", help="scenario for each read, in order")
    parser.add_argument("--kind", default="nvml", choices=("nvml", "auto"))
    parser.add_argument("--no-close", action="store_true", help="skip close() at the end")
    return parser


def install(source: str, active: str) -> None:
    """Replace the active scenario with a new inode so the fake notices the change."""
    tmp = f"{active}.tmp"
    shutil.copyfile(source, tmp)
    os.replace(tmp, active)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(message)s")
    from ds01.gpu import open_backend
    from ds01.gpu.nvml import NvmlUnavailable

    install(args.files[0], args.active)
    try:
        backend = open_backend(args.kind)
    except NvmlUnavailable as exc:
        print(json.dumps({"unavailable": str(exc)}))
        return 0
    reads = []
    for path in args.files:
        install(path, args.active)
        reading = backend.read()
        reads.append(
            {
                "devices": [dataclasses.asdict(d) for d in reading.devices],
                "samples": {k: dataclasses.asdict(s) for k, s in reading.samples.items()},
                "errors": list(reading.errors),
                "inventory": [d.device_uuid for d in backend.devices()],
            }
        )
    if not args.no_close:
        backend.close()
    print(json.dumps({"backend": backend.name, "reads": reads}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
