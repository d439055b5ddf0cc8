"""TOML configuration files loaded into typed dataclasses.

Each sandboxer describes its file as nested dataclasses (a field whose type is a dataclass is a
TOML table). Loading checks every value against the field's annotation, so a wrong type or a
missing required key stops start-up with a message naming the file, the dotted key and what was
expected; keys the schema does not know are reported with a warning and otherwise ignored
(upstream Kuasar's serde behaves the same way), so newer files still load on older sandboxers.

Supported annotations: ``str``, ``int``, ``float``, ``bool``, ``list[T]``, ``dict[str, T]``,
``Optional[T]``, ``Any`` and nested dataclasses. A field with a default is optional.
"""
from __future__ import annotations

import dataclasses
import logging
import sys
import typing
from typing import Any, Type, TypeVar

from kuasar_shared.errors import InvalidArgument

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python < 3.11 only
    import tomli as tomllib

__all__ = ["ConfigError", "load_config", "parse_config"]

log = logging.getLogger(__name__)
T = TypeVar("T")

_TYPE_NAMES = {str: "string", int: "integer", float: "float", bool: "boolean", list: "array", dict: "table"}


class ConfigError(InvalidArgument):
    """A configuration file that cannot be used; the message says which file, key and why."""

    def __init__(self, path: str, key: str, problem: str) -> None:
        where = "%s: %s" % (path, key) if key else path
        super().__init__("%s: %s" % (where, problem))
        self.path = path
        self.key = key
        self.problem = problem


def _describe(value: Any) -> str:
    name = _TYPE_NAMES.get(type(value), type(value).__name__)
    shown = repr(value)
    if len(shown) > 40:
        shown = shown[:40] + "..."
    return "%s %s" % (name, shown)


def _expected(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return "table"
    if origin is typing.Union:
        return " or ".join(_expected(a) for a in typing.get_args(tp) if a is not type(None))
    if origin in (list, dict):
        return _TYPE_NAMES[origin]
    return _TYPE_NAMES.get(tp, getattr(tp, "__name__", str(tp)))


def _unwrap_optional(tp: Any) -> Any:
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _key(prefix: str, name: str, table: bool) -> str:
    """Dotted key rendering: tables as ``[a.b]``, values as ``[a].b`` or ``b`` at top level."""
    if table:
        return "[%s]" % (prefix + "." + name if prefix else name)
    return "[%s].%s" % (prefix, name) if prefix else name


class _Loader:
    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(self.path, key, problem)

    def convert(self, tp: Any, value: Any, key: str, prefix: str) -> Any:
        origin = typing.get_origin(tp)
        if tp is Any:
            return value
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise self.fail(key, "expected table, got %s" % _describe(value))
            return self.build(tp, value, prefix)
        if origin is typing.Union:
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) == 1:
                return self.convert(args[0], value, key, prefix)
            for arg in args:
                try:
                    return self.convert(arg, value, key, prefix)
                except ConfigError:
                    continue
            raise self.fail(key, "expected %s, got %s" % (_expected(tp), _describe(value)))
        if origin is list:
            if not isinstance(value, list):
                raise self.fail(key, "expected array, got %s" % _describe(value))
            item_args = typing.get_args(tp)
            item_tp = item_args[0] if item_args else Any
            return [self.convert(item_tp, v, "%s[%d]" % (key, i), prefix) for i, v in enumerate(value)]
        if origin is dict:
            if not isinstance(value, dict):
                raise self.fail(key, "expected table, got %s" % _describe(value))
            kv_args = typing.get_args(tp)
            val_tp = kv_args[1] if len(kv_args) == 2 else Any
            return {k: self.convert(val_tp, v, "%s.%s" % (key, k), prefix) for k, v in value.items()}
        if tp is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
        elif tp in (int, str, bool):
            if type(value) is tp:
                return value
        else:
            raise self.fail(key, "unsupported field type %r in the schema" % (tp,))
        raise self.fail(key, "expected %s, got %s" % (_expected(tp), _describe(value)))

    def build(self, schema: Any, table: dict[str, Any], prefix: str) -> Any:
        hints = typing.get_type_hints(schema)
        values: dict[str, Any] = {}
        fields = {f.name: f for f in dataclasses.fields(schema) if f.init}
        for name, value in table.items():
            if name not in fields:
                log.warning("%s: unknown key %s ignored", self.path,
                            _key(prefix, name, isinstance(value, dict)))
                continue
            tp = hints[name]
            is_table = dataclasses.is_dataclass(_unwrap_optional(tp))
            sub = prefix + "." + name if prefix else name
            values[name] = self.convert(tp, value, _key(prefix, name, is_table), sub)
        for name, f in fields.items():
            if name in values:
                continue
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                tp = hints[name]
                raise self.fail(_key(prefix, name, dataclasses.is_dataclass(tp)),
                                "required key is missing (expected %s)" % _expected(tp))
        return schema(**values)


def parse_config(text: str, schema: Type[T], path: str = "<config>") -> T:
    """Parse TOML ``text`` into ``schema`` (a dataclass type); ``path`` is used in messages.

    :raise ConfigError: for TOML syntax errors, wrong types and missing required keys.
    """
    if not dataclasses.is_dataclass(schema):
        raise TypeError("schema must be a dataclass type, got %r" % (schema,))
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(path, "", "invalid TOML: %s" % err) from err
    return typing.cast(T, _Loader(path).build(schema, table, ""))


def load_config(path: str, schema: Type[T]) -> T:
    """Load the TOML file at ``path`` into ``schema`` (a dataclass type).

    :raise ConfigError: when the file is missing or unreadable, is not valid TOML, has a value
        of the wrong type or lacks a required key. Unknown keys only log a warning.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ConfigError(path, "", "configuration file does not exist") from None
    except OSError as err:
        raise ConfigError(path, "", "cannot read configuration file: %s" % err.strerror) from err
    try:
        text = data.decode()
    except UnicodeDecodeError as err:
        raise ConfigError(path, "", "not UTF-8: %s" % err) from err
    return parse_config(text, schema, path)
