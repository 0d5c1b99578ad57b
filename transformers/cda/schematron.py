"""ISO Schematron for CDA documents, compiled to XSLT 2 and run by Saxon (saxonche).

The ANS ships its CI-SIS rules as schematron with `queryBinding="xslt2"` (XPath 2 tests and
`document()` look-ups into value sets); lxml only runs XSLT 1, hence Saxon. The corpus does not
ship the ISO skeleton stylesheets, so this module compiles the schema itself, SchXslt-style, in
one pass (ISO/IEC 19757-3 semantics used here):

- `include` elements are replaced by the element they point to (resolved relative to the file);
- abstract patterns are instantiated by `is-a` patterns, `$param` replaced textually (§6.3);
- the default phase decides which patterns run; `let` at schema or pattern level is global;
- every pattern is a mode; within a pattern the first matching rule wins (priorities by order);
- a failed `assert` or a fired `report` becomes a <failed>/<report> element with the location
  (XPath `path()`), the test and the message with its `value-of`s evaluated.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from lxml import etree

from safexml import copy, parse, parse_shipped

SCH = "http://purl.oclc.org/dsdl/schematron"
XSL = "http://www.w3.org/1999/XSL/Transform"
NS = {"sch": SCH}
CRBIO_SCHEMATRON = Path(__file__).resolve().parent / "schematron" / "CI-SIS_BIO-CR-BIO_2024.01.sch"


class SchematronError(RuntimeError):
    """The schematron itself could not be compiled (not the document's fault)."""


@dataclass(frozen=True)
class Finding:
    kind: str  # "assert" (failed assert) or "report" (successful report)
    pattern: str
    location: str
    test: str
    message: str
    role: str = ""

    def __str__(self) -> str:
        return f"{self.location}: {self.message}"


def _load(path: Path) -> etree._Element:
    return parse_shipped(path, remove_comments=True)


def _expand_includes(elem: etree._Element, base: Path, depth: int = 0) -> None:
    if depth > 10:
        raise SchematronError("schematron includes nested too deeply")
    for inc in list(elem.iter(f"{{{SCH}}}include")):
        target = (base / inc.get("href", "")).resolve()
        included = _load(target)
        _expand_includes(included, target.parent, depth + 1)
        parent = inc.getparent()
        if parent is None:
            raise SchematronError("include at the root of a schematron")
        parent.replace(inc, included)


def _substitute(text: str, params: dict[str, str]) -> str:
    # Longest names first so that $nullFlavor is not eaten by a shorter $null (§6.3 macro rule).
    for name in sorted(params, key=len, reverse=True):
        text = re.sub(r"\$" + re.escape(name) + r"(?![\w.\-])", lambda _m, n=name: params[n], text)
    return text


def _instantiate(pattern: etree._Element, abstract: dict[str, etree._Element]) -> etree._Element:
    base = abstract.get(pattern.get("is-a", ""))
    if base is None:
        raise SchematronError(f"pattern {pattern.get('id')} is-a unknown {pattern.get('is-a')}")
    params = {p.get("name", ""): p.get("value", "") for p in pattern.findall("sch:param", NS)}
    inst = copy(base)
    inst.set("id", pattern.get("id", ""))
    inst.attrib.pop("abstract", None)
    for el in inst.iter():
        for attr in ("context", "test", "select", "value"):
            if attr in el.attrib:
                el.set(attr, _substitute(el.get(attr, ""), params))
    return inst


def _message(assertion: etree._Element) -> str:
    """The assert text as XSLT: literal text escaped, value-of and name evaluated."""
    parts: list[str] = []
    if assertion.text:
        parts.append(escape(assertion.text))
    for child in assertion:
        local = etree.QName(child).localname
        if local == "value-of":
            parts.append(f"<xsl:value-of select={quoteattr(child.get('select', ''))}/>")
        elif local == "name":
            path = child.get("path", ".")
            parts.append(f"<xsl:value-of select={quoteattr(f'name({path})')}/>")
        else:
            parts.append(escape("".join(child.itertext())))
        if child.tail:
            parts.append(escape(child.tail))
    return "".join(parts)


def compile_schematron(path: Path, phase: str | None = None) -> str:
    """Schematron file → XSLT 2.0 stylesheet text. `xml:base` points at the schematron folder so
    that relative `document()` calls (value sets) resolve as they do in the ANS tooling."""
    root = _load(path)
    _expand_includes(root, path.parent)
    namespaces = {n.get("prefix", ""): n.get("uri", "") for n in root.findall("sch:ns", NS)}
    patterns = root.findall(".//sch:pattern", NS)
    abstract = {p.get("id", ""): p for p in patterns if p.get("abstract") == "true"}
    phase = phase or root.get("defaultPhase")
    active: set[str] | None = None
    if phase and phase != "#ALL":
        ph = root.find(f"sch:phase[@id='{phase}']", NS)
        if ph is None:
            raise SchematronError(f"phase {phase!r} not found")
        active = {a.get("pattern", "") for a in ph.findall("sch:active", NS)}
    concrete: list[etree._Element] = []
    for p in patterns:
        if p.get("abstract") == "true":
            continue
        if active is not None and p.get("id") not in active:
            continue
        concrete.append(_instantiate(p, abstract) if p.get("is-a") else p)

    out: list[str] = []
    ns_decl = " ".join(f"xmlns:{k}={quoteattr(v)}" for k, v in namespaces.items() if k)
    base_uri = path.parent.resolve().as_uri() + "/"
    out.append(
        f'<xsl:stylesheet version="2.0" xmlns:xsl="{XSL}" {ns_decl} '
        f'xml:base={quoteattr(base_uri)} exclude-result-prefixes="#all">'
    )
    out.append('<xsl:output method="xml" indent="no"/>')
    global_lets = root.findall("sch:let", NS) + [
        let for p in concrete for let in p.findall("sch:let", NS)
    ]
    for let in global_lets:
        out.append(f"<xsl:variable name={quoteattr(let.get('name', ''))} "
                   f"select={quoteattr(let.get('value', ''))}/>")
    out.append('<xsl:template match="/"><results>')
    for i, _p in enumerate(concrete):
        out.append(f'<xsl:apply-templates select="/" mode="M{i}"/>')
    out.append("</results></xsl:template>")
    for i, p in enumerate(concrete):
        pid = p.get("id", f"pattern-{i}")
        rules = p.findall("sch:rule", NS)
        for j, rule in enumerate(rules):
            context = rule.get("context", "")
            out.append(f"<xsl:template match={quoteattr(context)} mode=\"M{i}\" "
                       f"priority=\"{1000 - j}\">")
            for let in rule.findall("sch:let", NS):
                out.append(f"<xsl:variable name={quoteattr(let.get('name', ''))} "
                           f"select={quoteattr(let.get('value', ''))}/>")
            for a in rule:
                local = etree.QName(a).localname
                if local not in ("assert", "report"):
                    continue
                test = a.get("test", "")
                cond = f"not({test})" if local == "assert" else test
                tag = "failed" if local == "assert" else "report"
                out.append(
                    f"<xsl:if test={quoteattr(cond)}><{tag} pattern={quoteattr(pid)} "
                    f"role={quoteattr(a.get('role', ''))} test={quoteattr(test)}>"
                    f'<xsl:attribute name="location" select="path()"/>'
                    f"{_message(a)}</{tag}></xsl:if>"
                )
            out.append(f'<xsl:apply-templates select="*" mode="M{i}"/></xsl:template>')
        out.append(f'<xsl:template match="node()" mode="M{i}" priority="-10">'
                   f'<xsl:apply-templates select="*" mode="M{i}"/></xsl:template>')
        out.append(f'<xsl:template match="/" mode="M{i}" priority="-5">'
                   f'<xsl:apply-templates select="*" mode="M{i}"/></xsl:template>')
    out.append("</xsl:stylesheet>")
    return "\n".join(out)


class Schematron:
    """A compiled schematron. Saxon's processor is not thread-safe: one run at a time."""

    _proc = None
    _proc_lock = threading.Lock()

    def __init__(self, path: Path, phase: str | None = None) -> None:
        from saxonche import PySaxonProcessor

        self.path = path
        self.xslt = compile_schematron(path, phase)
        with Schematron._proc_lock:
            if Schematron._proc is None:
                Schematron._proc = PySaxonProcessor(license=False)
            proc = Schematron._proc
            try:
                self._exec = proc.new_xslt30_processor().compile_stylesheet(
                    stylesheet_text=self.xslt, encoding="utf-8")
            except Exception as exc:  # saxonche raises PySaxonApiError
                raise SchematronError(f"{path.name}: {exc}") from None

    def validate(self, document: bytes | etree._Element) -> list[Finding]:
        """Run on a document already parsed by the safe parser (bytes are parsed here with it)."""
        root = parse(document) if isinstance(document, bytes) else document
        text = etree.tostring(root, encoding="unicode")
        with Schematron._proc_lock:
            proc = Schematron._proc
            assert proc is not None
            node = proc.parse_xml(xml_text=text)
            result = self._exec.transform_to_string(xdm_node=node)
        if not result:
            raise SchematronError("schematron produced no output")
        out = parse(result.encode("utf-8"))
        findings = []
        for el in out:
            findings.append(Finding(
                kind="assert" if el.tag == "failed" else "report",
                pattern=el.get("pattern", ""),
                location=el.get("location", ""),
                test=el.get("test", ""),
                message=" ".join("".join(el.itertext()).split()),
                role=el.get("role", ""),
            ))
        return findings


_crbio: Schematron | None = None
_crbio_lock = threading.Lock()


def crbio_schematron() -> Schematron:
    """The CI-SIS BIO-CR-BIO 2024.01 schematron, compiled once."""
    global _crbio
    with _crbio_lock:
        if _crbio is None:
            _crbio = Schematron(CRBIO_SCHEMATRON)
        return _crbio


def failed_asserts(document: bytes | etree._Element) -> list[Finding]:
    """CR-BIO schematron errors (failed asserts) of a document; reports are informational."""
    return [f for f in crbio_schematron().validate(document) if f.kind == "assert"]
