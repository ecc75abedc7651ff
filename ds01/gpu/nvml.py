"""The NVML backend: GPUs, MIG instances, their processes and activity, read from the driver.

Every NVML call is made through `_Calls`, which turns a failure into a counted `call:ERROR`
entry (in `DeviceSample.failed_calls` and `GpuReading.errors`) instead of an exception, so one
lost GPU or one unsupported call never stops a read and never makes a device look idle.
"""

from __future__ import annotations

import ctypes
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ds01.clock import SYSTEM_CLOCK, Clock

from .model import DeviceSample, GpuDevice, GpuProcess, GpuReading

try:
    import pynvml
except ImportError:  # nvidia-ml-py is a dependency, but a broken install must not crash `auto`
    pynvml = None

logger = logging.getLogger(__name__)

_MIG_PROFILE = re.compile(r"\bMIG\s+(\S+)\s*$")
_NOT_AVAILABLE = 2**64 - 1  # NVML_VALUE_NOT_AVAILABLE for unsigned long long
_FAILED = object()  # the call failed and was recorded
_ABSENT = object()  # the call answered with an expected "no such thing" code

# What a failed call raises: NVMLError, or a ctypes/decoding error when binding and driver differ.
_CALL_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, ctypes.ArgumentError)
if pynvml is not None:
    _CALL_ERRORS += (pynvml.NVMLError, getattr(pynvml, "NVMLLibraryMismatchError", OSError))


class NvmlUnavailable(RuntimeError):
    """NVML cannot be used on this host: no library, no driver, or nvmlInit failed."""


def profile_from_name(name: str) -> str:
    """`NVIDIA H100 80GB HBM3 MIG 3g.40gb` -> `3g.40gb`; "" for a name without a MIG profile."""
    match = _MIG_PROFILE.search(name)
    return match.group(1) if match else ""


def error_name(code: int) -> str:
    """`15` -> `GPU_IS_LOST`: the NVML_ERROR_* constant without its prefix."""
    if pynvml is not None:
        for attr in dir(pynvml):
            if attr.startswith("NVML_ERROR_") and getattr(pynvml, attr) == code:
                return attr.removeprefix("NVML_ERROR_")
    return f"ERROR_{code}"


def _describe(exc: BaseException) -> str:
    value = getattr(exc, "value", None)
    return error_name(value) if isinstance(value, int) else type(exc).__name__


def _bytes_or_none(value: int | None) -> int | None:
    return None if value is None or value == _NOT_AVAILABLE else int(value)


class _Calls:
    """Runs NVML calls for one device (or one GPU); failures are recorded, never raised."""

    def __init__(self) -> None:
        self.failed: list[str] = []

    def __call__(
        self,
        fn: Callable[..., Any],
        *args: Any,
        expected: tuple[int, ...] = (),
        reraise: tuple[int, ...] = (),
    ) -> Any:
        """The call's result, `_ABSENT` for an `expected` code, `_FAILED` for any other error."""
        try:
            return fn(*args)
        except _CALL_ERRORS as exc:
            code = getattr(exc, "value", None)
            if code in reraise:
                raise
            if code in expected:
                return _ABSENT
            self.failed.append(f"{fn.__name__}:{_describe(exc)}")
            return _FAILED


class _ProcessInfoV1(ctypes.Structure):
    """nvmlProcessInfo_v1_t: 16 bytes, what the unversioned (pre-v2) process call fills."""

    _fields_ = [("pid", ctypes.c_uint), ("usedGpuMemory", ctypes.c_ulonglong)]


