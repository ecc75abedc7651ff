"""Simulated GPUs: a topology from YAML and activity that tests and demos set in a state file.

The state file (JSON) maps a device (UUID or index such as `0:2`) to its activity:
`{"devices": {"0:2": {"activity": 0.9, "pids": [4242], "memory_used": 1073741824}}}`.
`busy: true` is shorthand for activity 1.0; `fail: true` makes every call for that device fail.
`ds01 sim-gpu set …` edits it, so no code is needed to drive a demo.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
import uuid
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .model import DeviceSample, GpuDevice, GpuProcess, GpuReading

_NAMESPACE = uuid.UUID("6f1c9a52-3f0e-4d55-9a43-2d0d8f7b7e01")
_MEMORY = re.compile(r"^(\d+(?:\.\d+)?)\s*(gb|gib|mb|mib)?$", re.IGNORECASE)
_PROFILE = re.compile(r"^(\d+)g\.(\d+)gb$")


class SimTopologyError(ValueError):
    """A sim topology file that cannot be used; names the file and the entry."""


def _memory_bytes(value: Any, where: str) -> int:
    if isinstance(value, int):
        return value
    match = _MEMORY.match(str(value).strip())
    if match is None:
        raise SimTopologyError(f"{where}: memory {value!r} is not like 141gb or 18432mib")
    number, unit = float(match.group(1)), (match.group(2) or "gb").lower()
    scale = {"gb": 1024**3, "gib": 1024**3, "mb": 1024**2, "mib": 1024**2}[unit]
    return int(number * scale)


def _profile_memory(profile: str, where: str) -> int:
    match = _PROFILE.match(profile)
    if match is None:
        raise SimTopologyError(f"{where}: MIG profile {profile!r} is not like 3g.71gb")
    return int(match.group(2)) * 1024**3


def read_topology(path: str | os.PathLike[str] | None = None) -> tuple[dict[str, Any], str]:
    """The parsed topology document and its name (the packaged default when path is None)."""
    if path is None:
        text = resources.files("ds01.gpu").joinpath("sim_default.yaml").read_text()
        source = "<default sim topology>"
    else:
        source = str(path)
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise SimTopologyError(f"{source}: cannot read: {exc.strerror}") from exc
    try:
        return yaml.safe_load(text) or {}, source
    except yaml.YAMLError as exc:
        raise SimTopologyError(f"{source}: not valid YAML: {exc}") from exc


def load_topology(path: str | os.PathLike[str] | None = None) -> tuple[GpuDevice, ...]:
    """Devices of a sim topology file (the packaged default when path is None)."""
    return topology_devices(*read_topology(path))


def topology_for_node(node: str, path: str | os.PathLike[str] | None = None) -> str:
    """A topology (the default, or `path`) as YAML whose seed names `node`: every simulated
    node gets device UUIDs of its own, as real GPUs have, so a cluster store can tell them
    apart. Explicit `uuid:` entries are kept as they are."""
    data, _ = read_topology(path)
    data = dict(data, seed=f"{data.get('seed', 'ds01-sim')}/{node}")
    return yaml.safe_dump(data, sort_keys=False)


def topology_devices(data: Mapping[str, Any], source: str = "<sim>") -> tuple[GpuDevice, ...]:
    """Build stable devices: UUIDs derive from the seed and position unless given."""
    seed = str(data.get("seed", "ds01-sim"))
    gpus = data.get("gpus")
    if not isinstance(gpus, list) or not gpus:
        raise SimTopologyError(f"{source}: gpus: must be a non-empty list")
    devices: list[GpuDevice] = []
    for position, gpu in enumerate(gpus):
        where = f"{source}: gpus[{position}]"
        if not isinstance(gpu, Mapping):
            raise SimTopologyError(f"{where}: must be a mapping")
        index = int(gpu.get("index", position))
        model = str(gpu.get("model", "NVIDIA H200"))
        gpu_uuid = str(gpu.get("uuid") or f"GPU-{uuid.uuid5(_NAMESPACE, f'{seed}/{index}')}")
        memory = _memory_bytes(gpu.get("memory", "141gb"), where)
        mig = gpu.get("mig") or []
        if not mig:
            devices.append(GpuDevice(gpu_uuid, gpu_uuid, index, "gpu", model, memory))
            continue
        for slot, entry in enumerate(mig):
            spec = {"profile": entry} if isinstance(entry, str) else dict(entry)
            profile = str(spec.get("profile", ""))
            mem = spec.get("memory")
            mig_where = f"{where}.mig[{slot}]"
            mem_bytes = (
                _memory_bytes(mem, mig_where)
                if mem is not None
                else _profile_memory(profile, mig_where)
            )
            gi_id = int(spec.get("gi_id", slot + 1))
            mig_uuid = str(
                spec.get("uuid") or f"MIG-{uuid.uuid5(_NAMESPACE, f'{gpu_uuid}/{gi_id}')}"
            )
            devices.append(
                GpuDevice(
                    device_uuid=mig_uuid,
                    gpu_uuid=gpu_uuid,
                    gpu_index=index,
                    kind="mig",
                    model=model,
                    memory_total_bytes=mem_bytes,
                    profile=profile,
                    gi_id=gi_id,
                    ci_id=int(spec.get("ci_id", 0)),
                    mig_index=int(spec.get("mig_index", slot)),
                )
            )
    uuids = [d.device_uuid for d in devices]
    if len(set(uuids)) != len(uuids):
        raise SimTopologyError(f"{source}: device UUIDs are not unique")
    return tuple(devices)


def gpm_devices(data: Mapping[str, Any]) -> set[int]:
    return {int(g.get("index", i)) for i, g in enumerate(data.get("gpus", [])) if g.get("gpm")}


class SimStateFile:
    """The JSON file through which tests and demos set simulated activity."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def load(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        return dict(data.get("devices", {}))

    def save(self, devices: Mapping[str, Mapping[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".sim-state-")
        with os.fdopen(fd, "w") as handle:
            json.dump({"devices": devices}, handle, indent=2, sort_keys=True)
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.path)

    def set_device(self, device: str, **values: Any) -> None:
        devices = self.load()
        entry = dict(devices.get(device, {}))
        entry.update({k: v for k, v in values.items() if v is not None})
        devices[device] = entry
        self.save(devices)

    def clear(self, device: str | None = None) -> None:
        devices = {} if device is None else {k: v for k, v in self.load().items() if k != device}
        self.save(devices)


class SimBackend:
    """A GpuBackend over a topology; activity comes from the state file at each read."""

    name = "sim"

    def __init__(
        self,
        devices: tuple[GpuDevice, ...],
        state_file: str | os.PathLike[str] | None = None,
        *,
        gpm_gpu_indexes: set[int] | None = None,
    ) -> None:
        self._devices = devices
        self._state = SimStateFile(state_file) if state_file else None
        # MIG activity is measurable only on GPUs with GPM (Hopper+), as with NVML.
        self._gpm = (
            gpm_gpu_indexes if gpm_gpu_indexes is not None else {d.gpu_index for d in devices}
        )

    @classmethod
    def from_files(
        cls, topology: str | os.PathLike[str] | None, state_file: str | os.PathLike[str] | None
    ) -> SimBackend:
        data, source = read_topology(topology)
        return cls(topology_devices(data, source), state_file, gpm_gpu_indexes=gpm_devices(data))

    def devices(self) -> tuple[GpuDevice, ...]:
        return self._devices

    def read(self) -> GpuReading:
        errors: list[str] = []
        try:
            state = self._state.load() if self._state else {}
        except (OSError, ValueError) as exc:
            errors.append(f"sim_state:{type(exc).__name__}")
            state = {}
        samples = {d.device_uuid: self._sample(d, state) for d in self._devices}
        for sample in samples.values():
            errors.extend(sample.failed_calls)
        return GpuReading(self._devices, samples, tuple(errors), time.time())

    def _sample(self, device: GpuDevice, state: Mapping[str, Mapping[str, Any]]) -> DeviceSample:
        entry = state.get(device.device_uuid) or state.get(device.index) or {}
        if entry.get("fail"):
            return DeviceSample(device.device_uuid, None, None, None, ("sim_device",))
        if "activity" in entry:
            activity = float(entry["activity"])
        elif "busy" in entry:
            activity = 1.0 if entry["busy"] else 0.0
        else:
            activity = 0.0
        measurable = device.kind == "gpu" or device.gpu_index in self._gpm
        processes = tuple(GpuProcess(int(pid)) for pid in entry.get("pids", ()))
        memory_used = entry.get("memory_used")
        if memory_used is None:
            memory_used = 512 * 1024**2 * len(processes)
        return DeviceSample(
            device_uuid=device.device_uuid,
            activity_ratio=min(1.0, max(0.0, activity)) if measurable else None,
            processes=processes,
            memory_used_bytes=int(memory_used),
        )

    def close(self) -> None:
        return None
