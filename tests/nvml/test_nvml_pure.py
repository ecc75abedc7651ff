"""Pure parts of the NVML backend and the `auto` selection, without any library."""

from __future__ import annotations

import logging

import pytest

from ds01.gpu import nvml, open_backend
from ds01.gpu.sim import SimBackend


@pytest.mark.parametrize(
    ("name", "profile"),
    [
        ("NVIDIA H100 80GB HBM3 MIG 3g.40gb", "3g.40gb"),
        ("NVIDIA H200 MIG 1g.18gb", "1g.18gb"),
        ("NVIDIA A100-SXM4-40GB MIG 1g.5gb+me", "1g.5gb+me"),
        ("NVIDIA A100-SXM4-80GB MIG 1c.3g.40gb", "1c.3g.40gb"),
        ("NVIDIA H100 80GB HBM3", ""),
    ],
)
def test_profile_is_parsed_from_the_mig_device_name(name, profile):
    assert nvml.profile_from_name(name) == profile


def test_error_names_are_nvml_constants():
    assert nvml.error_name(15) == "GPU_IS_LOST"
    assert nvml.error_name(3) == "NOT_SUPPORTED"
    assert nvml.error_name(999) == "UNKNOWN"


def test_auto_falls_back_to_sim_and_says_so(monkeypatch, caplog):
    def unavailable(**_kwargs):
        raise nvml.NvmlUnavailable("nvmlInit failed: LIBRARY_NOT_FOUND")

    monkeypatch.setattr(nvml, "NvmlBackend", unavailable)
    with caplog.at_level(logging.INFO, logger="ds01.gpu"):
        backend = open_backend("auto")
    assert isinstance(backend, SimBackend)
    assert (
        "gpu backend: NVML unavailable (nvmlInit failed: LIBRARY_NOT_FOUND); using the sim backend"
        in caplog.messages
    )
    with pytest.raises(nvml.NvmlUnavailable, match="LIBRARY_NOT_FOUND"):
        open_backend("nvml")
