import pytest

from allocator.docker_args import gpu_request, gpus_count, parse_run, rewrite

LABELS = {"ds01.managed": "true", "ds01.user": "alice", "ds01.allocation": "a1"}


def _request(*argv, environ=None):
    cmd = parse_run(list(argv))
    return None if cmd is None else gpu_request(cmd, environ or {})


@pytest.mark.parametrize(
    ("value", "count"),
    [
        ("all", 1),
        ("2", 2),
        ("device=0", 1),
        ("device=0,1", 2),
        ('"device=0,1"', 2),
        ("'\"device=MIG-a,MIG-b\"'", 2),
        ("count=3", 3),
        ("count=all", 1),
        ('"capabilities=compute,utility",count=2', 2),
        ("0", 0),
    ],
)
def test_gpus_values(value, count):
    assert gpus_count(value) == count


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--gpus", "all", "img"],
        ["run", "--gpus=all", "img"],
        ["create", "--gpus", "1", "img"],
        ["container", "run", "--gpus", "all", "img"],
        ["-H", "unix:///x.sock", "--context", "default", "run", "--gpus", "all", "img"],
        ["run", "--runtime=nvidia", "img"],
        ["run", "--runtime", "nvidia", "img"],
        ["run", "-e", "NVIDIA_VISIBLE_DEVICES=0", "img"],
        ["run", "-eNVIDIA_VISIBLE_DEVICES=all", "img"],
        ["run", "--env=NVIDIA_VISIBLE_DEVICES=1", "img"],
        ["run", "-itd", "--gpus", "all", "img"],
    ],
)
def test_every_form_of_gpu_request_is_seen(argv):
    assert _request(*argv).count == 1


@pytest.mark.parametrize(
    "argv",
    [
        ["ps"],
        ["run", "img"],
        ["run", "img", "sh", "-c", "--gpus all"],  # after the image: the command's business
        ["run", "-e", "NVIDIA_VISIBLE_DEVICES=none", "img"],
        ["run", "-e", "NVIDIA_VISIBLE_DEVICES=void", "--runtime=nvidia", "img"],
        ["run", "--gpus", "0", "img"],
        ["images", "--gpus"],
    ],
)
def test_no_gpu_request(argv):
    assert _request(*argv) is None


def test_environment_variable_without_value_comes_from_the_callers_environment():
    argv = ["run", "-e", "NVIDIA_VISIBLE_DEVICES", "img"]
    assert _request(*argv, environ={"NVIDIA_VISIBLE_DEVICES": "0,1"}).count == 2
    assert _request(*argv, environ={}) is None


def test_type_and_name_from_the_command():
    found = _request(
        "run", "--name", "job", "-l", "devcontainer.local_folder=/home/a/x", "--gpus", "all", "img"
    )
    assert (found.container_type, found.name) == ("devcontainer", "job")


def test_rewrite_replaces_gpu_options_and_forged_labels_keeps_the_rest():
    argv = [
        "-H",
        "unix:///d.sock",
        "run",
        "-de",
        "NVIDIA_VISIBLE_DEVICES=all",
        "--runtime=nvidia",
        "--gpus",
        '"device=0,1"',
        "--label",
        "ds01.user=root",
        "-l",
        "team=x",
        "--name",
        "job",
        "img",
        "sh",
        "-c",
        "--gpus all",
    ]
    cmd = parse_run(argv)
    out = rewrite(cmd, devices=["MIG-a", "MIG-b"], labels=LABELS, environ={})
    assert out[:3] == ["-H", "unix:///d.sock", "run"]
    assert out[-4:] == ["img", "sh", "-c", "--gpus all"]
    options = out[3:-4]
    assert "-d" in options  # the bundled -d survived the removal of -e
    assert options.count("--gpus") == 1
    assert options[options.index("--gpus") + 1] == '"device=MIG-a,MIG-b"'  # as docker needs it
    assert "--runtime=nvidia" not in options
    assert not any("NVIDIA_VISIBLE_DEVICES" in o for o in options)
    assert "ds01.user=root" not in options and "ds01.user=alice" in options
    assert "team=x" in options and "job" in options


def test_rewrite_of_one_device_needs_no_quotes():
    out = rewrite(
        parse_run(["run", "--gpus", "all", "img"]), devices=["MIG-a"], labels={}, environ={}
    )
    assert out[out.index("--gpus") + 1] == "device=MIG-a"


def test_rewrite_keeps_a_double_dash_before_the_image():
    cmd = parse_run(["run", "--gpus", "all", "--", "img", "true"])
    out = rewrite(cmd, devices=["MIG-a"], labels={}, environ={})
    assert out[-3:] == ["--", "img", "true"] and "--gpus" in out


@pytest.mark.parametrize(
    ("argv", "asked_all"),
    [
        (["run", "--gpus", "all", "img"], True),
        (["run", "--gpus", "count=all,capabilities=utility", "img"], True),
        (["run", "-e", "NVIDIA_VISIBLE_DEVICES=all", "--runtime", "nvidia", "img"], True),
        (["run", "--gpus", "1", "img"], False),
        (["run", "--gpus", "2", "img"], False),
        (["run", "--gpus", "device=0,1", "img"], False),
    ],
)
def test_gpus_all_is_noted_so_the_wrapper_can_say_it_gives_one_device(argv, asked_all):
    request = gpu_request(parse_run(argv), {})
    assert request is not None and request.asked_all is asked_all