def nvmlDeviceGetComputeRunningProcesses_v1(handle: Any) -> list[Any]:
    """The unversioned call of old drivers, which current pynvml no longer wraps."""
    fn = pynvml._nvmlGetFunctionPointer("nvmlDeviceGetComputeRunningProcesses")
    count = ctypes.c_uint(0)
    ret = fn(handle, ctypes.byref(count), None)
    if ret == pynvml.NVML_SUCCESS:
        return []
    if ret != pynvml.NVML_ERROR_INSUFFICIENT_SIZE:
        raise pynvml.NVMLError(ret)
    count.value = count.value * 2 + 5  # room for processes started in between
    infos = (_ProcessInfoV1 * count.value)()
    pynvml._nvmlCheckReturn(fn(handle, ctypes.byref(count), infos))
    return [infos[i] for i in range(count.value)]


def _process_calls() -> list[Callable[..., Any]]:
    """Newest first: a driver without one answers FUNCTION_NOT_FOUND and the next is tried."""
    names = ("nvmlDeviceGetComputeRunningProcesses_v3", "nvmlDeviceGetComputeRunningProcesses_v2")
    calls = [getattr(pynvml, name) for name in names if hasattr(pynvml, name)]
    return [*calls, nvmlDeviceGetComputeRunningProcesses_v1]


@dataclass
class _GpmPair:
    """Two sample buffers for one GPU instance: the previous read's sample and a spare."""

    previous: Any
    spare: Any
    primed: bool = False


