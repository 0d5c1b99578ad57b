"""routes.yaml `limits` and the channel limits: defaults, validation, the open-file ceiling."""

from __future__ import annotations

import resource

import pytest

from engine.config import ConfigError, LimitsConfig, load_text
from engine.intake.open_files import connection_ceiling, raise_soft_limit
from tests.conftest import routes_text


def test_defaults_are_bounded() -> None:
    cfg = load_text(routes_text())
    assert cfg.limits == LimitsConfig()
    ch = cfg.channels["main"]
    assert ch.max_connections == 1024 and ch.max_connections_per_peer == 256
    assert ch.frame_timeout == 120 and ch.max_stored_bytes == 1024 * 1024
    assert ch.daily_volume_alarm_bytes is None


def test_limits_are_read() -> None:
    text = routes_text(channels="  main:\n    type: mllp\n    port: 0\n    frame_timeout: 9\n"
                       "    max_connections_per_peer: null\n")
    cfg = load_text(text.replace("version: 1\n", "version: 1\nlimits: {max_connections: 50,"
                                 " pending_frame_bytes: 2097152, fd_headroom: 64}\n"))
    assert cfg.limits == LimitsConfig(50, 2097152, 64)
    assert cfg.channels["main"].frame_timeout == 9
    assert cfg.channels["main"].max_connections_per_peer is None


@pytest.mark.parametrize("bad", [
    "limits: {bogus: 1}\n", "limits: {pending_frame_bytes: 10}\n",
    "limits: {max_connections: 0}\n"])
def test_bad_global_limits_are_refused_with_a_line(bad: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_text(routes_text().replace("version: 1\n", "version: 1\n" + bad))
    assert err.value.problems[0].line == 2


@pytest.mark.parametrize("bad", ["frame_timeout: 0", "max_connections: 0",
                                 "max_stored_bytes: 10", "daily_volume_alarm_bytes: -1"])
def test_bad_channel_limits_are_refused(bad: str) -> None:
    with pytest.raises(ConfigError):
        load_text(routes_text(channels=f"  main:\n    type: mllp\n    port: 0\n    {bad}\n"))


def test_connection_ceiling_keeps_headroom() -> None:
    assert connection_ceiling(4096, 1024, 256) == 768
    assert connection_ceiling(100, 1024, 256) == 100
    assert connection_ceiling(4096, None, 256) == 4096
    assert connection_ceiling(4096, 100, 256) == 1


def test_soft_limit_is_raised_to_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    got = raise_soft_limit()
    assert got is not None and got >= soft
    if hard != resource.RLIM_INFINITY:
        assert got == hard
