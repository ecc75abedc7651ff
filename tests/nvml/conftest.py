"""Fixtures for the NVML tests: the fake libnvidia-ml.so.1, built here, run in a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from ds01.gpu import DeviceSample, GpuDevice, GpuProcess, GpuReading
from tests.harness.components import missing

REPO = Path(__file__).resolve().parents[2]
FAKENVML = REPO / "tests" / "fakenvml"
VARIANTS = {
    "modern": [],
    "no_v3": ["-DFAKE_NO_PROC_V3", "-DFAKE_NO_GPM"],  # an R470-era driver
    "v1_only": ["-DFAKE_NO_PROC_V2", "-DFAKE_NO_GPM"],  # older still: unversioned call only
}


@dataclass(frozen=True)
class NvmlRun:
    """What one backend process reported: its name and one reading per scenario file."""

    backend: str | None
    reads: tuple[GpuReading, ...]
    inventories: tuple[tuple[str, ...], ...]
    unavailable: str | None
    log: str


def reading_from_json(data: dict) -> GpuReading:
    devices = tuple(GpuDevice(**d) for d in data["devices"])
    samples = {}
    for uuid, s in data["samples"].items():
        processes = s["processes"]
        samples[uuid] = DeviceSample(
            device_uuid=s["device_uuid"],
            activity_ratio=s["activity_ratio"],
            processes=None if processes is None else tuple(GpuProcess(**p) for p in processes),
            memory_used_bytes=s["memory_used_bytes"],
            failed_calls=tuple(s["failed_calls"]),
        )
    return GpuReading(devices, samples, tuple(data["errors"]))


@pytest.fixture(scope="session")
def fake_nvml_lib(tmp_path_factory) -> Callable[[str], Path]:
    """Build variant -> folder holding libnvidia-ml.so.1 (compiled once per session)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        missing("no C compiler (cc) to build the fake libnvidia-ml.so.1")
    built: dict[str, Path] = {}

    def build(variant: str) -> Path:
        if variant not in built:
            folder = tmp_path_factory.mktemp(f"fakenvml-{variant}")
            proc = subprocess.run(
                [cc, "-O1", "-Wall", "-Werror", "-shared", "-fPIC", *VARIANTS[variant]]
                + ["-o", str(folder / "libnvidia-ml.so.1"), str(FAKENVML / "fakenvml.c")],
                capture_output=True,
                text=True,
            )
            assert proc.returncode == 0, f"building fakenvml ({variant}) failed:\n{proc.stderr}"
            built[variant] = folder
        return built[variant]

    return build


@pytest.fixture
def scenario(tmp_path) -> Callable[..., Path]:
    """A checked-in scenario with extra lines appended (e.g. `fail …` rules), as a new file."""
    count = iter(range(1000))

    def make(base: str, *extra: str) -> Path:
        path = tmp_path / f"scenario-{next(count)}-{base}"
        path.write_text((FAKENVML / base).read_text() + "".join(f"{line}\n" for line in extra))
        return path

    return make


@pytest.fixture
def run_nvml(fake_nvml_lib, tmp_path) -> Callable[..., NvmlRun]:
    """Open the NVML backend on the fake library and read once per scenario given."""

    def run(*scenarios: str | Path, variant: str = "modern", kind: str = "nvml") -> NvmlRun:
        files = [str(s if isinstance(s, Path) else FAKENVML / s) for s in scenarios]
        active = tmp_path / "active-scenario.txt"
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = str(fake_nvml_lib(variant))
        env["FAKENVML_SCENARIO"] = str(active)
        env["DS01_STATE_DIR"] = str(tmp_path)
        proc = subprocess.run(
            [sys.executable, "-m", "tests.nvml.runner", str(active), *files, "--kind", kind],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, f"backend process failed:\n{proc.stderr}"
        data = json.loads(proc.stdout)
        reads = data.get("reads", [])
        return NvmlRun(
            backend=data.get("backend"),
            reads=tuple(reading_from_json(r) for r in reads),
            inventories=tuple(tuple(r["inventory"]) for r in reads),
            unavailable=data.get("unavailable"),
            log=proc.stderr,
        )

    return run
