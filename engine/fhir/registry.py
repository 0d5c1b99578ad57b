"""The plug-in point of the FHIR API: which resource types exist and who serves them.

A resource module declares a `Provider` for its type (read, search with its allowed search
parameters, and optionally create / update (PUT) / patch and `_include`s) and registers it;
the router, the strict parameter check and the CapabilityStatement read this registry and
nothing else, so `GET /metadata` lists exactly what is registered. How to add a type:
docs/fhir.md, "Adding a resource type".

A type may have several providers (ServiceRequest: lab orders here, DAC referrals in
another module). Each owns the ids that start with its `id_prefix`; a search asks every
provider of the type that knows all the parameters given (a provider that cannot evaluate a
parameter cannot match it) and pages across them in registration order. A provider with a
`source` answers only `_source=<source>` searches (DocumentReference `_source=dmp`), and
reads of its ids.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.fhir.context import Context
    from engine.fhir.search import SearchQuery

Resource = dict[str, Any]

PARAM_TYPES = ("token", "string", "date", "reference", "uri", "number", "quantity",
               "special", "composite")


@dataclass(frozen=True)
class SearchParam:
    """A search parameter a provider evaluates (FHIR R4 search.html §3.1.1.4)."""

    name: str
    type: str
    documentation: str = ""
    modifiers: tuple[str, ...] = ()  # e.g. ("exact", "contains") for strings

    def __post_init__(self) -> None:
        if self.type not in PARAM_TYPES:
            raise ValueError(f"search parameter {self.name}: unknown type {self.type}")


@dataclass
class SearchResult:
    """One page: `total` matches in all, `resources` the page, `included` for `_include`."""

    total: int
    resources: list[Resource]
    included: list[Resource] = field(default_factory=list)


ReadHandler = Callable[["Context", str], Resource]
SearchHandler = Callable[["Context", "SearchQuery"], SearchResult]
CreateHandler = Callable[["Context", Resource], Resource]
# (ctx, id, resource, If-Match version or None) → (stored resource, created?)
UpdateHandler = Callable[["Context", str, Resource, str | None], tuple[Resource, bool]]
# (ctx, id, body (JSON Patch list or a FHIRPath Patch Parameters), content type, If-Match)
PatchHandler = Callable[["Context", str, Any, str, str | None], Resource]


@dataclass
class Provider:
    """One source of resources of one type. `read` raises FhirError(404/410) itself."""

    resource_type: str
    name: str
    read: ReadHandler | None = None
    search: SearchHandler | None = None
    params: tuple[SearchParam, ...] = ()
    sorts: tuple[str, ...] = ()  # accepted `_sort` values, e.g. ("date", "-date")
    includes: tuple[str, ...] = ()  # accepted `_include` values, e.g. "DiagnosticReport:result"
    id_prefix: str = ""
    source: str | None = None
    create: CreateHandler | None = None
    update: UpdateHandler | None = None
    patch: PatchHandler | None = None
    profiles: tuple[str, ...] = ()
    documentation: str = ""

    def param(self, name: str) -> SearchParam | None:
        return next((p for p in self.params if p.name == name), None)

    def owns(self, resource_id: str) -> bool:
        return resource_id.startswith(self.id_prefix)

    def interactions(self) -> list[str]:
        """FHIR R4 TypeRestfulInteraction codes this provider implements."""
        out = []
        if self.read is not None:
            out.append("read")
        if self.search is not None:
            out.append("search-type")
        if self.create is not None:
            out.append("create")
        if self.update is not None:
            out.append("update")
        if self.patch is not None:
            out.append("patch")
        return out


class Registry:
    def __init__(self) -> None:
        self._providers: dict[str, list[Provider]] = {}

    def register(self, provider: Provider) -> Provider:
        """Add a provider; two providers of a type must not claim the same ids."""
        same = self._providers.setdefault(provider.resource_type, [])
        for other in same:
            if other.name == provider.name:
                raise ValueError(f"provider {provider.name} already registered")
            if other.id_prefix == provider.id_prefix:
                raise ValueError(f"{provider.resource_type}: providers {other.name} and "
                                 f"{provider.name} both own ids with prefix "
                                 f"{provider.id_prefix!r}")
        same.append(provider)
        return provider

    def types(self) -> list[str]:
        return sorted(self._providers)

    def providers(self, resource_type: str) -> list[Provider]:
        return list(self._providers.get(resource_type, ()))

    def for_id(self, resource_type: str, resource_id: str) -> Provider | None:
        """The provider owning `resource_id`: the longest matching prefix."""
        owners = [p for p in self._providers.get(resource_type, ()) if p.owns(resource_id)]
        return max(owners, key=lambda p: len(p.id_prefix)) if owners else None

    def searchers(self, resource_type: str, source: str | None) -> list[Provider]:
        return [p for p in self._providers.get(resource_type, ())
                if p.search is not None and p.source == source]

    def sources(self, resource_type: str) -> list[str]:
        return sorted({p.source for p in self._providers.get(resource_type, ())
                       if p.source is not None and p.search is not None})

    def params(self, resource_type: str, providers: Iterable[Provider] | None = None
               ) -> dict[str, SearchParam]:
        out: dict[str, SearchParam] = {}
        for p in (self.providers(resource_type) if providers is None else providers):
            for sp in p.params:
                out.setdefault(sp.name, sp)
        return out


def default_registry() -> Registry:
    """The registry with every resource type of this package."""
    from importlib import import_module

    registry = Registry()
    for name in RESOURCE_MODULES:
        import_module(name, __package__).register(registry)
    return registry


# One line a module (modules of other packages by their full name): each `register(registry)`
# adds its providers. Order matters only between providers of one type (search paging order).
RESOURCE_MODULES = [
    ".patient",
    ".encounter",
    ".observation",
    ".report",
    ".document",
    ".order",
    ".appointment",
    ".care_team",
]
