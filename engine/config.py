"""routes.yaml: loading, ${VAR} interpolation, schema validation with file:line:column errors.

ruamel.yaml keeps the position of every node, so a schema error on `routes[2].to[0]` can be
reported on the line the operator has to edit, not as a JSON pointer.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError
from ruamel.yaml.reader import ReaderError

SCHEMA_PATH = Path(__file__).with_name("routes.schema.json")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.message}"


class ConfigError(Exception):
    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


@dataclass(frozen=True)
class TLSConfig:
    cert: str
    key: str
    ca: str | None = None
    require_client_cert: bool = False
    allowed_subjects: tuple[str, ...] = ()


@dataclass(frozen=True)
class AcceptConfig:
    processing_ids: tuple[str, ...] = ("P", "D", "T")
    versions: tuple[str, ...] = ()
    message_types: tuple[str, ...] = ()
    require_segments: tuple[str, ...] = ()


@dataclass(frozen=True)
class ChannelConfig:
    name: str
    type: str
    enabled: bool = True
    host: str = "0.0.0.0"
    port: int = 0
    charset: str | None = None
    default_charset: str = "UNICODE UTF-8"
    max_frame_bytes: int = 16 * 1024 * 1024
    idle_timeout: float | None = 300.0
    application: str = "PARCOURS"
    accept: AcceptConfig = field(default_factory=AcceptConfig)
    tls: TLSConfig | None = None
    path: str = ""
    patterns: tuple[str, ...] = ("*.hl7", "*.xml")
    poll_interval: float = 1.0
    settle_seconds: float = 1.0
    archive: str | None = None
    error: str | None = None
    on_reused_control_id: str = "process"  # "process" | "refuse" (issue #15)
    # Issue #17: bounds a hostile or broken peer cannot cross (docs/mllp.md, "Limits").
    max_connections: int | None = 1024
    max_connections_per_peer: int | None = 256
    frame_timeout: float | None = 120.0
    max_stored_bytes: int = 1024 * 1024  # of a refused message or file: its head is kept
    daily_volume_alarm_bytes: int | None = None  # per sender (MSH-3/MSH-4 or file), per day


@dataclass(frozen=True)
class LimitsConfig:
    """Process-wide bounds (routes.yaml `limits`), shared by every MLLP channel."""

    max_connections: int = 4096
    pending_frame_bytes: int = 64 * 1024 * 1024
    fd_headroom: int = 256


@dataclass(frozen=True)
class RouteConfig:
    name: str
    to: tuple[str, ...]
    from_channels: tuple[str, ...] = ()
    when: Mapping[str, Any] = field(default_factory=dict)
    transform: tuple[str, ...] = ()
    stop: bool = False
    enabled: bool = True
    line: int = 0
    history: bool = False  # also takes `parcours import --routes-as history` messages


@dataclass(frozen=True)
class Config:
    file: str
    channels: dict[str, ChannelConfig]
    destinations: dict[str, dict[str, Any]]
    routes: list[RouteConfig]
    evaluation: str = "all"
    transformer_paths: tuple[str, ...] = ()
    text: str = ""
    # Built-in transformers' settings from `transformer_options`, already validated:
    # {"crbio": CrBioSettings}. Installed by the router (apply_transformer_settings).
    transformer_settings: Mapping[str, Any] = field(default_factory=dict)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    # `retention:` as written (schema-checked); engine.retention.from_config reads it.
    retention: Mapping[str, Any] = field(default_factory=dict)


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """${VAR} and ${VAR:-default}. An unset variable without default is an error."""

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in env and env[name] != "":
            return env[name]
        if default is not None:
            return default
        raise KeyError(name)

    return _VAR.sub(sub, value)


def _position(node: Any, path: Iterable[Any]) -> tuple[int, int]:
    """Line/column (1-based) of the deepest node of `path` that exists in the YAML tree."""
    line, col = 1, 1
    for key in path:
        try:
            if isinstance(node, CommentedMap) and key in node:
                ln, cl = node.lc.key(key)
                line, col = ln + 1, cl + 1
                node = node[key]
            elif isinstance(node, CommentedSeq) and isinstance(key, int) and key < len(node):
                ln, cl = node.lc.item(key)
                line, col = ln + 1, cl + 1
                node = node[key]
            else:
                break
        except (KeyError, AttributeError, TypeError):
            break
    return line, col


def _interpolate_tree(node: Any, env: Mapping[str, str], file: str, path: list[Any],
                      problems: list[Problem], root: Any) -> Any:
    if isinstance(node, CommentedMap):
        for k in list(node.keys()):
            node[k] = _interpolate_tree(node[k], env, file, [*path, k], problems, root)
        return node
    if isinstance(node, CommentedSeq):
        for i in range(len(node)):
            node[i] = _interpolate_tree(node[i], env, file, [*path, i], problems, root)
        return node
    if isinstance(node, str) and "${" in node:
        try:
            out = interpolate(node, env)
        except KeyError as exc:
            line, col = _position(root, path)
            problems.append(Problem(file, line, col,
                                    f"environment variable {exc.args[0]} is not set and has no "
                                    f"default (write ${{{exc.args[0]}:-value}})"))
            return node
        if _VAR.fullmatch(node.strip()):
            # A value that is only a variable takes the variable's YAML type: a port is a number.
            try:
                typed = yaml.safe_load(out)
            except yaml.YAMLError:
                typed = out
            return typed if isinstance(typed, (int, float, bool)) else out
        return out
    return node


def _plain(node: Any) -> Any:
    if isinstance(node, Mapping):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


def _schema_message(err: jsonschema.ValidationError) -> str:
    where = "/".join(str(p) for p in err.absolute_path) or "the file"
    if err.validator == "additionalProperties":
        extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
        allowed = ", ".join(sorted(err.schema.get("properties", {}))) or "none"
        return f"unknown key {', '.join(map(repr, extra))} in {where} (allowed: {allowed})"
    if err.validator == "required":
        return f"{where}: {err.message}"
    if err.validator == "enum":
        return f"{where}: {err.instance!r} is not one of {', '.join(map(str, err.validator_value))}"
    if err.validator == "propertyNames":
        return f"{where}: name {err.instance!r} must be lower-case letters, digits, '-' or '_'"
    if err.validator == "pattern" and err.schema.get("description"):
        return f"{where}: {err.instance!r} is not valid: {err.schema['description']}"
    return f"{where}: {err.message}"


def _error_path(err: jsonschema.ValidationError) -> list[Any]:
    path = list(err.absolute_path)
    if err.validator == "additionalProperties" and isinstance(err.instance, Mapping):
        extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
        if extra:
            path.append(extra[0])
    return path


def load_schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text())


@functools.lru_cache(maxsize=1)
def _validator() -> jsonschema.Draft202012Validator:
    """One validator per process: the schema ships with the code, so reading and compiling
    it again (and re-resolving its `$ref`s) on every check or reload buys nothing."""
    return jsonschema.Draft202012Validator(load_schema())


def load_text(
    text: str,
    *,
    file: str = "routes.yaml",
    env: Mapping[str, str] | None = None,
    known_transformers: Callable[[str], str | None] | None = None,
) -> Config:
    """Parse, interpolate, validate and check references. Raises ConfigError with every problem."""
    import os

    env = os.environ if env is None else env
    ryaml = YAML(typ="rt")
    try:
        tree = ryaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        col = mark.column + 1 if mark else 1
        raise ConfigError([Problem(file, line, col, f"YAML syntax: {exc.problem}")]) from None
    except ReaderError as exc:
        # YAML 1.2 §5.1: control characters (NUL, …) may not appear in a YAML stream.
        before = text[: exc.position]
        line = before.count("\n") + 1
        col = exc.position - (before.rfind("\n") + 1) + 1
        char = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise ConfigError([Problem(file, line, col, f"YAML syntax: character U+{char:04X} "
                                   "is not allowed in a YAML file")]) from None
    except (IndexError, ValueError) as exc:
        # ruamel's own constructors can fail on a scalar its resolver took for a number
        # (found by fuzzing: construct_yaml_int indexes an empty digit string); no mark.
        raise ConfigError([Problem(file, 1, 1, f"YAML: a value ruamel.yaml cannot read "
                                   f"({type(exc).__name__})")]) from None
    except TypeError:
        # ruamel builds a mapping whose key is a list or a mapping (`[a]: 1`, `? {a: 1}`) and
        # fails hashing it, before any mark is known; no routes.yaml key is ever one.
        raise ConfigError([Problem(file, 1, 1, "YAML: a mapping key is a list or a mapping; "
                                   "keys in routes.yaml are names")]) from None
    if not isinstance(tree, CommentedMap):
        raise ConfigError([Problem(file, 1, 1, "the file must be a mapping with version, "
                                               "channels, destinations and routes")])
    problems: list[Problem] = []
    _interpolate_tree(tree, env, file, [], problems, tree)
    data = _plain(tree)
    validator = _validator()
    for err in sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path))):
        if err.validator in ("allOf", "if", "then"):
            continue
        line, col = _position(tree, _error_path(err))
        problems.append(Problem(file, line, col, _schema_message(err)))
    # The reference checks run even when the schema found problems, so that `routes check`
    # reports everything in one pass; they skip what the schema already refused as malformed.
    shape_ok = not problems
    if known_transformers is None:
        from engine.routing.transformers import Registry, TransformerNotFound

        paths = data.get("transformer_paths") if isinstance(data, dict) else None
        registry = Registry(tuple(p for p in paths if isinstance(p, str))
                            if isinstance(paths, list) else (), base=Path(file).parent)

        def known_transformers(name: str) -> str | None:
            try:
                registry.resolve(name)
            except TransformerNotFound as exc:
                return str(exc)
            return None

    channels = _channels(data, shape_ok)
    channel_names = set(_mapping(data.get("channels")))
    destinations = dict(_mapping(data.get("destinations")))
    routes = _check_routes(data, tree, file, channel_names, destinations, known_transformers,
                           problems)
    transformer_settings: dict[str, Any] = {}
    try:
        transformer_settings = _transformer_settings(data, destinations, routes, tree, file,
                                                     problems)
    except (TypeError, ValueError, KeyError, AttributeError):
        if shape_ok:
            raise
        # transformer_options the schema refused: nothing more can be said about them
    ports: dict[int, str] = {}
    for name, ch in channels.items():
        # A port the schema refused (`port: {$PORT}`, a typo of `${PORT}`, is a YAML flow
        # mapping) is already reported with its line; only whole numbers can clash.
        if (ch.type == "mllp" and ch.enabled and isinstance(ch.port, int)
                and not isinstance(ch.port, bool) and ch.port):
            if ch.port in ports:
                problems.append(Problem(file, *_position(tree, ["channels", name, "port"]),
                                        f"channels {ports[ch.port]!r} and {name!r} both listen "
                                        f"on port {ch.port}"))
            ports[ch.port] = name
    if problems:
        raise ConfigError(sorted(_dedupe(problems), key=lambda p: (p.line, p.column)))
    return Config(
        file=file, channels=channels, destinations=destinations, routes=routes,
        evaluation=data.get("evaluation", "all"),
        transformer_paths=tuple(data.get("transformer_paths", [])), text=text,
        transformer_settings=transformer_settings,
        limits=LimitsConfig(**(data.get("limits") or {})),
        retention=data.get("retention") or {},
    )


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _channels(data: Mapping[str, Any], shape_ok: bool) -> dict[str, ChannelConfig]:
    """Channel settings; with schema problems, only the channels that still read cleanly."""
    out: dict[str, ChannelConfig] = {}
    for name, c in _mapping(data.get("channels")).items():
        if shape_ok:
            out[name] = _channel(name, c)
            continue
        try:
            out[name] = _channel(name, c)
        except (TypeError, ValueError, KeyError, AttributeError):
            continue  # already reported by the schema
    return out


def _check_routes(data: Mapping[str, Any], tree: Any, file: str, channel_names: set[str],
                  destinations: Mapping[str, Any],
                  known_transformers: Callable[[str], str | None],
                  problems: list[Problem]) -> list[RouteConfig]:
    """What the schema cannot see: names used twice, references to undefined destinations,
    channels and transformers, unreadable field conditions."""
    from engine.routing.conditions import ConditionError, parse_condition

    routes: list[RouteConfig] = []
    names: set[str] = set()
    raw_routes = data.get("routes")
    for i, r in enumerate(raw_routes if isinstance(raw_routes, list) else []):
        if not isinstance(r, dict):
            continue
        line, _ = _position(tree, ["routes", i])
        name = r.get("name") if isinstance(r.get("name"), str) else f"#{i + 1}"
        if name in names:
            problems.append(Problem(file, *_position(tree, ["routes", i, "name"]),
                                    f"route name {name!r} is used twice"))
        names.add(name)
        to = _strings(r.get("to"))
        for j, dest in to:
            if dest not in destinations:
                problems.append(Problem(file, *_position(tree, ["routes", i, "to", j]),
                                        f"route {name!r} sends to undefined destination "
                                        f"{dest!r} (defined: {', '.join(destinations) or 'none'})"))
        sources = _strings(r.get("from"))
        for j, ch in sources:
            if ch not in channel_names:
                problems.append(Problem(file, *_position(tree, ["routes", i, "from", j]),
                                        f"route {name!r} listens to undefined channel {ch!r}"))
        transform = _strings(r.get("transform"))
        for j, tname in transform:
            why = known_transformers(tname)
            if why is not None:
                problems.append(Problem(file, *_position(tree, ["routes", i, "transform", j]),
                                        f"route {name!r}: {why}"))
        when = r.get("when") if isinstance(r.get("when"), dict) else {}
        for j, cond in _strings(when.get("fields")):
            try:
                parse_condition(cond)
            except ConditionError as exc:
                problems.append(Problem(file, *_position(tree, ["routes", i, "when", "fields", j]),
                                        f"route {name!r}: {exc}"))
        routes.append(RouteConfig(
            name=name, to=tuple(d for _, d in to), from_channels=tuple(c for _, c in sources),
            when=when, transform=tuple(t for _, t in transform),
            stop=bool(r.get("stop", False)), enabled=bool(r.get("enabled", True)), line=line,
            history=bool(r.get("history", False)),
        ))
    return routes


def _strings(value: Any) -> list[tuple[int, str]]:
    """(index, item) of a list's string items: what a malformed list still names."""
    if not isinstance(value, list):
        return []
    return [(j, v) for j, v in enumerate(value) if isinstance(v, str)]


