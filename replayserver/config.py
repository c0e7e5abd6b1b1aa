"""The service's configuration: one schema table, a YAML file, environment overrides.

Every setting is declared once in :data:`SCHEMA` (section -> key -> :class:`Setting`).
Other parts of the service add their sections by adding entries to that table.
:func:`load_config` reads the YAML file (if any), applies ``REPLAYSERVER_<SECTION>_<KEY>``
environment variables and checks every value once, raising :class:`ConfigError` with the
name of the offending key.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import attrs
import yaml

ENV_PREFIX = "REPLAYSERVER_"


class ConfigError(Exception):
    """A configuration value (or file) that prevents the service from starting."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


Check = Callable[[Any], "str | None"]


@attrs.frozen
class Setting:
    """One key: its default, the accepted types, an optional value check, a description."""

    default: Any
    kinds: tuple[type, ...]
    check: Check | None = None
    nullable: bool = False
    path: bool = False  # a filesystem path, made absolute against the working directory
    doc: str = ""


@attrs.frozen
class Section:
    """A group of settings; an optional section is ``None`` unless the configuration sets it."""

    settings: Mapping[str, Setting]
    optional: bool = False
    doc: str = ""


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
    """A Twisted server endpoint description such as ``tcp:15000:backlog=1024``."""
    from twisted.internet import endpoints, reactor

    try:
        endpoints.serverFromString(reactor, value)
    except Exception as e:  # the endpoint parsers raise many unrelated types
        return f"is not a valid Twisted endpoint description ({value!r}: {e})"
    return None


NUMBER = (int, float)

#: Every section and key of the configuration. Other modules extend it by adding entries.
SCHEMA: dict[str, Section] = {
    "server": Section(
        {
            "listen": Setting(
                "tcp:15000:backlog=1024:interface=127.0.0.1", (str,), endpoint,
                doc="Twisted endpoint of the raw TCP listener (loopback unless told otherwise)",
            ),
            "websocket_listen": Setting(
                None, (str,), endpoint, nullable=True,
                doc="Twisted endpoint of the WebSocket listener (null = none)",
            ),
            "http_listen": Setting(
                None, (str,), endpoint, nullable=True,
                doc="Twisted endpoint of the HTTP metrics/API listener (null = none)",
            ),
            "header_timeout": Setting(
                21600, NUMBER, positive,
                doc="seconds a connection may take to send its P/ or G/ header",
            ),
            "workers": Setting(
                None, (int,), at_least(0), nullable=True,
                doc="processes that run the games, pinned by game id (null = one per core;"
                    " 0 or 1 = everything in one process)",
            ),
        }
    ),
    "replay": Section(
        {
            "delay": Setting(300, NUMBER, at_least(0), doc="seconds readers lag behind writers"),
            "sample_interval": Setting(
                1, NUMBER, positive, doc="seconds between samples of the writers' positions"
            ),
            "grace_period": Setting(
                30, NUMBER, at_least(0), doc="seconds without writers before a game ends"
            ),
            "forced_end": Setting(
                18000, NUMBER, positive, doc="seconds after creation when a game is ended"
            ),
            "quorum": Setting(2, (int,), at_least(1), doc="writers that must agree on a byte"),
            "comparison_window": Setting(
                4096, (int,), at_least(1), doc="bytes looked back when comparing writers"
            ),
            "stall_timeout": Setting(
                60, NUMBER, positive,
                doc="seconds a quorum writer may send nothing before the merge moves on",
            ),
        }
    ),
    "storage": Section(
        {
            "vault": Setting(
                "replays", (str,), not_empty, path=True, doc="directory of saved replays"
            ),
            "spool": Setting(
                "spool", (str,), not_empty, path=True,
                doc="directory of writers' raw streams until their game is saved",
            ),
            "compression_level": Setting(10, (int,), between(1, 22), doc="zstd level"),
        }
    ),
    "database": Section(
        {
            "host": Setting("127.0.0.1", (str,), not_empty, doc="MariaDB host"),
            "port": Setting(3306, (int,), between(1, 65535), doc="MariaDB port"),
            "user": Setting("root", (str,), not_empty, doc="MariaDB user"),
            "password": Setting(
                "", (str,),
                doc="MariaDB password (in production: REPLAYSERVER_DATABASE_PASSWORD)",
            ),
            "name": Setting("faf", (str,), not_empty, doc="database name"),
            "pool_size": Setting(4, (int,), at_least(1), doc="most connections open at once"),
            "missing_row_timeout": Setting(
                300, NUMBER, at_least(0),
                doc="seconds a finished game's save waits for its game_stats row before it is"
                    " saved with metadata from its replay header",
            ),
        },
        optional=True, doc="FAF's MariaDB (null = no database)",
    ),
    "admission": Section(
        {
            "require_live_game": Setting(
                False, (bool,),
                doc="accept a writer only for a game with a live game_stats row (needs a database)",
            ),
            "wait": Setting(
                60, NUMBER, at_least(0),
                doc="seconds a writer may wait for its game's game_stats row to appear",
            ),
        }
    ),
    "limits": Section(
        {
            "stream_bytes": Setting(
                64 << 20, (int,), at_least(1),
                doc="bytes one writer connection may send (a 5-hour game is well under 50 MB);"
                    " a writer beyond it is dropped as bad data",
            ),
            "game_bytes": Setting(
                1 << 30, (int,), at_least(1),
                doc="bytes all writers of one game may send together (reconnections included);"
                    " a writer whose data goes beyond it is dropped as bad data",
            ),
            "writers_per_game": Setting(
                64, (int,), at_least(1), nullable=True,
                doc="writers connected to one game at once (null = no limit)",
            ),
            "writer_streams_per_game": Setting(
                256, (int,), at_least(1), nullable=True,
                doc="writer connections one game accepts over its life, reconnections included"
                    " (null = no limit)",
            ),
            "readers_per_game": Setting(
                5000, (int,), at_least(1), nullable=True,
                doc="readers of one game at once (null = no limit)",
            ),
            "connections_per_peer": Setting(
                1000, (int,), at_least(1), nullable=True,
                doc="connections open at once from one IP address (null = no limit)",
            ),
            "connections": Setting(
                20000, (int,), at_least(1), nullable=True,
                doc="connections open at once in one process (null = no limit)",
            ),
            "partial_header_timeout": Setting(
                30, NUMBER, positive,
                doc="seconds a connection that has sent part of its P/ or G/ header has to"
                    " finish it",
            ),
            "reader_stall_timeout": Setting(
                120, NUMBER, positive,
                doc="seconds a reader may accept nothing while data waits for it before it is"
                    " dropped",
            ),
        }
    ),
    "bugsnag": Section(
        {
            "api_key": Setting(
                None, (str,), not_empty, nullable=True,
                doc="Bugsnag API key (null = no error reports leave the machine); "
                    "usually given as REPLAYSERVER_BUGSNAG_API_KEY",
            ),
            "endpoint": Setting(
                None, (str,), not_empty, nullable=True,
                doc="Bugsnag notify URL (null = Bugsnag's own; tests use a local sink)",
            ),
            "release_stage": Setting("production", (str,), not_empty, doc="Bugsnag release stage"),
        }
    ),
}


