"""Search: parameters parsed and refused when unknown, paged across providers.

FHIR R4 search.html: a server may ignore parameters it does not know (`handling=lenient`)
or refuse them (`handling=strict`, §3.1.1.2); this one refuses by default with 400 and an
OperationOutcome naming the parameter, because silently returning more than asked is how
a client shows the wrong patient's results. `Prefer: handling=lenient` ignores them.

Paging uses `_offset` in the `next` link (the page's position, as HAPI's
`_getpagesoffset`); a client follows the links and never builds them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from sqlalchemy import and_, not_, or_
from sqlalchemy.sql import ColumnElement

from engine.fhir.outcome import FhirError
from engine.fhir.registry import Provider, Registry, SearchResult

if TYPE_CHECKING:
    from engine.fhir.context import Context

DEFAULT_COUNT = 50
MAX_COUNT = 1000
# Result parameters handled here for every type (search.html §3.1.1.5 "Modifying results").
CONTROL = ("_count", "_offset", "_sort", "_include", "_source", "_format", "_total")
JSON_FORMATS = ("json", "application/json", "application/fhir+json")


@dataclass(frozen=True)
class Criterion:
    """`name[:modifier]=v1,v2`: the values are ORed; repeated criteria are ANDed."""

    name: str
    modifier: str | None
    values: tuple[str, ...]


@dataclass(frozen=True)
class SearchQuery:
    resource_type: str
    criteria: tuple[Criterion, ...] = ()
    count: int = DEFAULT_COUNT
    offset: int = 0
    sort: tuple[str, ...] = ()
    include: tuple[str, ...] = ()
    source: str | None = None
    # what the client asked, for the self/next links
    echo: tuple[tuple[str, str], ...] = field(default=(), compare=False)

    def get(self, name: str) -> list[Criterion]:
        return [c for c in self.criteria if c.name == name]

    def first(self, name: str) -> str | None:
        found = self.get(name)
        return found[0].values[0] if found else None


def _split(value: str) -> tuple[str, ...]:
    """Comma-separated ORs; `\\,` is a literal comma (search.html §3.1.1.4.8 escaping)."""
    parts = re.split(r"(?<!\\),", value)
    return tuple(p.replace("\\,", ",") for p in parts)


def parse(registry: Registry, resource_type: str, items: list[tuple[str, str]],
          lenient: bool = False) -> SearchQuery:
    source = next((v for k, v in items if k == "_source"), None)
    providers = registry.searchers(resource_type, source)
    if not providers:
        if source is not None:
            known = registry.sources(resource_type)
            raise FhirError(400, f"_source={source} is not a source of {resource_type}"
                            + (f" (sources: {', '.join(known)})" if known else ""),
                            expression="_source")
        raise FhirError(405, f"search of {resource_type} is not supported")
    params = registry.params(resource_type, providers)
    sorts = {s for p in providers for s in p.sorts}
    includes = {i for p in providers for i in p.includes}
    criteria: list[Criterion] = []
    count, offset = DEFAULT_COUNT, 0
    sort: list[str] = []
    include: list[str] = []
    echo: list[tuple[str, str]] = []
    for key, value in items:
        name, _, modifier = key.partition(":")
        if name in CONTROL:
            if modifier:
                raise FhirError(400, f"{name} takes no modifier", expression=key)
            if name == "_count":
                count = _integer(key, value, 0, MAX_COUNT)
            elif name == "_offset":
                offset = _integer(key, value, 0, None)
                continue  # a paging position, not part of what was asked
            elif name == "_sort":
                for s in value.split(","):
                    if s not in sorts:
                        raise FhirError(400, f"_sort={s} is not supported for {resource_type}"
                                        f" (supported: {', '.join(sorted(sorts)) or 'none'})",
                                        expression="_sort")
                    sort.append(s)
            elif name == "_include":
                if value not in includes:
                    raise FhirError(400, f"_include={value} is not supported for "
                                    f"{resource_type}", expression="_include")
                include.append(value)
            elif name == "_format" and value not in JSON_FORMATS:
                raise FhirError(406, f"_format={value}: only JSON is served")
            echo.append((key, value))
            continue
        param = params.get(name)
        if param is None:
            if lenient:
                continue
            raise FhirError(400, f"unknown search parameter {name!r} for {resource_type} "
                            f"(supported: {', '.join(sorted(params))})", expression=name)
        if modifier and modifier not in param.modifiers:
            raise FhirError(400, f"modifier :{modifier} is not supported on {name}",
                            expression=key)
        if value == "":
            raise FhirError(400, f"search parameter {name} has no value", expression=name)
        criteria.append(Criterion(name, modifier or None, _split(value)))
        echo.append((key, value))
    return SearchQuery(resource_type, tuple(criteria), count, offset, tuple(sort),
                       tuple(include), source, tuple(echo))


def _integer(key: str, value: str, low: int, high: int | None) -> int:
    try:
        n = int(value)
    except ValueError:
        raise FhirError(400, f"{key} must be an integer", expression=key) from None
    if n < low or (high is not None and n > high):
        raise FhirError(400, f"{key} must be between {low} and {high or 'any'}",
                        expression=key)
    return n


def run(ctx: Context, registry: Registry, query: SearchQuery) -> SearchResult:
    """The page at `query.offset`, gathered from each provider able to evaluate every
    criterion, in registration order."""
    names = {c.name for c in query.criteria}
    providers = [p for p in registry.searchers(query.resource_type, query.source)
                 if all(p.param(n) is not None for n in names)
                 and all(s in p.sorts for s in query.sort)]
    total, page, included = 0, [], []
    offset, room = query.offset, query.count
    for p in providers:
        assert p.search is not None
        own = _own_includes(p, query)
        part = p.search(ctx, replace(query, offset=offset, count=room, include=own))
        total += part.total
        page += part.resources
        included += part.included
        room = max(0, room - len(part.resources))
        offset = max(0, offset - part.total)
    return SearchResult(total, page, included)


def _own_includes(provider: Provider, query: SearchQuery) -> tuple[str, ...]:
    return tuple(i for i in query.include if i in provider.includes)


# -- Bundle ---------------------------------------------------------------------------------

def searchset(ctx: Context, query: SearchQuery, result: SearchResult) -> dict[str, Any]:
    """Bundle type searchset (FHIR R4 bundle.html, search.html §3.1.1.6): total, links
    self/first/next/previous, entries with search.mode match or include."""
    path = ctx.url(query.resource_type)

    def link(offset: int | None) -> str:
        pairs = list(query.echo)
        if offset:
            pairs.append(("_offset", str(offset)))
        return f"{path}?{urlencode(pairs)}" if pairs else path

    links = [{"relation": "self", "url": link(query.offset)},
             {"relation": "first", "url": link(None)}]
    if query.count and query.offset + query.count < result.total:
        links.append({"relation": "next", "url": link(query.offset + query.count)})
    if query.offset > 0:
        links.append({"relation": "previous",
                      "url": link(max(0, query.offset - max(query.count, 1)))})
    seen = set()
    entries = []
    for mode, items in (("match", result.resources), ("include", result.included)):
        for r in items:
            key = (r["resourceType"], r.get("id"))
            if key in seen:
                continue
            seen.add(key)
            entries.append({"fullUrl": ctx.url(f"{r['resourceType']}/{r['id']}"),
                            "resource": r, "search": {"mode": mode}})
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset",
                              "total": result.total, "link": links}
    if entries:
        bundle["entry"] = entries
    return bundle


# -- helpers for providers: turning criteria into SQL --------------------------------------

def token(value: str) -> tuple[str | None, str | None]:
    """`system|code` → (system, code); `|code` → ("", code) (no system); `code` → (None,
    code) (any system); `system|` → (system, None) (any code). search.html §3.1.1.4.10."""
    if "|" not in value:
        return None, value
    system, _, code = value.partition("|")
    return system, (code or None)


def reference_id(value: str, resource_type: str) -> str | None:
    """`123`, `Patient/123` or `<base>/Patient/123` → "123"; another type → None."""
    if "/" not in value:
        return value
    parts = value.rstrip("/").split("/")
    if len(parts) >= 2 and parts[-2] == resource_type:
        return parts[-1]
    return None


def int_id(value: str, prefix: str = "") -> int | None:
    """A numeric id (after the provider's prefix); None when it cannot be one of ours."""
    if not value.startswith(prefix):
        return None
    rest = value[len(prefix):]
    return int(rest) if rest.isdigit() and len(rest) < 19 else None


PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb")
_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(\.\d+)?)?"
                   r"(Z|[+-]\d{2}:\d{2})?)?)?)?$")


