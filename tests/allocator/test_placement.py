from allocator.placement import eligible_devices, feasibility
from ds01.gpu.sim import load_topology

INVENTORY = load_topology(None)  # GPU 0: 3g.71gb, 2g.35gb, 1g.18gb, 1g.18gb; GPU 1 whole


def _indexes(devices):
    return [d.index for d in devices]


def test_mig_before_whole_gpu_smallest_first():
    order = eligible_devices(INVENTORY, profile=None, full_gpu=False, allow_full_gpu=True)
    assert _indexes(order) == ["0:2", "0:3", "0:1", "0:0", "1"]


def test_whole_gpus_only_for_groups_that_allow_them():
    order = eligible_devices(INVENTORY, profile=None, full_gpu=False, allow_full_gpu=False)
    assert _indexes(order) == ["0:2", "0:3", "0:1", "0:0"]


def test_full_gpu_gets_only_whole_gpus():
    order = eligible_devices(INVENTORY, profile=None, full_gpu=True, allow_full_gpu=True)
    assert _indexes(order) == ["1"]


def test_profile_gets_that_profile_only():
    order = eligible_devices(INVENTORY, profile="3g.71gb", full_gpu=False, allow_full_gpu=False)
    assert _indexes(order) == ["0:0"]


def test_full_gpu_refused_for_group_without_it():
    verdict = feasibility(
        INVENTORY, count=1, profile=None, full_gpu=True, allow_full_gpu=False, group="student"
    )
    assert not verdict.ok and verdict.reason == "not_allowed"
    assert "student" in verdict.message


def test_unknown_profile_is_impossible_and_lists_the_profiles_here():
    verdict = feasibility(
        INVENTORY, count=1, profile="7g.141gb", full_gpu=False, allow_full_gpu=False, group="s"
    )
    assert not verdict.ok and verdict.reason == "impossible"
    assert "1g.18gb" in verdict.message and "3g.71gb" in verdict.message


def test_more_devices_than_the_host_has_is_impossible():
    verdict = feasibility(
        INVENTORY, count=5, profile=None, full_gpu=False, allow_full_gpu=False, group="student"
    )
    assert not verdict.ok and "asked for 5" in verdict.message
