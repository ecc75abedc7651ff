"""gpu-status over several nodes (issue 18): rows grouped per node even where two nodes repeat
the same device UUIDs and container ids, `--node` filters, each exporter judged on its own."""

from __future__ import annotations

import copy
import io
import json
import os
from datetime import UTC
from typing import Any

import pytest

from ds01.clock import FrozenClock
from ds01.gpu_status import main
from tests.status.conftest import GOLDEN, check_golden

UPDATE = os.environ.get("DS01_UPDATE_GOLDEN") == "1"


def labelled(items: list[dict[str, Any]], node: str) -> list[dict[str, Any]]:
    out = copy.deepcopy(items)
    for item in out:
        item["metric"]["node"] = node
    return out


def two_nodes(answer: dict[str, Any]) -> dict[str, Any]:
    """The sim host's answer twice, as nodes gpu-a and gpu-b (same UUIDs, same containers)."""
    both = dict(answer)
    both["series"] = labelled(answer["series"], "gpu-a") + labelled(answer["series"], "gpu-b")
    both["last_collect"] = labelled(answer["last_collect"], "gpu-a") + labelled(
        answer["last_collect"], "gpu-b"
    )
    return both


def run(url: str, now: float, *args: str) -> str:
    out = io.StringIO()
    code = main(["--prometheus-url", url, *args], clock=FrozenClock(now), out=out, tz=UTC)
    assert code == 0
    return out.getvalue()


def test_two_nodes_are_shown_grouped_by_node(answer, fixed_prometheus):
    text = run(fixed_prometheus(two_nodes(answer)), answer["now"])
    check_golden("nodes.txt", text, UPDATE)
    single = (GOLDEN / "default.txt").read_text().splitlines()
    *sections, total = text.split("\n\n")
    assert [s.splitlines()[0] for s in sections] == ["Node gpu-a", "Node gpu-b"]
    for section in sections:  # each node: today's table and summary, nothing merged
        assert section.splitlines()[1:] == single
    assert total == (
        "All nodes: Free: 1g.18gb 2 of 4 · 2g.35gb 0 of 2 · 3g.71gb 0 of 2 · full H200 0 of 2"
        "    Queue: 4 waiting\n"
    )


def test_node_filter_shows_one_node_as_a_single_host(answer, fixed_prometheus):
    url = fixed_prometheus(two_nodes(answer))
    assert run(url, answer["now"], "--node", "gpu-b") == (GOLDEN / "default.txt").read_text()


def test_one_labelled_node_looks_as_today(answer, fixed_prometheus):
    one = dict(answer, series=labelled(answer["series"], "gpu-a"))
    one["last_collect"] = labelled(answer["last_collect"], "gpu-a")
    assert run(fixed_prometheus(one), answer["now"]) == (GOLDEN / "default.txt").read_text()


def test_each_nodes_exporter_is_judged_on_its_own(answer, fixed_prometheus):
    both = two_nodes(answer)
    both["last_collect"][1]["value"][1] = str(answer["now"] - 200)  # gpu-b's exporter
    text = run(fixed_prometheus(both), answer["now"])
    warnings = [line for line in text.splitlines() if line.startswith("WARNING")]
    assert warnings == [
        "WARNING: node gpu-b: exporter data is stale: last collection 3m 20s ago; the figures "
        "below may be out of date"
    ]
    assert run(fixed_prometheus(both), answer["now"], "--node", "gpu-a").count("WARNING") == 0


def test_an_unknown_node_is_named_with_the_known_ones(answer, fixed_prometheus):
    text = run(fixed_prometheus(two_nodes(answer)), answer["now"], "--node", "gpu-z")
    assert text.splitlines()[:2] == [
        "WARNING: no node 'gpu-z' in Prometheus' data (nodes: gpu-a, gpu-b)",
        "No GPU or MIG device on node gpu-z in Prometheus' current data.",
    ]


def test_a_user_filter_spans_the_nodes(answer, fixed_prometheus):
    text = run(fixed_prometheus(two_nodes(answer)), answer["now"], "--user", "bob")
    assert [line for line in text.splitlines() if line.startswith("Node ")] == [
        "Node gpu-a",
        "Node gpu-b",
    ]
    assert text.count("notebook-bob  bob") == 2  # one row per node
    assert "  notebook-bob on gpu-a 0:1 (2g.35gb): next idle stop" in text
    assert "  notebook-bob on gpu-b 0:1 (2g.35gb): next idle stop" in text


def test_json_names_each_devices_node_and_summarises_per_node(answer, fixed_prometheus):
    url = fixed_prometheus(two_nodes(answer))
    document = json.loads(run(url, answer["now"], "--json"))
    nodes = [d["node"] for d in document["devices"]]
    assert nodes == ["gpu-a"] * 5 + ["gpu-b"] * 5
    assert [n["node"] for n in document["summary"]["nodes"]] == ["gpu-a", "gpu-b"]
    assert document["summary"]["nodes"][0]["queue_length"] == 2
    assert document["summary"]["queue_length"] == 4
    filtered = json.loads(run(url, answer["now"], "--json", "--node", "gpu-a"))
    assert filtered["node_filter"] == "gpu-a"
    assert {d["node"] for d in filtered["devices"]} == {"gpu-a"}
    assert filtered["summary"]["queue_length"] == 2


@pytest.mark.parametrize("bad", ["a b", "-x", "a/b"])
def test_a_bad_node_name_is_refused(bad, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--prometheus-url", "http://127.0.0.1:9", f"--node={bad}"])
    assert exit_info.value.code == 2
    assert "--node: not a host-like name" in capsys.readouterr().err
