"""The service's configuration: typed sections, a YAML file, environment overrides.

Each section is one frozen class below (`ServerSection`, `ReplaySection`, ...) and those
classes are the one schema: every field carries its default, its check and its description,
and its type annotation says what a value may be (``float`` accepts integers too; ``X | None``
accepts null). `Config` holds one instance per section (``database`` is None unless the file
sets it). :func:`load_config` reads the YAML file (if any), applies
``REPLAYSERVER_<SECTION>_<KEY>`` environment variables and checks every value once, raising
:class:`ConfigError` with the name of the offending key. See docs/operations.md.

Environment values are parsed by the type of their key: a string key takes the variable's text
exactly as it is (a password with ``#``, spaces, ``:`` or quotes is that password; only a
nullable string key reads ``null``, ``~`` or an empty value as null); other keys read the text
as one YAML scalar (``5``, ``0.25``, ``true``, ``null``).
"""
from __future__ import annotations

import os
import types
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Union, get_args, get_origin

import attrs
import yaml
from twisted.internet import endpoints

ENV_PREFIX = "REPLAYSERVER_"
#: Environment texts a nullable string key reads as null.
_NULL_TEXTS = frozenset({"", "null", "Null", "NULL", "~"})


class ConfigError(Exception):
    """A configuration value (or file) that prevents the service from starting."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


Check = Callable[[Any], "str | None"]


def at_least(low: float) -> Check:
    return lambda value: None if value >= low else f"must be at least {low}, got {value!r}"


def positive(value: float) -> str | None:
    return None if value > 0 else f"must be greater than 0, got {value!r}"


def between(low: int, high: int) -> Check:
    return lambda value: (
        None if low <= value <= high else f"must be between {low} and {high}, got {value!r}"
    )


def not_empty(value: str) -> str | None:
    return None if value.strip() else "must not be empty"


def endpoint(value: str) -> str | None:
    """A Twisted server endpoint description such as ``tcp:15000:backlog=1024``.

    Parsing needs no reactor (none is used until the endpoint listens)."""
    try:
        endpoints.serverFromString(None, value)
    except Exception as e:  # the endpoint parsers raise many unrelated types
        return f"is not a valid Twisted endpoint description ({value!r}: {e})"
    return None


def setting(default: Any, *, check: Check | None = None, path: bool = False,
            doc: str = "") -> Any:
    """One key of a section: its default, an optional value check, whether it is a filesystem
    path (made absolute against the working directory), and what it means."""
    return attrs.field(default=default,
                       metadata={"check": check, "path": path, "doc": doc})


@attrs.frozen
class ServerSection:
    """``server``: listeners, timeouts of silent connections, processes."""

    listen: str = setting(
        "tcp:15000:backlog=1024:interface=127.0.0.1", check=endpoint,
        doc="Twisted endpoint of the raw TCP listener (loopback unless told otherwise)")
    websocket_listen: str | None = setting(
        None, check=endpoint, doc="Twisted endpoint of the WebSocket listener (null = none)")
    http_listen: str | None = setting(
        None, check=endpoint,
        doc="Twisted endpoint of the HTTP metrics/API listener (null = none)")
    header_timeout: float = setting(
        21600.0, check=positive,
        doc="seconds a connection may take to send its P/ or G/ header")
    workers: int | None = setting(
        1, check=at_least(0),
        doc="processes that run the games, pinned by game id (0 or 1 = everything in one"
            " process, the default: it holds FAF's peak x3 on one core; null = one per core)")
    read_interval: float = setting(
        0.5, check=at_least(0),
        doc="seconds between reads of a writer's connection (0 = read every packet)")
    shutdown_timeout: float = setting(
        600.0, check=positive,
        doc="seconds a stopping server waits for saves; what is not saved by then stays in"
            " the spool for the next start")


@attrs.frozen
class ReplaySection:
    """``replay``: the delay, the merge and a game's lifetime."""

    delay: float = setting(300.0, check=at_least(0), doc="seconds readers lag behind writers")
    sample_interval: float = setting(
        1.0, check=positive, doc="seconds between samples of the writers' positions")
    grace_period: float = setting(
        30.0, check=at_least(0), doc="seconds without writers before a game ends")
    forced_end: float = setting(
        18000.0, check=positive, doc="seconds after creation when a game is ended")
    quorum: int = setting(2, check=at_least(1), doc="writers that must agree on a byte")
    comparison_window: int = setting(
        4096, check=at_least(1), doc="bytes looked back when comparing writers")
    stall_timeout: float = setting(
        60.0, check=positive,
        doc="seconds a quorum writer may send nothing before the merge moves on")


