"""The wrapper's own logic; the end-to-end wrapper runs are in test_docker_integration.py."""

import os
import stat

import pytest

from allocator.wrapper import WrapperError, find_real_docker


def _script(path, text):
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_the_first_docker_on_path_that_is_not_the_wrapper(tmp_path):
    first, second = tmp_path / "wrap", tmp_path / "real"
    first.mkdir()
    second.mkdir()
    wrapper = _script(
        first / "docker",
        "#!/usr/bin/python3\nfrom ds01.cli import docker_wrapper_main\ndocker_wrapper_main()\n",
    )
    real = _script(second / "docker", "#!/bin/sh\nexit 0\n")
    found = find_real_docker({"PATH": f"{first}:{second}"}, argv0=str(wrapper))
    assert found == str(real)


def test_a_symlink_to_the_wrapper_is_skipped(tmp_path):
    own = _script(tmp_path / "ds01-docker", "#!/bin/sh\n")
    (tmp_path / "bin").mkdir()
    os.symlink(own, tmp_path / "bin" / "docker")
    (tmp_path / "real").mkdir()
    real = _script(tmp_path / "real" / "docker", "#!/bin/sh\n")
    path = f"{tmp_path / 'bin'}:{tmp_path / 'real'}"
    assert find_real_docker({"PATH": path}, argv0=str(own)) == str(real)


def test_the_environment_names_the_real_docker(tmp_path):
    real = _script(tmp_path / "d", "#!/bin/sh\n")
    assert find_real_docker({"DS01_REAL_DOCKER": str(real), "PATH": ""}) == str(real)
    with pytest.raises(WrapperError, match="not an executable"):
        find_real_docker({"DS01_REAL_DOCKER": str(tmp_path / "missing"), "PATH": ""})


def test_no_real_docker_is_a_clear_error(tmp_path):
    with pytest.raises(WrapperError, match="no real docker"):
        find_real_docker({"PATH": str(tmp_path)}, argv0="/nowhere/docker")
