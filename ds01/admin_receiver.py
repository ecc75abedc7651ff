"""The `admin` receiver's examples at the end of alertmanager.yml: commented out by default,
live when tested (amtool must accept every one of them)."""

from __future__ import annotations

# Admin receiver examples (Alertmanager 0.25 options only): (what it is, the YAML under `admin`).
ADMIN_EXAMPLES = (
    (
        "Email:",
        "email_configs:\n"
        "- to: gpu-admins@example.org\n"
        "  from: ds01-alertmanager@example.org\n"
        "  smarthost: smtp.example.org:587\n"
        "  auth_username: ds01-alertmanager@example.org\n"
        "  auth_password: change-me\n"
        "  send_resolved: true\n",
    ),
    (
        "Slack (the incoming-webhook URL is a secret: keep it in a file only Alertmanager reads):",
        "slack_configs:\n"
        "- api_url_file: /etc/ds01/slack-webhook.url\n"
        "  channel: '#gpu-admins'\n"
        "  send_resolved: true\n",
    ),
    (
        "Microsoft Teams: Alertmanager 0.25 has no Teams integration (msteams_configs came in\n"
        "0.26); run the prometheus-msteams bridge and point a webhook at it:",
        "webhook_configs:\n- url: http://127.0.0.1:2000/ds01\n  send_resolved: true\n",
    ),
)
ADMIN_EXAMPLES_INTRO = (
    "To send operator alerts (exporter, allocator or enforcer down, stop failures, ...)\n"
    "somewhere, uncomment one or more of these under the `admin` receiver, then check the file\n"
    "with `amtool check-config alertmanager.yml`.\n"
)


def admin_examples(*, enabled: bool) -> str:
    """The examples under the `admin` receiver: commented out, or live (how they are tested)."""
    if enabled:
        return "".join(_indent(snippet, "  ") for _, snippet in ADMIN_EXAMPLES)
    parts = [_indent(ADMIN_EXAMPLES_INTRO, "  # ")]
    for title, snippet in ADMIN_EXAMPLES:
        parts.append("  #\n" + _indent(title + "\n", "  # ") + _indent(snippet, "  # "))
    return "".join(parts)


def _indent(text: str, prefix: str) -> str:
    return "".join(prefix + line + "\n" for line in text.splitlines())