def _transformer_settings(data: Mapping[str, Any], destinations: Mapping[str, Any],
                          routes: list[RouteConfig], tree: Any, file: str,
                          problems: list[Problem]) -> dict[str, Any]:
    """Build the settings of `transformer_options` and check what the schema cannot: value
    sets, and that no CR-BIO with placeholder author/custodian can reach an enabled DMP."""
    out: dict[str, Any] = {}
    options = data.get("transformer_options") or {}
    if "crbio" in options:
        from connectors.dmp.metadata import Code, in_value_set
        from transformers.cda.crbio import FACILITY_TYPE_OID, PRACTICE_SETTING_OID
        from transformers.cda.to_crbio import SettingsError, settings_from_options

        base = ["transformer_options", "crbio"]
        try:
            crbio = settings_from_options(options["crbio"])
        except SettingsError as exc:
            problems.append(Problem(file, *_position(tree, [*base, *exc.path]),
                                    f"transformer_options.crbio.{exc}"))
        else:
            orgs = [(["laboratory"], crbio.laboratory)]
            if crbio.custodian is not None:
                orgs.append((["custodian"], crbio.custodian))
            for sender, org in crbio.laboratories.items():
                orgs.append((["senders", sender, "laboratory"], org))
            for path, org in orgs:
                # CI-SIS value sets the DMP checks (JDV_J02 facility type, JDV_J04 practice
                # setting): refused here rather than by the DMP for every document.
                for key, vs, code, oid in (
                        ("facility_type", "JDV_J02_XdsHealthcareFacilityTypeCode_CISIS",
                         org.facility_type, FACILITY_TYPE_OID),
                        ("practice_setting", "JDV_J04_XdsPracticeSettingCode_CISIS",
                         org.practice_setting, PRACTICE_SETTING_OID)):
                    if not in_value_set(vs, Code(code, oid)):
                        problems.append(Problem(
                            file, *_position(tree, [*base, *path, key]),
                            f"transformer_options.crbio.{'.'.join(path)}.{key}: {code!r} is "
                            f"not in {vs}"))
            out["crbio"] = crbio
    if "crbio" not in out and "crbio" not in options:
        for i, r in enumerate(routes):
            if "crbio" not in r.transform or not r.enabled:
                continue
            to_dmp = [d for d in r.to if destinations.get(d, {}).get("type") == "dmp"
                      and destinations[d].get("enabled", True) is not False]
            if to_dmp:
                j = r.transform.index("crbio")
                problems.append(Problem(
                    file, *_position(tree, ["routes", i, "transform", j]),
                    f"route {r.name!r} sends CR-BIO documents to the DMP ({to_dmp[0]!r}) but "
                    "transformer_options.crbio is not set: they would name a placeholder "
                    "laboratory and biologist (set document_oid, laboratory, biologist; "
                    "docs/dmp.md)"))
    return out


