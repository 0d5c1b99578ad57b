"""HL7 v2 model: lazy reader, header, escapes, ACKs, batches. Knows nothing of the engine."""

from .ack import AckError, build_ack, build_ack_bytes, read_ack
from .batch import Batch, split_messages
from .charset import UnsupportedCharset, codec_for
from .encoding import DEFAULT_ENCODING, Encoding
from .escape import escape, unescape
from .header import Header, HeaderError, patient_key, read_header, resolve_charset
from .reader import HL7ReadError, Message, Segment, normalise_separators, parse_message

__all__ = [
    "DEFAULT_ENCODING",
    "AckError",
    "Batch",
    "Encoding",
    "HL7ReadError",
    "Header",
    "HeaderError",
    "Message",
    "Segment",
    "UnsupportedCharset",
    "build_ack",
    "build_ack_bytes",
    "codec_for",
    "escape",
    "normalise_separators",
    "parse_message",
    "patient_key",
    "read_ack",
    "read_header",
    "resolve_charset",
    "split_messages",
    "unescape",
]
