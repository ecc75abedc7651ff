"""Create bodies as real clients send them: GPU forms, refusals naming the field, the rewrite."""

from __future__ import annotations

import pytest

from allocator.gateway_create import (
    CreateRefused,
    CreateRules,
    bind_sources,
    create_refusal,
    exec_refusal,
    gpu_ask,
    named_volumes,
    profile_hint,
    referenced_containers,
    rewrite_create,
    volume_options_refusal,
    with_bind_sources,
)

RULES = CreateRules(allowed_bind_paths=("/data",), allowed_devices=frozenset({"/dev/fuse"}))
HOME = "/home/alice"


def identity(path: str) -> str:
    return path


def refusal(host: dict, **body) -> str | None:
    return create_refusal({"HostConfig": host, **body}, home=HOME, rules=RULES, realpath=identity)


# --- GPU requests -----------------------------------------------------------------------------


def test_gpus_all_from_the_cli_asks_for_one_device():
    body = {"HostConfig": {"DeviceRequests": [{"Count": -1, "Capabilities": [["gpu"]]}]}}
    ask = gpu_ask(body)
    assert ask is not None and ask.count == 1 and ask.all_devices


def test_gpus_count_and_device_ids_and_compose_nvidia_driver():
    assert gpu_ask({"HostConfig": {"DeviceRequests": [{"Count": 2, "Capabilities": [["gpu"]]}]}})
    two = gpu_ask({"HostConfig": {"DeviceRequests": [{"Count": 2, "Capabilities": [["gpu"]]}]}})
    assert two is not None and two.count == 2
    named = gpu_ask(
        {"HostConfig": {"DeviceRequests": [{"DeviceIDs": ["0:0", "0:1"], "Capabilities": []}]}}
    )
    assert named is None  # neither the gpu capability nor the nvidia driver: not a GPU request
    compose = gpu_ask(
        {"HostConfig": {"DeviceRequests": [{"Driver": "nvidia", "DeviceIDs": ["0:0", "0:1"]}]}}
    )
    assert compose is not None and compose.count == 2 and compose.named == ("0:0", "0:1")


def test_visible_devices_counts_only_under_the_nvidia_runtime():
    env = {"Env": ["NVIDIA_VISIBLE_DEVICES=all"]}
    assert gpu_ask(env, default_runtime="runc") is None  # a CUDA image's env under runc
    assert gpu_ask(env, default_runtime="nvidia") is not None
    explicit = {**env, "HostConfig": {"Runtime": "nvidia"}}
    assert gpu_ask(explicit).count == 1
    listed = {"Env": ["NVIDIA_VISIBLE_DEVICES=0,1"], "HostConfig": {"Runtime": "nvidia"}}
    assert gpu_ask(listed).count == 2
    void = {"Env": ["NVIDIA_VISIBLE_DEVICES=void"], "HostConfig": {"Runtime": "nvidia"}}
    assert gpu_ask(void) is None
    bare = {"HostConfig": {"Runtime": "nvidia"}}
    assert gpu_ask(bare).count == 1  # the runtime's default is every device


def test_malformed_device_requests_are_refused_with_the_field():
    with pytest.raises(CreateRefused, match="HostConfig.DeviceRequests"):
        gpu_ask({"HostConfig": {"DeviceRequests": "all"}})
    with pytest.raises(CreateRefused, match="Count or DeviceIDs"):
        gpu_ask({"HostConfig": {"DeviceRequests": [{"Count": 0, "Capabilities": [["gpu"]]}]}})


def test_rewrite_names_exactly_the_allocated_devices_and_keeps_other_requests():
    body = {
        "Image": "x",
        "Labels": {"ds01.user": "root", "ds01.managed": "false", "keep": "1"},
        "HostConfig": {
            "DeviceRequests": [
                {"Count": -1, "Capabilities": [["gpu", "utility"]]},
                {"Driver": "other", "Count": 1, "Capabilities": [["fpga"]]},
            ]
        },
    }
    ask = gpu_ask(body)
    out = rewrite_create(body, stamps={"ds01.user": "alice"}, ask=ask, devices=("MIG-a", "MIG-b"))
    requests = out["HostConfig"]["DeviceRequests"]
    assert {"Driver": "other", "Count": 1, "Capabilities": [["fpga"]]} in requests
    gpu = [r for r in requests if r.get("DeviceIDs")]
    assert gpu == [
        {
            "Driver": "",
            "Count": 0,
            "DeviceIDs": ["MIG-a", "MIG-b"],
            "Capabilities": [["gpu", "utility"]],
            "Options": {},
        }
    ]
    assert out["Labels"] == {
        "keep": "1",
        "ds01.user": "alice",
        "ds01.managed": "true",
        "ds01.gpu.devices": "MIG-a,MIG-b",
    }
    assert body["Labels"]["ds01.user"] == "root"  # the input is not modified


