"""What the fuzzers found, pinned down as a user meets it (each was a traceback before)."""

from __future__ import annotations

import pytest
from lxml import etree

from engine.config import ConfigError, load_text
from engine.routing.router import exchange_from_bytes
from fuzz.seeds import MINIMAL_ORU, ROOT
from transformers.cda.to_crbio import to_crbio
from transformers.events.common import hl7_time
from transformers.hl7.ack import AckError, build_ack_bytes
from transformers.hl7.escape import escape, unescape
from transformers.hl7.header import HeaderError, read_header
from transformers.hl7.reader import HL7ReadError, Message


def test_an_offset_of_a_day_or_more_is_no_time_and_no_crash() -> None:
    assert hl7_time("20240101120000+2400") is None
    assert hl7_time("20240101120000-9959") is None
    assert hl7_time("20240101120000+²²²²") == "2024-01-01T11:00:00+00:00"  # not an offset
    assert hl7_time("20240101120000+0130") == "2024-01-01T10:30:00+00:00"


def test_control_characters_in_a_result_do_not_break_the_crbio() -> None:
    raw = MINIMAL_ORU.replace(b"3.9-6.1", b"3.9\x01-6.1").replace(b"Glucose^L", b"Glu\x02cose^L")
    out = to_crbio(exchange_from_bytes(raw))
    assert out is not None
    root = etree.fromstring(out.body)
    assert "\x02" not in etree.tostring(root).decode()
    assert b"Glucose" in out.body


def test_a_nul_in_routes_yaml_is_a_located_problem() -> None:
    with pytest.raises(ConfigError) as err:
        load_text("version: 1\nchannels:\n  ma\x00in: {}\n", env={})
    (problem,) = err.value.problems
    assert (problem.line, problem.column) == (3, 5)
    assert "U+0000" in problem.message


@pytest.mark.parametrize("msh2", ["^~T&", "^~\\&\\", "^~\\&^", "A~\\&", "^~\\&1"])
def test_msh2_with_letters_digits_or_repeats_is_refused(msh2: str) -> None:
    text = f"MSH|{msh2}|A|B|C|D|20240101||ADT^A01|1|P|2.5\rPID|1\r"
    with pytest.raises(HL7ReadError):
        Message.parse(text)
    with pytest.raises(HeaderError) as err:
        read_header(text.encode())
    assert err.value.location == "MSH-2"
    # Intake still answers: an AR built from the partial header reads back.
    ack = build_ack_bytes(err.value.partial, "AR", control_id="X1",
                          errors=[AckError.at(102, str(err.value), "MSH-2")])
    assert ack.startswith(b"MSH|^~\\&|") and b"MSA|AR|" in ack


def test_truncation_character_still_read_and_round_trips() -> None:
    msg = Message.parse("MSH|^~\\&#|A|B|C|D|20240101||ADT^A01|1|P|2.7\rNTE|1||a\\P\\b#c\r")
    assert msg.encoding.truncation == "#"
    value = msg.get("NTE-3")
    assert value == "a#b#c"
    assert unescape(escape(value, msg.encoding), msg.encoding) == value


def test_msh2_components_are_the_delimiters_themselves() -> None:
    msh = Message.parse("MSH|^~\\&|A|B|C|D|20240101||ADT^A01|1|P|2.5\r").msh
    assert msh.components(2) == ["^~\\&"] == [msh.get(2, 1, 1)]
    assert msh.components(1) == ["|"]


def test_msh2_is_never_unescaped() -> None:
    """MSH-2 holds the escape character itself: reading it must not decode it."""
    msh = Message.parse("MSH|^~\\&|A|B|C|D|20240101||ADT^A01|1|P|2.5\r").msh
    assert msh.get(2) == "^~\\&" and msh.get(2, 1, 1) == "^~\\&"


def test_the_allocator_is_bounded_on_glibc_and_can_be_switched_off() -> None:
    import sys

    from engine.allocator import bound_allocator

    assert bound_allocator({"PARCOURS_BOUND_ALLOCATOR": "0"}) is False
    assert bound_allocator({}) is sys.platform.startswith("linux")



def test_a_key_ruamel_cannot_hash_is_a_problem_not_a_traceback() -> None:
    """The fuzzer's input: a `?` complex key whose value ruamel fails to hash (TypeError)."""
    path = ROOT / "fuzz/regressions/routes_loader/crash-960cc3fa44e5ba88455a02b646af9c6e00357b80"
    with pytest.raises(ConfigError) as err:
        load_text(path.read_text(errors="replace"), env={"PARCOURS_TEST": "1"})
    assert "mapping key" in str(err.value)


def test_a_port_written_as_a_mapping_is_a_located_problem_not_a_traceback() -> None:
    """The fuzzer's input had `port: {$PARCOURS_MLLP_PORT:-2575}` (a typo of `${…}`: a YAML
    flow mapping); the duplicate-port check hashed it and `routes check` showed a
    TypeError."""
    text = ("version: 1\nchannels:\n  main: {type: mllp, port: {$PORT:-2575}}\n"
            "  other: {type: mllp, port: {$PORT:-2575}}\n"
            "destinations: {}\nroutes: []\n")
    with pytest.raises(ConfigError) as err:
        load_text(text, env={})
    assert any(p.line == 3 and "port" in p.message for p in err.value.problems)
