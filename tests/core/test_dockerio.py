"""Docker client construction (ds01/dockerio.py) against the private dockerd."""

from __future__ import annotations

import pytest

from ds01.dockerio import connect

pytestmark = pytest.mark.integration


def test_a_socket_client_answers_and_skips_the_proxy_and_netrc_scan_per_call(dockerd):
    client = connect(dockerd.url, timeout=10)

    assert client.ping() is True
    # A socket takes no proxy: reading the proxy variables and ~/.netrc on every call was
    # ~40% of an inspect's client CPU in the enforcer's workers (bench/enforcer_burst.py).
    assert client.api.trust_env is False