class Values:
    """The checked values of one section, read as attributes (``config.replay.delay``)."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self._values = dict(values)

    def __getattr__(self, key: str) -> Any:
        try:
            return self._values[key]
        except KeyError:
            raise AttributeError(key) from None

    def as_dict(self) -> dict[str, Any]:
        return dict(self._values)

    def __repr__(self) -> str:
        return f"Values({self._values!r})"


class Config:
    """The whole checked configuration: one attribute per section (``None`` if absent)."""

    def __init__(self, sections: Mapping[str, Values | None]) -> None:
        self._sections = dict(sections)

    def __getattr__(self, name: str) -> Values | None:
        try:
            return self._sections[name]
        except KeyError:
            raise AttributeError(name) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._sections)


def load_config(path: str | None, environ: Mapping[str, str]) -> Config:
    """Read ``path`` (None = built-in defaults), apply the environment, check everything."""
    given = _read_yaml(path) if path is not None else {}
    for (section, key), value in _from_environment(environ).items():
        entries = given.get(section)
        if not isinstance(entries, dict):
            entries = given[section] = {}
        entries[key] = value
    sections: dict[str, Values | None] = {}
    for name, section in SCHEMA.items():
        entries = given.get(name)
        if entries is None and section.optional:
            sections[name] = None
            continue
        sections[name] = Values(_check_section(name, section, entries))
    return Config(sections)


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
        if name not in SCHEMA:
            known = ", ".join(SCHEMA)
            raise ConfigError(str(name), f"unknown section (known sections: {known})")
        if entries is not None and not isinstance(entries, dict):
            raise ConfigError(str(name), "must be a mapping of keys (or null)")
    return {name: None if entries is None else dict(entries) for name, entries in data.items()}


def _from_environment(environ: Mapping[str, str]) -> dict[tuple[str, str], Any]:
    """``REPLAYSERVER_<SECTION>_<KEY>`` variables of known sections, parsed as YAML values."""
    found = {}
    for variable, raw in environ.items():
        if not variable.startswith(ENV_PREFIX):
            continue
        rest = variable[len(ENV_PREFIX):].lower()
        for name, section in SCHEMA.items():
            if not rest.startswith(name + "_"):
                continue
            key = rest[len(name) + 1:]
            if key not in section.settings:
                raise ConfigError(variable, f"unknown key {key!r} of section {name!r}")
            found[(name, key)] = _parse_env_value(variable, raw, section.settings[key])
    return found


def _parse_env_value(variable: str, raw: str, setting: Setting) -> Any:
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    if str in setting.kinds and not isinstance(value, str):
        if value is None and setting.nullable:
            return None
        return raw  # a string key takes the text as it is ("123" stays a string)
    return value


def _check_section(name: str, section: Section, entries: Mapping[str, Any] | None) -> dict:
    entries = entries or {}
    for key in entries:
        if key not in section.settings:
            known = ", ".join(section.settings) or "none"
            raise ConfigError(f"{name}.{key}", f"unknown key (known keys: {known})")
    values = {}
    for key, setting in section.settings.items():
        full = f"{name}.{key}"
        value = entries.get(key, setting.default)
        values[key] = _check_value(full, setting, value)
    return values


def _check_value(full: str, setting: Setting, value: Any) -> Any:
    if value is None:
        if setting.nullable:
            return None
        raise ConfigError(full, "must not be null")
    if isinstance(value, bool) and bool not in setting.kinds:
        raise ConfigError(full, f"must be {_kind_names(setting)}, got a boolean")
    if not isinstance(value, setting.kinds):
        raise ConfigError(full, f"must be {_kind_names(setting)}, got {value!r}")
    if setting.check is not None:
        problem = setting.check(value)
        if problem:
            raise ConfigError(full, problem)
    if setting.path:
        value = os.path.abspath(value)
    return value


def _kind_names(setting: Setting) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "a boolean"}
    if setting.kinds == NUMBER:
        return "a number"
    return " or ".join(names.get(k, k.__name__) for k in setting.kinds)
