"""`retention:` in routes.yaml: the shipped example is valid, mistakes are reported on their
line, absent settings keep everything, and the most specific rule wins."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from engine.config import ConfigError, load_text
from engine.store.retention import Keep, from_config

ROOT = Path(__file__).resolve().parent.parent.parent


def _uncommented_example() -> str:
    """routes.yaml with its commented `retention:` block switched on."""
    text = (ROOT / "routes.yaml").read_text()
    head, _, block = text.partition("# retention:")
    lines = ["retention:"] + [re.sub(r"^# ", "", line) for line in block.splitlines()[1:]]
    return head + "\n".join(lines) + "\n"


def test_shipped_example_is_valid_and_read() -> None:
    cfg = load_text(_uncommented_example(), env={"PARCOURS_HOME": "/tmp/x"})
    policy = from_config(cfg.retention)
    assert policy.enabled and policy.every_minutes == 60 and policy.dedup_window_days == 365
    assert policy.rule("main", "done") == Keep(90, 30, 730)
    assert policy.rule("main", "duplicate") == Keep(90, 30, 30)
    assert policy.rule("lab-drop", "error") == Keep(30, 30, 730)  # channel over status
    assert policy.rule("main", "error") == Keep(365, 30, 730)


def test_absent_retention_keeps_everything() -> None:
    cfg = load_text((ROOT / "routes.yaml").read_text(), env={"PARCOURS_HOME": "/tmp/x"})
    policy = from_config(cfg.retention)
    assert not policy.enabled
    assert policy.rule("main", "done") == Keep(None, None, None)


def test_channel_status_rule_is_the_most_specific() -> None:
    policy = from_config({
        "keep": {"payload_days": 10, "attempt_days": 5},
        "statuses": {"done": {"payload_days": 20}},
        "channels": {"lab": {"payload_days": 30, "statuses": {"done": {"message_days": 99}}}},
    })
    assert policy.rule("other", "done") == Keep(20, 5, None)
    assert policy.rule("lab", "error") == Keep(30, 5, None)
    assert policy.rule("lab", "done") == Keep(30, 5, 99)


@pytest.mark.parametrize(("block", "where", "what"), [
    ("retention:\n  keep: {payload_days: -3}\n", ":6:", "minimum"),
    ("retention:\n  keep: {payload: 3}\n", ":6:", "payload"),
    ("retention:\n  statuses: {routed: {payload_days: 1}}\n", ":6:", "routed"),
    ("retention:\n  every_minutes: often\n", ":6:", "often"),
])
def test_mistakes_are_reported_on_their_line(block: str, where: str, what: str) -> None:
    text = ("version: 1\nchannels: {main: {type: mllp, port: 0}}\ndestinations: {}\n"
            "routes: []\n" + block)
    with pytest.raises(ConfigError) as err:
        load_text(text)
    message = str(err.value)
    assert where in message and what in message, message
