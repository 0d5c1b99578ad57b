"""The lazy reader on hand-made edge cases and on every corpus message."""

from __future__ import annotations

import hl7
import pytest

from tests.conftest import corpus, corpus_messages
from transformers.hl7.batch import split_messages
from transformers.hl7.header import HeaderError, patient_key, read_header, resolve_charset
from transformers.hl7.reader import HL7ReadError, Message, parse_path

ORU = (
    "MSH|^~\\&|LAB|LABO-X|PARCOURS|ARS|20261125||ORU^R01^ORU_R01|M1|P|2.5.1|||||FRA|8859/1\r"
    "PID|1||111^^^LABO-X&1.2.3&ISO^PI~279035121518989^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.10"
    "&ISO^INS||NOM\\S\\COMPOSE^JEAN~ALIAS^J\r"
    "OBR|1||R1|24323-8^Panel^LN\r"
    "OBX|1|NM|GLY^Glyc\\T\\mie^L~2345-7^Glucose^LN||1,05|g/L|0,70-1,10|N|||F\r"
    "OBX|2|FT|COM^Commentaire^L||ligne 1\\.br\\ligne 2 \\F\\ \\R\\ \\E\\ \\X41\\||||||F\r"
)


def test_paths_fields_repetitions_components() -> None:
    m = Message.parse(ORU)
    assert m.get("MSH-9") == "ORU^R01^ORU_R01"
    assert m.get("MSH-9.2") == "R01"
    assert m.get("MSH-1") == "|" and m.get("MSH-2") == "^~\\&"
    assert m.get("PID-3[2].1") == "279035121518989"
    assert m.get("PID-3[2].4.2") == "1.2.250.1.213.1.4.10"
    assert m.get("PID-5.1") == "NOM^COMPOSE"  # \S\ decoded only at the leaf
    assert m.get("PID-5[2].1") == "ALIAS"
    assert m.get("OBX[2]-3.1") == "COM"
    assert m.get_all("OBX-3.1") == ["GLY", "2345-7", "COM"]
    assert m.get_all("OBX-3[1].1") == ["GLY", "COM"]
    assert m.get("OBX-3.2") == "Glyc&mie"
    assert m.get("ZZZ-1") == "" and m.get("OBX[9]-1") == "" and m.get("PID-99") == ""
    assert m.get("OBX-5.7") == ""


def test_escape_sequences() -> None:
    m = Message.parse(ORU)
    assert m.get("OBX[2]-5") == "ligne 1\nligne 2 | ~ \\ A"


def test_non_default_delimiters() -> None:
    text = "MSH#*@$%#APP#FAC###2026##ADT*A01#C1#P#2.5\rPID#1##1*2*3@4**5%6\r"
    m = Message.parse(text)
    assert m.get("MSH-9.2") == "A01"
    assert m.get("PID-3.3") == "3"
    assert m.get("PID-3[2].2") == ""
    assert m.get("PID-3[2].3.2") == "6"


@pytest.mark.parametrize("bad", ["", "PID|1", "MSH", "MSH|^~", "MSH|^^\\&|A"])
def test_unreadable_headers(bad: str) -> None:
    with pytest.raises(HL7ReadError):
        Message.parse(bad)
    with pytest.raises(HeaderError):
        read_header(bad.encode())


def test_bad_paths_are_errors() -> None:
    for p in ("PID3", "pid-x", "PID-3.1.2.3", "-3"):
        with pytest.raises(ValueError):
            parse_path(p)


def test_patient_key_prefers_local_id_over_ins() -> None:
    m = Message.parse(ORU)
    assert patient_key(ORU, m.encoding) == "LABO-X&1.2.3&ISO|111"
    only_ins = ORU.replace("111^^^LABO-X&1.2.3&ISO^PI~", "")
    assert patient_key(only_ins, m.encoding) == "INS|279035121518989"
    assert patient_key(ORU.replace("\rPID|", "\rZPD|"), m.encoding) is None


def test_batch_splitting() -> None:
    path = corpus("hl7v2", "reportstream-batch", "CSV_to_HL7",
                  "sample-batch-pdi-20210608-0001.hl7")
    batch = split_messages(path.read_bytes())
    assert batch.is_batch and len(batch.messages) == 20
    assert [e[:3] for e in batch.envelope] == [b"FHS", b"BHS", b"BTS", b"FTS"]
    plain = split_messages(ORU.encode() + b"\n\n" + ORU.replace("M1", "M2").encode())
    assert not plain.is_batch and len(plain.messages) == 2


def test_every_corpus_message_reads_like_python_hl7() -> None:
    """Our lazy reader agrees with python-hl7 on every field of every corpus message."""
    corpus("hl7v2")
    checked = 0
    for path in corpus_messages():
        for raw in split_messages(path.read_bytes()).messages:
            header = read_header(raw)
            codec = resolve_charset(header, "8859/1" if "latin1" in path.parts else None)
            text = raw.decode(codec)
            ours = Message.parse(text, codec)
            theirs = hl7.parse(text.replace("\n", "\r"))
            assert len(ours.segments) == len(theirs), path.name
            for seg_ours, seg_theirs in zip(ours.segments, theirs, strict=True):
                # Both index fields by HL7 sequence number (MSH-1 is the separator).
                assert seg_ours.name == str(seg_theirs[0])
                first = 3 if seg_ours.name == "MSH" else 1
                last = len(seg_theirs) - 1
                for n in range(first, last):
                    assert seg_ours.field(n) == str(seg_theirs[n]), (path.name, seg_ours.name, n)
                # python-hl7 sometimes trims trailing blanks of a segment; we keep them.
                if last >= first:
                    assert seg_ours.field(last).rstrip() == str(seg_theirs[last]).rstrip()
            assert ours.get("MSH-10") == header.control_id
            checked += 1
    assert checked >= 160


def test_leading_is_get_of_each_component_first_subcomponent() -> None:
    """`Segment.leading` (one split per field, for the OBX read of issue #12) must read what
    `get(n, 1, c, 1)` reads: first repetition, first subcomponent, escapes decoded, nulls
    empty."""
    from transformers.hl7.reader import Message as _Message

    msg = _Message.parse("MSH|^~\\&|A|B\rOBX|1|NM|GLU&x^Gluc\\S\\ose^L~REP2^R||5.1|"
                         'mmol/L^^UCUM|""|^H||F||||A&B^""^c\\T\\d', "utf-8")
    obx = msg.segments_named("OBX")[0]
    for n in range(1, 16):
        comps = obx.leading(n)
        width = max(len(comps), 7)
        assert [obx.get(n, 1, c, 1) for c in range(1, width + 1)] == (
            comps + [""] * (width - len(comps))), n
    assert obx.leading(3) == ["GLU", "Gluc^ose", "L"]
    assert obx.leading(14) == ["A", "", "c&d"]
    assert obx.leading(7) == [""] and obx.leading(4) == []
