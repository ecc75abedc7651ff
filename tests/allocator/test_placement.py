from allocator.placement import EligibilityCache, eligible_devices, feasibility, usable_by
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


def test_the_eligibility_cache_answers_as_eligible_devices_and_follows_a_new_inventory():
    cache = EligibilityCache()
    asks = [(None, False, True), (None, False, False), ("3g.71gb", False, False),
            (None, True, True), (None, False, True)]  # fmt: skip
    for profile, full_gpu, allow in asks:
        asked = {"profile": profile, "full_gpu": full_gpu, "allow_full_gpu": allow}
        assert cache.eligible(INVENTORY, **asked) == eligible_devices(INVENTORY, **asked)
    smaller = tuple(d for d in INVENTORY if d.kind == "gpu")  # the MIG instances went away
    assert _indexes(cache.eligible(smaller, profile=None, full_gpu=False, allow_full_gpu=True)) == [
        "1"
    ]


def test_feasibility_uses_the_eligible_devices_it_is_given():
    verdict = feasibility(
        INVENTORY, count=2, profile=None, full_gpu=False, allow_full_gpu=False, group="g",
        eligible=(),
    )  # fmt: skip
    assert not verdict.ok and "only 0 device(s)" in verdict.message


def test_usable_devices_run_nobody_elses_process_and_keep_their_order():
    owners = {"b": {"bob"}, "c": {"alice"}, "d": {"?"}, "e": {"alice", "bob"}}
    assert usable_by(["a", "b", "c", "d", "e"], "alice", owners) == ("a", "c")
    assert usable_by(["c", "a"], "bob", owners) == ("a",)
    assert usable_by(["b", "a"], "bob", {}) == ("b", "a")  # no processes anywhere