@attrs.frozen
class StorageSection:
    """``storage``: where replays and the writers' raw streams go."""

    vault: str = setting("replays", check=not_empty, path=True,
                         doc="directory of saved replays")
    spool: str = setting("spool", check=not_empty, path=True,
                         doc="directory of writers' raw streams until their game is saved")
    compression_level: int = setting(10, check=between(1, 22), doc="zstd level")


@attrs.frozen
class DatabaseSection:
    """``database``: FAF's MariaDB (the whole section is null when there is none)."""

    host: str = setting("127.0.0.1", check=not_empty, doc="MariaDB host")
    port: int = setting(3306, check=between(1, 65535), doc="MariaDB port")
    user: str = setting("root", check=not_empty, doc="MariaDB user")
    password: str = setting(
        "", doc="MariaDB password (in production: REPLAYSERVER_DATABASE_PASSWORD)")
    name: str = setting("faf", check=not_empty, doc="database name")
    pool_size: int = setting(4, check=at_least(1), doc="most connections open at once")
    missing_row_timeout: float = setting(
        300.0, check=at_least(0),
        doc="seconds a finished game's save waits for its game_stats row before it is saved"
            " with metadata from its replay header")


@attrs.frozen
class AdmissionSection:
    """``admission``: which writers may start a game."""

    require_live_game: bool | None = setting(
        None,
        doc="accept a writer only for a game with a live game_stats row (null = true when"
            " a database is configured; true needs a database)")
    wait: float = setting(
        60.0, check=at_least(0),
        doc="seconds a writer may wait for its game's game_stats row to appear")


@attrs.frozen
class LimitsSection:
    """``limits``: what one connection, peer or game may cost, whatever it sends."""

    stream_bytes: int = setting(
        64 << 20, check=at_least(1),
        doc="bytes one writer connection may send (a 5-hour game is well under 50 MB);"
            " a writer beyond it is dropped as bad data")
    game_bytes: int = setting(
        1 << 30, check=at_least(1),
        doc="bytes all writers of one game may send together (reconnections included);"
            " a writer whose data goes beyond it is dropped as bad data")
    writers_per_game: int | None = setting(
        64, check=at_least(1), doc="writers connected to one game at once (null = no limit)")
    writer_streams_per_game: int | None = setting(
        256, check=at_least(1),
        doc="writer connections one game accepts over its life, reconnections included"
            " (null = no limit)")
    readers_per_game: int | None = setting(
        5000, check=at_least(1), doc="readers of one game at once (null = no limit)")
    connections_per_peer: int | None = setting(
        1000, check=at_least(1),
        doc="connections open at once from one IP address, in the whole server"
            " (null = no limit)")
    connections: int | None = setting(
        20000, check=at_least(1),
        doc="connections open at once in the whole server (null = no limit)")
    partial_header_timeout: float = setting(
        30.0, check=positive,
        doc="seconds a connection that has sent part of its P/ or G/ header (or of its"
            " WebSocket upgrade) has to finish it")
    reader_stall_timeout: float = setting(
        120.0, check=positive,
        doc="seconds a reader may accept nothing while data waits for it before it is"
            " dropped")
    worker_queue: int = setting(
        10000, check=at_least(0),
        doc="connections that may wait for a restarting worker process")
    worker_queue_timeout: float = setting(
        60.0, check=positive,
        doc="seconds a connection may wait for a restarting worker process")