def date_range(value: str, name: str) -> tuple[str, datetime, datetime]:
    """`[prefix]value` → (prefix, start, end): the value is the interval its precision
    covers (search.html §3.1.1.4.9: 2026-03 is the whole month)."""
    prefix = value[:2] if value[:2] in PREFIXES else "eq"
    text = value[2:] if value[:2] in PREFIXES else value
    if value[:2] == "ap":
        raise FhirError(400, f"{name}: prefix ap is not supported", expression=name)
    m = _DATE.match(text)
    if not m:
        raise FhirError(400, f"{name}: {text!r} is not a FHIR date or dateTime",
                        expression=name)
    y, mo, d, hh, mi, ss, frac, tz = m.groups()
    try:
        if mo is None:
            start, end = datetime(int(y), 1, 1, tzinfo=UTC), datetime(int(y) + 1, 1, 1,
                                                                      tzinfo=UTC)
        elif d is None:
            start = datetime(int(y), int(mo), 1, tzinfo=UTC)
            end = (start + timedelta(days=32)).replace(day=1)
        elif hh is None:
            start = datetime.combine(date(int(y), int(mo), int(d)), datetime.min.time(),
                                     tzinfo=UTC)
            end = start + timedelta(days=1)
        else:
            stamp = datetime.fromisoformat(
                f"{y}-{mo}-{d}T{hh}:{mi}:{ss or '00'}{frac or ''}"
                f"{'+00:00' if tz in (None, 'Z') else tz}")
            start = stamp.astimezone(UTC)
            end = start + (timedelta(seconds=1) if ss else timedelta(minutes=1))
    except ValueError:
        raise FhirError(400, f"{name}: {text!r} is not a valid date", expression=name) from None
    return prefix, start, end