def apply_transformer_settings(config: Config) -> None:
    """Install the built-in transformers' settings of this config (placeholders when absent),
    so that a reload takes them and `routes test` shows what the engine would build."""
    from transformers.cda.to_crbio import CrBioSettings, configure

    configure(config.transformer_settings.get("crbio") or CrBioSettings())


def load_file(path: str | Path, **kw: Any) -> Config:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        problem = Problem(str(p), 1, 1, f"cannot read the file: {exc.strerror}")
        raise ConfigError([problem]) from None
    return load_text(text, file=str(p), **kw)


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen: set[tuple[int, int, str]] = set()
    out = []
    for p in problems:
        key = (p.line, p.column, p.message)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def _channel(name: str, c: Mapping[str, Any]) -> ChannelConfig:
    acc = c.get("accept") or {}
    accept = AcceptConfig(
        processing_ids=tuple(acc.get("processing_ids", ("P", "D", "T"))),
        versions=tuple(acc.get("versions", ())),
        message_types=tuple(acc.get("message_types", ())),
        require_segments=tuple(acc.get("require_segments", ())),
    )
    tls = None
    if c.get("tls"):
        t = c["tls"]
        tls = TLSConfig(cert=t["cert"], key=t["key"], ca=t.get("ca"),
                        require_client_cert=bool(t.get("require_client_cert", False)),
                        allowed_subjects=tuple(t.get("allowed_subjects", ())))
    kw: dict[str, Any] = {k: c[k] for k in (
        "host", "port", "charset", "max_frame_bytes", "idle_timeout", "application", "path",
        "poll_interval", "settle_seconds", "archive", "error", "enabled",
        "on_reused_control_id", "max_connections", "max_connections_per_peer",
        "frame_timeout", "max_stored_bytes", "daily_volume_alarm_bytes",
    ) if k in c}
    if c.get("default_charset"):
        kw["default_charset"] = c["default_charset"]
    if "patterns" in c:
        kw["patterns"] = tuple(c["patterns"])
    return ChannelConfig(name=name, type=c["type"], accept=accept, tls=tls, **kw)