def test_rewrite_under_the_nvidia_runtime_sets_visible_devices():
    body = {"Env": ["A=1", "NVIDIA_VISIBLE_DEVICES=all"], "HostConfig": {"Runtime": "nvidia"}}
    out = rewrite_create(body, stamps={}, ask=gpu_ask(body), devices=("GPU-1",))
    assert out["Env"] == ["A=1", "NVIDIA_VISIBLE_DEVICES=GPU-1"]
    plain = {"Env": ["A=1"]}
    quiet = rewrite_create(plain, stamps={}, ask=None, default_runtime="nvidia")
    assert quiet["Env"] == ["A=1", "NVIDIA_VISIBLE_DEVICES=void"]  # no GPU by the image's env
    assert rewrite_create(plain, stamps={}, ask=None)["Env"] == ["A=1"]  # runc: untouched


def test_profile_hint_from_named_devices():
    table = [
        {"index": "0:0", "device_uuid": "MIG-a", "kind": "mig", "profile": "1g.18gb"},
        {"index": "0:1", "device_uuid": "MIG-b", "kind": "mig", "profile": "2g.35gb"},
        {"index": "1", "device_uuid": "GPU-1", "kind": "gpu", "profile": ""},
    ]
    assert profile_hint(("0:0",), lambda: table) == ("1g.18gb", False)
    assert profile_hint(("MIG-b",), lambda: table) == ("2g.35gb", False)
    assert profile_hint(("1",), lambda: table) == (None, True)
    assert profile_hint(("0:0", "0:1"), lambda: table) == (None, False)
    assert profile_hint(("7",), lambda: table) == (None, False)
    assert profile_hint((), lambda: []) == (None, False)


# --- refusals -----------------------------------------------------------------------------------


def test_privileged_host_namespaces_and_unconfined_are_refused_naming_the_field():
    assert "HostConfig.Privileged" in refusal({"Privileged": True})
    assert "HostConfig.PidMode" in refusal({"PidMode": "host"})
    assert "HostConfig.IpcMode" in refusal({"IpcMode": "host"})
    assert "HostConfig.UsernsMode" in refusal({"UsernsMode": "host"})
    assert "HostConfig.SecurityOpt" in refusal({"SecurityOpt": ["seccomp=unconfined"]})
    assert "HostConfig.SecurityOpt" in refusal({"SecurityOpt": ["apparmor:unconfined"]})
    assert "HostConfig.CgroupParent" in refusal({"CgroupParent": "/"})
    assert refusal({"SecurityOpt": ["no-new-privileges"]}) is None
    assert refusal({"NetworkMode": "none", "IpcMode": "private"}) is None


def test_capabilities_outside_the_allow_list_are_refused():
    assert refusal({"CapAdd": ["SYS_PTRACE"]}) is None
    assert refusal({"CapAdd": ["CAP_SYS_PTRACE"]}) is None
    problem = refusal({"CapAdd": ["SYS_ADMIN"]})
    assert "HostConfig.CapAdd" in problem and "SYS_ADMIN" in problem
    assert "HostConfig.CapAdd" in refusal({"CapAdd": ["ALL"]})


def test_gpu_devices_are_refused_with_how_to_ask_and_others_need_the_allow_list():
    problem = refusal({"Devices": [{"PathOnHost": "/dev/nvidia0", "PathInContainer": "/dev/x"}]})
    assert "HostConfig.Devices" in problem and "--gpus" in problem
    assert refusal({"Devices": [{"PathOnHost": "/dev/fuse"}]}) is None
    assert "/dev/sda" in refusal({"Devices": [{"PathOnHost": "/dev/sda"}]})
    assert "DeviceCgroupRules" in refusal({"DeviceCgroupRules": ["c 195:* rwm"]})


