"""HL7 v2 / CDA messages → coordination timeline events (issue #5).

One module per message family (`adt`, `oru`, `orm`, `siu`, `cda`); each exposes a transformer
with the routes.yaml contract (`transformers/exchange.py`) whose body is an events envelope
(`common.envelope`). Pure: no engine import, no I/O — the `timeline` destination applies them.
"""

CONTENT_TYPE = "application/vnd.parcours.events+json"