class _GpmSampler:
    """GPM activity per GPU instance; keeps each instance's last sample so reads never sleep."""

    def __init__(self) -> None:
        self.support: dict[str, bool] = {}  # GPU UUID -> GPM capable
        self._pairs: dict[tuple[str, int], _GpmPair] = {}
        self._seen: set[tuple[str, int]] = set()

    def supported(self, handle: Any, gpu_uuid: str, calls: _Calls) -> bool | None:
        """True/False once known; None when the query failed (activity then unknown, busy)."""
        if gpu_uuid in self.support:
            return self.support[gpu_uuid]
        query = getattr(pynvml, "nvmlGpmQueryDeviceSupport", None)
        absent = (pynvml.NVML_ERROR_NOT_SUPPORTED, pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
        answer = _ABSENT if query is None else calls(query, handle, expected=absent)
        if answer is _FAILED:
            return None
        self.support[gpu_uuid] = answer is not _ABSENT and bool(
            getattr(answer, "isSupportedDevice", False)
        )
        return self.support[gpu_uuid]

    def activity(self, parent: Any, gpu_uuid: str, gi: int, calls: _Calls) -> float | None:
        """Graphics activity of instance `gi` between the previous read and now."""
        key = (gpu_uuid, gi)
        self._seen.add(key)
        pair = self._pairs.get(key)
        if pair is None:
            first = calls(pynvml.nvmlGpmSampleAlloc)
            second = _FAILED if first is _FAILED else calls(pynvml.nvmlGpmSampleAlloc)
            if second is _FAILED:
                if first is not _FAILED:
                    _Calls()(pynvml.nvmlGpmSampleFree, first)
                return None
            pair = self._pairs[key] = _GpmPair(first, second)
        current = pair.spare
        if calls(pynvml.nvmlGpmMigSampleGet, parent, gi, current) is _FAILED:
            return None
        previous, primed = pair.previous, pair.primed
        pair.previous, pair.spare, pair.primed = current, previous, True
        if not primed:
            return None  # the first sample of this instance: no interval yet
        return _gpm_utilisation(previous, current, calls)

    def end_pass(self, *, keep_all: bool = False) -> None:
        """Free the samples of instances this pass did not see (destroyed or unreadable)."""
        for key in [k for k in self._pairs if not keep_all and k not in self._seen]:
            pair = self._pairs.pop(key)
            for sample in (pair.previous, pair.spare):
                _Calls()(pynvml.nvmlGpmSampleFree, sample)
        self._seen.clear()


def _gpm_utilisation(previous: Any, current: Any, calls: _Calls) -> float | None:
    """GRAPHICS_UTIL (time any engine was active) over the interval; SM_UTIL if that fails."""
    request = pynvml.c_nvmlGpmMetricsGet_t()
    request.version = pynvml.NVML_GPM_METRICS_GET_VERSION
    request.numMetrics = 2
    request.sample1 = previous
    request.sample2 = current
    request.metrics[0].metricId = pynvml.NVML_GPM_METRIC_GRAPHICS_UTIL
    request.metrics[1].metricId = pynvml.NVML_GPM_METRIC_SM_UTIL
    if calls(pynvml.nvmlGpmMetricsGet, request) is _FAILED:
        return None
    for metric in (request.metrics[0], request.metrics[1]):
        if metric.nvmlReturn == pynvml.NVML_SUCCESS:
            return _ratio(metric.value)
    calls.failed.append(f"nvmlGpmMetricsGet:{error_name(request.metrics[0].nvmlReturn)}")
    return None


@dataclass(frozen=True)
class _Gpu:
    """One physical GPU during a pass, with what the previous passes knew about its devices."""

    index: int
    handle: Any
    uuid: str
    model: str
    known: tuple[GpuDevice, ...]

    def known_device(self, uuid: str) -> GpuDevice | None:
        return next((d for d in self.known if d.device_uuid == uuid), None)


class NvmlBackend:
    """A GpuBackend over the NVIDIA driver; `read()` never raises for device failures."""

    name = "nvml"

    def __init__(self, *, clock: Clock = SYSTEM_CLOCK) -> None:
        if pynvml is None:
            raise NvmlUnavailable("pynvml (nvidia-ml-py) is not installed")
        try:
            pynvml.nvmlInit()
        except _CALL_ERRORS as exc:
            raise NvmlUnavailable(f"nvmlInit failed: {_describe(exc)}") from exc
        self._clock = clock
        self._lock = threading.Lock()
        self._closed = False
        self._known: dict[int, tuple[GpuDevice, ...]] = {}  # last inventory per GPU index
        self._devices: tuple[GpuDevice, ...] = ()
        self._gpm = _GpmSampler()
        self._process_calls = _process_calls()
        self._warned: set[str] = set()
        driver = _Calls()(pynvml.nvmlSystemGetDriverVersion)
        first = self.read()  # also takes the first GPM samples, so the next read has an interval
        logger.info(
            "gpu backend: NVML driver %s, %d devices, GPM on %s, %d errors",
            driver if isinstance(driver, str) else "unknown",
            len(first.devices),
            sorted(uuid for uuid, ok in self._gpm.support.items() if ok) or "no GPU",
            len(first.errors),
        )

    def devices(self) -> tuple[GpuDevice, ...]:
        """The inventory as of the last `read()`."""
        return self._devices

    def read(self) -> GpuReading:
        with self._lock:
            if self._closed:
                raise RuntimeError("NVML backend is closed")
            reading = self._read()
        self._devices = reading.devices
        for failure in reading.errors:
            if failure not in self._warned:
                self._warned.add(failure)
                logger.warning(
                    "gpu backend: NVML call failed: %s (counted; what it measures is unknown)",
                    failure,
                )
        logger.debug(
            "gpu backend: read %d devices, %d errors", len(reading.devices), len(reading.errors)
        )
        return reading

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._gpm.end_pass()  # nothing seen since the last pass: frees every sample
            if _Calls()(pynvml.nvmlShutdown) is _FAILED:
                logger.warning("gpu backend: nvmlShutdown failed")

    # -- one pass -----------------------------------------------------------------------------

    def _read(self) -> GpuReading:
        calls = _Calls()
        count = calls(pynvml.nvmlDeviceGetCount)
        devices: list[GpuDevice] = []
        samples: dict[str, DeviceSample] = {}
        errors: list[str] = list(calls.failed)
        if count is _FAILED:  # keep every known device, busy, rather than lose them all
            for index in sorted(self._known):
                devices.extend(self._known[index])
                samples.update(_unmeasured(self._known[index], calls.failed))
            self._gpm.end_pass(keep_all=True)
            return GpuReading(tuple(devices), samples, tuple(errors), self._clock.time())
        for index in range(count):
            gpu_devices, gpu_samples, gpu_errors = self._read_gpu(index)
            self._known[index] = gpu_devices
            devices.extend(gpu_devices)
            samples.update(gpu_samples)
            errors.extend(gpu_errors)
        for index in [i for i in self._known if i >= count]:
            del self._known[index]
        self._gpm.end_pass()
        return GpuReading(tuple(devices), samples, tuple(errors), self._clock.time())

    def _read_gpu(
        self, index: int
    ) -> tuple[tuple[GpuDevice, ...], dict[str, DeviceSample], list[str]]:
        """Devices, samples and failed calls of GPU `index` (its MIG instances when in MIG mode)."""
        calls = _Calls()
        known = self._known.get(index, ())
        handle = calls(pynvml.nvmlDeviceGetHandleByIndex, index)
        uuid = _FAILED if handle is _FAILED else calls(pynvml.nvmlDeviceGetUUID, handle)
        if uuid is _FAILED:
            return known, _unmeasured(known, calls.failed), calls.failed
        name = calls(pynvml.nvmlDeviceGetName, handle)
        model = name if isinstance(name, str) else next((d.model for d in known), "")
        gpu = _Gpu(index, handle, uuid, model, known)
        not_supported = (pynvml.NVML_ERROR_NOT_SUPPORTED,)
        mode = calls(pynvml.nvmlDeviceGetMigMode, handle, expected=not_supported)
        if mode is _FAILED and any(d.kind == "mig" for d in known):
            return known, _unmeasured(known, calls.failed), calls.failed
        if mode is _FAILED or mode is _ABSENT or mode[0] != pynvml.NVML_DEVICE_MIG_ENABLE:
            device, sample = self._read_whole_gpu(gpu, calls)
            return (device,), {device.device_uuid: sample}, calls.failed
        return self._read_mig_gpu(gpu, calls)

    def _read_whole_gpu(self, gpu: _Gpu, calls: _Calls) -> tuple[GpuDevice, DeviceSample]:
        memory = calls(pynvml.nvmlDeviceGetMemoryInfo, gpu.handle)
        util = calls(pynvml.nvmlDeviceGetUtilizationRates, gpu.handle)
        processes = self._processes(gpu.handle, calls)
        before = gpu.known_device(gpu.uuid)
        total = (before.memory_total_bytes if before else 0) if memory is _FAILED else memory.total
        device = GpuDevice(gpu.uuid, gpu.uuid, gpu.index, "gpu", gpu.model, int(total))
        sample = DeviceSample(
            device_uuid=gpu.uuid,
            activity_ratio=None if util is _FAILED else _ratio(util.gpu),
            processes=processes,
            memory_used_bytes=None if memory is _FAILED else int(memory.used),
            failed_calls=tuple(calls.failed),
        )
        return device, sample

    def _read_mig_gpu(
        self, gpu: _Gpu, calls: _Calls
    ) -> tuple[tuple[GpuDevice, ...], dict[str, DeviceSample], list[str]]:
        slots = calls(pynvml.nvmlDeviceGetMaxMigDeviceCount, gpu.handle)
        if slots is _FAILED:
            return gpu.known, _unmeasured(gpu.known, calls.failed), calls.failed
        before = len(calls.failed)
        gpm = self._gpm.supported(gpu.handle, gpu.uuid, calls)
        gpm_failed = tuple(calls.failed[before:])  # every instance's activity depends on it
        known_by_slot = {d.mig_index: d for d in gpu.known if d.kind == "mig"}
        devices: list[GpuDevice] = []
        samples: dict[str, DeviceSample] = {}
        errors = list(calls.failed)
        for slot in range(slots):  # MIG indexes are sparse: skip NOT_FOUND slots
            mig_calls = _Calls()
            not_found = (pynvml.NVML_ERROR_NOT_FOUND,)
            mig = mig_calls(
                pynvml.nvmlDeviceGetMigDeviceHandleByIndex, gpu.handle, slot, expected=not_found
            )
            if mig is _ABSENT:
                continue
            uuid = _FAILED if mig is _FAILED else mig_calls(pynvml.nvmlDeviceGetUUID, mig)
            if uuid is _FAILED:  # keep the instance we knew in this slot, unmeasured
                errors.extend(mig_calls.failed)
                lost = known_by_slot.get(slot)
                if lost is not None:
                    devices.append(lost)
                    samples.update(_unmeasured((lost,), mig_calls.failed))
                continue
            device, sample = self._read_mig_device(gpu, slot, mig, uuid, gpm, mig_calls)
            errors.extend(mig_calls.failed)
            if gpm is None:
                sample = _with_failures(sample, gpm_failed)
            devices.append(device)
            samples[uuid] = sample
        return tuple(devices), samples, errors

    def _read_mig_device(
        self, gpu: _Gpu, slot: int, mig: Any, uuid: str, gpm: bool | None, calls: _Calls
    ) -> tuple[GpuDevice, DeviceSample]:
        before = gpu.known_device(uuid)
        name = calls(pynvml.nvmlDeviceGetName, mig)
        memory = calls(pynvml.nvmlDeviceGetMemoryInfo, mig)
        gi = calls(pynvml.nvmlDeviceGetGpuInstanceId, mig)
        ci = calls(pynvml.nvmlDeviceGetComputeInstanceId, mig)
        processes = self._processes(mig, calls)
        activity = None
        if gpm and isinstance(gi, int):
            activity = self._gpm.activity(gpu.handle, gpu.uuid, gi, calls)
        profile = profile_from_name(name) if isinstance(name, str) else ""
        device = GpuDevice(
            device_uuid=uuid,
            gpu_uuid=gpu.uuid,
            gpu_index=gpu.index,
            kind="mig",
            model=gpu.model,
            memory_total_bytes=int(memory.total)
            if memory is not _FAILED
            else (before.memory_total_bytes if before else 0),
            profile=profile or (before.profile if before else ""),
            gi_id=gi if isinstance(gi, int) else (before.gi_id if before else None),
            ci_id=ci if isinstance(ci, int) else (before.ci_id if before else None),
            mig_index=slot,
        )
        sample = DeviceSample(
            device_uuid=uuid,
            activity_ratio=activity,
            processes=processes,
            memory_used_bytes=None if memory is _FAILED else int(memory.used),
            failed_calls=tuple(calls.failed),
        )
        return device, sample

    def _processes(self, handle: Any, calls: _Calls) -> tuple[GpuProcess, ...] | None:
        """Compute processes (host PIDs), through the newest process call the driver has."""
        not_found = (pynvml.NVML_ERROR_FUNCTION_NOT_FOUND,)
        while True:
            fn = self._process_calls[0]
            last = len(self._process_calls) == 1
            try:
                infos = calls(fn, handle, reraise=() if last else not_found)
            except pynvml.NVMLError:
                self._process_calls.pop(0)
                logger.info(
                    "gpu backend: driver lacks %s; using %s",
                    fn.__name__,
                    self._process_calls[0].__name__,
                )
                continue
            if infos is _FAILED:
                return None
            return tuple(
                GpuProcess(int(p.pid), _bytes_or_none(getattr(p, "usedGpuMemory", None)))
                for p in infos
            )


def _ratio(percent: float) -> float:
    return min(1.0, max(0.0, float(percent) / 100.0))


def _unmeasured(devices: tuple[GpuDevice, ...], failed: list[str]) -> dict[str, DeviceSample]:
    """Samples for devices that could not be read at all: nothing measured, so busy."""
    return {
        d.device_uuid: DeviceSample(d.device_uuid, None, None, None, tuple(failed)) for d in devices
    }


def _with_failures(sample: DeviceSample, failed: tuple[str, ...]) -> DeviceSample:
    return DeviceSample(
        sample.device_uuid,
        sample.activity_ratio,
        sample.processes,
        sample.memory_used_bytes,
        sample.failed_calls + failed,
    )