@attrs.frozen
class BugsnagSection:
    """``bugsnag``: error reports."""

    api_key: str | None = setting(
        None, check=not_empty,
        doc="Bugsnag API key (null = no error reports leave the machine); "
            "usually given as REPLAYSERVER_BUGSNAG_API_KEY")
    endpoint: str | None = setting(
        None, check=not_empty,
        doc="Bugsnag notify URL (null = Bugsnag's own; tests use a local sink)")
    release_stage: str = setting("production", check=not_empty, doc="Bugsnag release stage")


@attrs.frozen
class Config:
    """The whole checked configuration: one attribute per section."""

    server: ServerSection = attrs.field(factory=ServerSection)
    replay: ReplaySection = attrs.field(factory=ReplaySection)
    storage: StorageSection = attrs.field(factory=StorageSection)
    database: DatabaseSection | None = None
    admission: AdmissionSection = attrs.field(factory=AdmissionSection)
    limits: LimitsSection = attrs.field(factory=LimitsSection)
    bugsnag: BugsnagSection = attrs.field(factory=BugsnagSection)

    @property
    def requires_live_game(self) -> bool:
        """Whether writers are admitted only for live games (admission.require_live_game)."""
        required = self.admission.require_live_game
        return self.database is not None if required is None else required


@attrs.frozen
class Key:
    """What the loader knows of one key: the Python types it accepts, null or not, and the
    field's metadata."""

    name: str
    kinds: tuple[type, ...]
    nullable: bool
    default: Any
    check: Check | None
    path: bool
    doc: str


def _key(field: attrs.Attribute[Any]) -> Key:
    kinds, nullable = _kinds(field.type)
    return Key(field.name, kinds, nullable, field.default, field.metadata["check"],
               field.metadata["path"], field.metadata["doc"])


def _kinds(annotation: Any) -> tuple[tuple[type, ...], bool]:
    if get_origin(annotation) in (Union, types.UnionType):
        members = [arg for arg in get_args(annotation) if arg is not type(None)]
        kinds, _ = _kinds(members[0])
        return kinds, True
    if annotation is float:
        return (int, float), False
    return (annotation,), False


def _section_class(field: attrs.Attribute[Any]) -> tuple[type, bool]:
    annotation = field.type
    assert annotation is not None  # resolved below
    if get_origin(annotation) in (Union, types.UnionType):
        (member,) = [arg for arg in get_args(annotation) if arg is not type(None)]
        return member, True
    return annotation, False


attrs.resolve_types(Config)
for _section in (ServerSection, ReplaySection, StorageSection, DatabaseSection,
                 AdmissionSection, LimitsSection, BugsnagSection):
    attrs.resolve_types(_section)

#: Section name -> (its class, whether the whole section may be null), in file order.
SECTIONS: dict[str, tuple[type, bool]] = {
    field.name: _section_class(field) for field in attrs.fields(Config)
}


def keys(section: type) -> Iterator[Key]:
    """The keys of a section class, in order."""
    for field in attrs.fields(section):
        yield _key(field)


def load_config(path: str | None, environ: Mapping[str, str]) -> Config:
    """Read ``path`` (None = built-in defaults), apply the environment, check everything."""
    given = _read_yaml(path) if path is not None else {}
    for (section, key), value in _from_environment(environ).items():
        entries = given.get(section)
        if not isinstance(entries, dict):
            entries = given[section] = {}
        entries[key] = value
    return config_from_mapping(given)