def date_condition(column: Any, criteria: list[Criterion]) -> ColumnElement[bool] | None:
    """SQL for date criteria on one instant column (ANDed criteria, ORed values)."""
    ands = []
    for c in criteria:
        ors = []
        for v in c.values:
            prefix, start, end = date_range(v, c.name)
            ors.append({
                "eq": and_(column >= start, column < end),
                "ne": not_(and_(column >= start, column < end)),
                "gt": column >= end, "sa": column >= end,
                "ge": column >= start,
                "lt": column < start, "eb": column < start,
                "le": column < end,
            }[prefix])
        ands.append(or_(*ors))
    return and_(*ands) if ands else None


def paged(ctx: Context, query: SearchQuery, stmt: Any, *order: Any
          ) -> tuple[int, list[dict[str, Any]]]:
    """(total matches, rows of the page) for a SELECT with the search's filters applied."""
    from sqlalchemy import func, select

    total = int(ctx.conn.execute(select(func.count()).select_from(
        stmt.order_by(None).subquery())).scalar_one())
    if query.count == 0 or query.offset >= total:
        return total, []
    rows = ctx.conn.execute(stmt.order_by(*order).offset(query.offset).limit(query.count)
                            ).mappings().all()
    return total, [dict(r) for r in rows]


def patient_criteria(ctx: Context, query: SearchQuery, name: str = "patient"
                     ) -> list[int] | None:
    """The patients a search may return: those named by `patient` criteria (merged ids
    followed to their survivor) that the caller may read, else the caller's whole scope.
    None = no restriction (admin, no `patient` given); [] = nothing to return."""
    named: set[int] | None = None
    for c in query.get(name):
        ids = set()
        for v in c.values:
            ref = reference_id(v, "Patient")
            pid = int_id(ref) if ref is not None else None
            if pid is not None and ctx.patient_exists(pid):
                ids.add(ctx.survivor(pid))
        named = ids if named is None else named & ids
    if named is None:
        return ctx.scope()
    allowed = [p for p in sorted(named) if ctx.may_read(p)]
    ctx.denied.update(p for p in named if p not in allowed)
    return allowed


def narrowed(ctx: Context, query: SearchQuery, stmt: Any, patient_id: Any, resource_id: Any,
             dates: dict[str, Any]) -> Any | None:
    """`stmt` with what every timeline search shares applied: the readable patients
    (`patient`), `_id`, and the date parameters of `dates` (name → column); None when
    nothing can match (no readable patient)."""
    pids = patient_criteria(ctx, query)
    if pids is not None and not pids:
        return None
    if pids is not None:
        stmt = stmt.where(patient_id.in_(pids))
    for c in query.get("_id"):
        stmt = stmt.where(resource_id.in_([i for i in map(int_id, c.values) if i is not None]))
    for name, column in dates.items():
        cond = date_condition(column, query.get(name))
        if cond is not None:
            stmt = stmt.where(cond)
    return stmt


def date_order(query: SearchQuery, column: Any, resource_id: Any,
               newest_first: bool = False) -> tuple[Any, ...]:
    """ORDER BY for `_sort=date` / `-date` (ties by id); without `_sort`, by id, or newest
    first when that is the order an index gives for free."""
    if "-date" in query.sort or (newest_first and "date" not in query.sort):
        return column.desc(), resource_id.desc()
    if "date" in query.sort:
        return column, resource_id
    return (resource_id,)