def test_bind_mounts_only_from_home_and_allowed_paths_never_the_docker_socket():
    assert refusal({"Binds": ["/home/alice/project:/work"]}) is None
    assert refusal({"Binds": ["/data/set:/data:ro", "named-volume:/cache"]}) is None
    root = refusal({"Binds": ["/:/host"]})
    assert "HostConfig.Binds[0]" in root and "/home/alice" in root
    assert "Binds[0]" in refusal({"Binds": ["/home/alice2:/x"]})  # a prefix is not a parent
    assert "Docker socket" in refusal({"Binds": ["/var/run/docker.sock:/var/run/docker.sock"]})
    assert "Docker socket" in refusal({"Binds": ["/home/alice/docker.sock:/s"]})
    mounts = {"Mounts": [{"Type": "bind", "Source": "/etc", "Target": "/etc2"}]}
    assert "HostConfig.Mounts[0]" in refusal(mounts)
    disguised = {
        "Mounts": [
            {
                "Type": "volume",
                "Target": "/x",
                "VolumeOptions": {
                    "DriverConfig": {"Options": {"type": "none", "o": "bind", "device": "/etc"}}
                },
            }
        ]
    }
    assert "device" in refusal(disguised)
    assert "Binds[0]" in refusal({"Binds": ["/dev/nvidia0:/dev/nvidia0"]})


def test_a_symlink_in_home_is_judged_by_where_it_points(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "escape").symlink_to("/etc")
    body = {"HostConfig": {"Binds": [f"{home}/escape:/x"]}}
    problem = create_refusal(body, home=str(home), rules=CreateRules())
    assert problem is not None and "outside" in problem


def test_no_home_means_no_host_paths():
    body = {"HostConfig": {"Binds": ["/home/x:/x"]}}
    problem = create_refusal(body, home=None, rules=CreateRules(), realpath=identity)
    assert "no host paths" in problem


def test_a_volume_over_a_host_path_is_refused():
    problem = volume_options_refusal({"type": "none", "o": "bind", "device": "/"}, "DriverOpts")
    assert problem is not None and "DriverOpts" in problem and "-v" in problem
    home = {"type": "none", "o": "bind", "device": "/home/alice/v"}
    assert volume_options_refusal(home, "DriverOpts") is not None  # dockerd mounts it later
    assert volume_options_refusal({"type": "nfs", "device": ":/export"}, "DriverOpts") is None
    assert volume_options_refusal({"size": "1g"}, "DriverOpts") is None


def test_bind_sources_are_found_and_replaced_in_place():
    body = {
        "HostConfig": {
            "Binds": ["/home/a/p:/p:ro", "vol:/v"],
            "Mounts": [
                {"Type": "volume", "Source": "v2", "Target": "/v2"},
                {"Type": "bind", "Source": "/home/a/q", "Target": "/q"},
            ],
        }
    }
    sources = bind_sources(body)
    assert [(s.field, s.path) for s in sources] == [
        ("HostConfig.Binds[0]", "/home/a/p"),
        ("HostConfig.Mounts[1]", "/home/a/q"),
    ]
    out = with_bind_sources(body, {sources[0].key: "/pin/0", sources[1].key: "/pin/1"})
    assert out["HostConfig"]["Binds"] == ["/pin/0:/p:ro", "vol:/v"]
    assert out["HostConfig"]["Mounts"][1]["Source"] == "/pin/1"
    assert body["HostConfig"]["Binds"][0] == "/home/a/p:/p:ro"


def test_malformed_host_config_is_refused_not_crashed():
    with pytest.raises(CreateRefused, match="HostConfig"):
        create_refusal({"HostConfig": []}, home=HOME, rules=RULES)
    assert "Binds[0]" in create_refusal(
        {"HostConfig": {"Binds": [3]}}, home=HOME, rules=RULES, realpath=identity
    )


def test_containers_a_create_borrows_from_are_listed_for_the_owner_check():
    host = {
        "VolumesFrom": ["data:ro", "other"],
        "NetworkMode": "container:net1",
        "PidMode": "host",
        "IpcMode": "container:ipc1",
    }
    assert referenced_containers({"HostConfig": host}) == [
        ("HostConfig.VolumesFrom", "data"),
        ("HostConfig.VolumesFrom", "other"),
        ("HostConfig.NetworkMode", "net1"),
        ("HostConfig.IpcMode", "ipc1"),
    ]
    assert referenced_containers({}) == []


def test_named_volumes_a_create_mounts():
    body = {
        "HostConfig": {
            "Binds": ["data:/d:ro", "/home/a:/h"],
            "Mounts": [
                {"Type": "volume", "Source": "cache", "Target": "/c"},
                {"Type": "volume", "Target": "/anon"},
                {"Type": "tmpfs", "Target": "/t"},
            ],
        }
    }
    assert named_volumes(body) == [
        ("HostConfig.Binds[0]", "data"),
        ("HostConfig.Mounts[0]", "cache"),
    ]


def test_a_privileged_exec_is_refused():
    assert "Privileged" in exec_refusal({"Cmd": ["sh"], "Privileged": True})
    assert exec_refusal({"Cmd": ["sh"], "User": "root"}) is None