def config_from_mapping(given: Mapping[str, Mapping[str, Any] | None]) -> Config:
    """Check a mapping of sections (as read from YAML) and build the Config."""
    sections: dict[str, Any] = {}
    for name, (cls, optional) in SECTIONS.items():
        entries = given.get(name)
        if entries is None and optional:
            sections[name] = None
            continue
        sections[name] = cls(**_check_section(name, cls, entries))
    config = Config(**sections)
    if config.admission.require_live_game and config.database is None:
        raise ConfigError("admission.require_live_game", "needs a database section")
    return config


def config_to_mapping(config: Config) -> dict[str, dict[str, Any] | None]:
    """The checked configuration as plain data (``config_from_mapping`` gives it back)."""
    return {name: None if (section := getattr(config, name)) is None else attrs.asdict(section)
            for name in SECTIONS}


def check_directory(key: str, path: str) -> None:
    """Create the directory of a path setting if needed and check that the server can write
    there; raises `ConfigError` naming ``key`` (a start-time check, no file is written)."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise ConfigError(key, f"cannot create {path}: {e.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(key, f"{path} is not writable")


def _read_yaml(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError(path, f"cannot read the configuration file: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(path, f"is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(path, "must be a mapping of sections")
    for name, entries in data.items():
        if name not in SECTIONS:
            known = ", ".join(SECTIONS)
            raise ConfigError(str(name), f"unknown section (known sections: {known})")
        if entries is not None and not isinstance(entries, dict):
            raise ConfigError(str(name), "must be a mapping of keys (or null)")
    return {name: None if entries is None else dict(entries) for name, entries in data.items()}


def _from_environment(environ: Mapping[str, str]) -> dict[tuple[str, str], Any]:
    """``REPLAYSERVER_<SECTION>_<KEY>`` variables of known sections, parsed by key type."""
    found = {}
    for variable, raw in environ.items():
        if not variable.startswith(ENV_PREFIX):
            continue
        rest = variable[len(ENV_PREFIX):].lower()
        for name, (cls, _) in SECTIONS.items():
            if not rest.startswith(name + "_"):
                continue
            wanted = rest[len(name) + 1:]
            key = next((key for key in keys(cls) if key.name == wanted), None)
            if key is None:
                raise ConfigError(variable, f"unknown key {wanted!r} of section {name!r}")
            found[(name, wanted)] = _parse_env_value(variable, raw, key)
    return found


def _parse_env_value(variable: str, raw: str, key: Key) -> Any:
    if str in key.kinds:
        if key.nullable and raw.strip() in _NULL_TEXTS:
            return None
        return raw
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        raise ConfigError(variable, f"is not a valid value: {raw!r}") from None
    if isinstance(value, (dict, list)):
        raise ConfigError(variable, f"must be a single value, got {raw!r}")
    return value


def _check_section(name: str, cls: type, entries: Mapping[str, Any] | None) -> dict[str, Any]:
    entries = entries or {}
    section_keys = list(keys(cls))
    known = {key.name for key in section_keys}
    for given in entries:
        if given not in known:
            names = ", ".join(key.name for key in section_keys)
            raise ConfigError(f"{name}.{given}", f"unknown key (known keys: {names})")
    return {key.name: _check_value(f"{name}.{key.name}", key, entries.get(key.name, key.default))
            for key in section_keys}


def _check_value(full: str, key: Key, value: Any) -> Any:
    if value is None:
        if key.nullable:
            return None
        raise ConfigError(full, "must not be null")
    if isinstance(value, bool) and bool not in key.kinds:
        raise ConfigError(full, f"must be {_kind_names(key)}, got a boolean")
    if not isinstance(value, key.kinds):
        raise ConfigError(full, f"must be {_kind_names(key)}, got {value!r}")
    if float in key.kinds and isinstance(value, int):
        value = float(value)
    if key.check is not None:
        problem = key.check(value)
        if problem:
            raise ConfigError(full, problem)
    if key.path:
        value = os.path.abspath(value)
    return value


def _kind_names(key: Key) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "a boolean"}
    if float in key.kinds:
        return "a number"
    return " or ".join(names.get(k, k.__name__) for k in key.kinds)
