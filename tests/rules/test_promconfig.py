"""prometheus.yml and alertmanager.yml: rendered from settings, equal to the checked-in files,
accepted by promtool and amtool (Alertmanager 0.25), the token never in a URL."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from ds01.policy import default_policy, load_policy
from ds01.promconfig import (
    DEFAULT_ALLOCATOR_TARGET,
    AlertmanagerSettings,
    PrometheusSettings,
    build_parser,
    host_port,
    main,
    render_alertmanager_config,
    render_prometheus_config,
)
from ds01.rulegen import RULE_FILES
from tests.rules.conftest import ALERTMANAGER_DIR, PROMETHEUS_DIR


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def test_checked_in_prometheus_yml_equals_the_render_of_the_defaults():
    # The checked-in file is host-neutral: no `node` label (the render for a policy labels its
    # targets with this host's node name; a single enforcer acts on alerts without one).
    rendered = render_prometheus_config(PrometheusSettings.from_policy(default_policy(), node=""))
    assert (PROMETHEUS_DIR / "prometheus.yml").read_text() == rendered


def test_checked_in_alertmanager_yml_equals_the_render_of_the_defaults():
    rendered = render_alertmanager_config(AlertmanagerSettings.from_policy(default_policy()))
    assert (ALERTMANAGER_DIR / "alertmanager.yml").read_text() == rendered


def test_prometheus_config_has_the_three_jobs_rules_and_alertmanager():
    settings = PrometheusSettings(
        exporter_targets=("127.0.0.1:1",),
        allocator_targets=("127.0.0.1:2",),
        enforcer_targets=("127.0.0.1:3",),
        alertmanager_targets=("127.0.0.1:4",),
        scrape_interval=1,
        evaluation_interval=1,
    )
    config = yaml.safe_load(render_prometheus_config(settings))
    jobs = {j["job_name"]: j["static_configs"][0]["targets"] for j in config["scrape_configs"]}
    assert jobs == {
        "ds01-exporter": ["127.0.0.1:1"],
        "ds01-allocator": ["127.0.0.1:2"],
        "ds01-enforcer": ["127.0.0.1:3"],
    }
    assert config["global"] == {
        "scrape_interval": "1s",
        "scrape_timeout": "1s",
        "evaluation_interval": "1s",
    }
    assert config["rule_files"] == [f"rules/{name}" for name in RULE_FILES]
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["127.0.0.1:4"]


def test_production_defaults_and_services_from_the_policy(tmp_path):
    defaults = yaml.safe_load(render_prometheus_config(PrometheusSettings()))
    assert defaults["global"]["scrape_interval"] == "15s"
    assert defaults["global"]["evaluation_interval"] == "15s"
    policy_file = tmp_path / "ds01.yaml"
    policy_file.write_text(
        "services: {exporter_listen: '0.0.0.0:9201', allocator_listen: '127.0.0.1:9203',\n"
        "  enforcer_listen: '127.0.0.1:9202', alertmanager_url: 'http://127.0.0.1:9393',\n"
        "  token_file: /run/ds01/token, node: gpu-a}\n"
    )
    policy = load_policy(policy_file)
    prom = PrometheusSettings.from_policy(policy)
    assert prom.exporter_targets == ("127.0.0.1:9201",)  # a wildcard bind is scraped on loopback
    assert prom.allocator_targets == ("127.0.0.1:9203",)
    assert prom.alertmanager_targets == ("127.0.0.1:9393",)
    jobs = yaml.safe_load(render_prometheus_config(prom))["scrape_configs"]
    assert all(job["static_configs"][0]["labels"] == {"node": "gpu-a"} for job in jobs)
    am = AlertmanagerSettings.from_policy(policy)
    assert (am.enforcer_url, am.token_file) == ("http://127.0.0.1:9202", "/run/ds01/token")


def test_allocator_target_defaults_when_the_policy_has_no_tcp_listener():
    settings = PrometheusSettings.from_policy(default_policy())
    assert settings.allocator_targets == (DEFAULT_ALLOCATOR_TARGET,)


def test_alertmanager_routes_timings_and_bearer_token_file():
    settings = AlertmanagerSettings(
        enforcer_url="http://127.0.0.1:7777/",
        token_file="/tmp/token",
        group_wait=0,
        group_interval=1,
        repeat_interval=30,
    )
    config = yaml.safe_load(render_alertmanager_config(settings))
    routes = {r["receiver"]: r for r in config["route"]["routes"]}
    stop = routes["ds01-enforcer-stop"]
    assert stop["matchers"] == ['action="stop"']
    assert stop["group_by"] == ["container_id", "alertname"]
    assert (stop["group_wait"], stop["group_interval"], stop["repeat_interval"]) == (
        "0s",
        "1s",
        "30s",
    )
    assert routes["ds01-enforcer-notify"]["matchers"] == ['action="notify"']
    assert config["route"]["receiver"] == "admin"
    receivers = {r["name"]: r for r in config["receivers"]}
    for name, path in (("ds01-enforcer-stop", "/alerts"), ("ds01-enforcer-notify", "/notify")):
        hook = receivers[name]["webhook_configs"][0]
        assert hook["url"] == f"http://127.0.0.1:7777{path}"
        assert hook["http_config"]["authorization"] == {
            "type": "Bearer",
            "credentials_file": "/tmp/token",
        }
    assert receivers["admin"] == {"name": "admin"}  # disabled until an example is enabled
    inhibit = config["inhibit_rules"][0]
    assert inhibit["equal"] == ["container_id"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"enforcer_url": "http://user:secret@127.0.0.1:9102"}, "never in the URL"),
        ({"enforcer_url": "http://127.0.0.1:9102?token=x"}, "never in the URL"),
        ({"enforcer_url": "127.0.0.1:9102"}, "enforcer_url"),
        ({"token_file": ""}, "token_file"),
        ({"group_interval": 0}, "group_interval"),
    ],
)
def test_bad_alertmanager_settings_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        AlertmanagerSettings(**changes)


def test_bad_prometheus_settings_are_refused():
    with pytest.raises(ValueError, match="scrape_interval"):
        PrometheusSettings(scrape_interval=0)
    with pytest.raises(ValueError, match="exporter_targets"):
        PrometheusSettings(exporter_targets="127.0.0.1:9101")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("address", "target"),
    [
        ("127.0.0.1:9101", "127.0.0.1:9101"),
        ("0.0.0.0:9101", "127.0.0.1:9101"),
        ("http://127.0.0.1:9093", "127.0.0.1:9093"),
        ("[::1]:9101", "[::1]:9101"),
    ],
)
def test_host_port(address, target):
    assert host_port(address) == target


def test_host_port_rejects_a_missing_port():
    with pytest.raises(ValueError, match="HOST:PORT"):
        host_port("localhost")


def test_amtool_accepts_the_checked_in_config(amtool):
    result = _run(amtool, "check-config", str(ALERTMANAGER_DIR / "alertmanager.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_amtool_accepts_the_admin_examples_once_enabled(tmp_path, amtool):
    path = tmp_path / "alertmanager.yml"
    path.write_text(render_alertmanager_config(AlertmanagerSettings(), admin_enabled=True))
    admin = next(r for r in yaml.safe_load(path.read_text())["receivers"] if r["name"] == "admin")
    assert {"email_configs", "slack_configs", "webhook_configs"} <= set(admin)
    result = _run(amtool, "check-config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_accepts_the_checked_in_prometheus_config(promtool):
    result = _run(promtool, "check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_cli_writes_both_files(tmp_path):
    prom, am = tmp_path / "p" / "prometheus.yml", tmp_path / "a" / "alertmanager.yml"
    policy_file = tmp_path / "ds01.yaml"
    policy_file.write_text("services: {enforcer_listen: '127.0.0.1:9555'}\n")
    argv = ["--policy", str(policy_file), "--prometheus-out", str(prom)]
    assert main([*argv, "--alertmanager-out", str(am)]) == 0
    assert "http://127.0.0.1:9555/alerts" in am.read_text()
    assert "127.0.0.1:9555" in prom.read_text()


def test_cli_needs_an_output():
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
    assert build_parser().parse_args(["--prometheus-out", "x"]).prometheus_out == "x"
