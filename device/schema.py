"""One typed loader for every YAML file kenpin reads: the station config and the recipes.

A frozen dataclass is the schema: its type hints say what each key holds, its defaults what an
absent key means, and its ``__post_init__`` the ranges and choices types cannot express (raise
:class:`Invalid` there). Reading a file is then one call, and every mistake is one sentence that
names the file, the YAML line and the key — an unknown key (a typo must not fall back to a
default silently), a wrong type, a missing required key, or a value out of range. Items of a
list of sections are named by their place (``products[2].bundle``), with their own line.
"""
from __future__ import annotations

import dataclasses
import re
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from device.errors import KenpinError

Key = tuple[str, ...]  # a list item's place is its own element: ("products", "[2]", "bundle")


class Invalid(KenpinError):
    """A value a dataclass refuses in ``__post_init__``; the loader adds the file, line and section.

    ``key`` is relative to the dataclass raising it (``"port"``, or ``"calibration.holdout_fraction"``
    for a check across sections, ``"products[1].number"`` for one item of a list)."""

    def __init__(self, key: str, value: Any, right: str) -> None:
        self.key, self.value, self.right = key, value, right
        super().__init__(f"{key} = {value!r}: {right}")


def need(ok: bool, key: str, value: Any, right: str) -> None:
    """Raise :class:`Invalid` unless ``ok`` (the one-line form of a range check)."""
    if not ok:
        raise Invalid(key, value, right)


@dataclass(frozen=True)
class Document:
    """Plain YAML data with the line of every mapping key, for messages."""

    data: Any
    source: str
    lines: dict[Key, int] = dataclasses.field(default_factory=dict)

    def where(self, path: Key, near: Key | None = None) -> str:
        """``file, line N: a.b[2].c`` (the line when the key or list item was written in the file;
        for a key that is missing, the line of ``near``, the section it is missing from)."""
        if not path:
            return self.source
        line = self.lines.get(path) or (self.lines.get(near) if near is not None else None)
        return f"{self.source}{f', line {line}' if line else ''}: {dotted(path)}"


def dotted(path: Key) -> str:
    """A key path as written in messages: ``products[2].bundle``."""
    return "".join(p if p.startswith("[") else f".{p}" for p in path).lstrip(".")


def key_path(key: str) -> Key:
    """The inverse of :func:`dotted`: ``"products[2].bundle"`` → ``("products", "[2]", "bundle")``."""
    return tuple(re.findall(r"\[\d+\]|[^.\[\]]+", key))


def parse_yaml(text: str, source: str) -> Document:
    """YAML text → a :class:`Document`; invalid YAML is a KenpinError naming ``source``."""
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text) if node is not None else None
    except yaml.YAMLError as e:
        raise KenpinError(f"{source}: not valid YAML ({e})") from None
    lines: dict[Key, int] = {}

    def walk(n: Any, path: Key) -> None:
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                key = path + (str(k.value),)
                lines[key] = k.start_mark.line + 1
                walk(v, key)
        elif isinstance(n, yaml.SequenceNode):
            for i, item in enumerate(n.value):
                key = path + (f"[{i}]",)
                lines[key] = item.start_mark.line + 1
                walk(item, key)

    walk(node, ())
    return Document({} if data is None else data, source, lines)


def read_yaml(path: str | Path, what: str) -> Document:
    """Read a YAML file; a missing or unreadable file is one sentence saying which ``what`` it was."""
    path = Path(path)
    if not path.is_file():
        raise KenpinError(f"{path}: {what} not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise KenpinError(f"{path}: cannot read the {what} ({e})") from None
    return parse_yaml(text, str(path))


def load(cls: type, doc: Document, base: Any = None, folder: Path | None = None) -> Any:
    """Build dataclass ``cls`` from ``doc``; keys it leaves out keep ``base``'s values (or the defaults).

    A relative path written in a :func:`file_path` field is joined to ``folder`` (the file's own
    folder) before the dataclass checks it; without ``folder`` it stays as written."""
    return _Builder(doc, folder).dataclass(cls, doc.data, (), base)


def internal(default: Any = None) -> Any:
    """A dataclass field the loader never reads from a file (set by the program, e.g. the file's path)."""
    return dataclasses.field(default=default, metadata={"internal": True})


def file_path(default: str = "") -> Any:
    """A string field naming a file or folder ("" = none): relative to the YAML file's folder
    when :func:`load` is given it, so a config means the same whatever the working directory."""
    return dataclasses.field(default=default, metadata={"file_path": True})


def per_kind(registry: dict[str, Any], settings_of: Any = lambda kind: kind.Settings) -> Any:
    """A field holding each kind's own block of settings, by kind name (``{"opencv": OpenCVSettings()…}``).

    ``registry`` maps a kind's name to its class, ``settings_of(class)`` is its settings dataclass;
    both are read when a file is, so a kind added to the registry is known at once. In the file
    each block is a key of the section beside ``type`` (``camera: {type: opencv, opencv: {source:
    0}}``), read with the kind's settings class; kinds left out keep their defaults."""
    def kinds() -> dict[str, type]:
        return {name: settings_of(kind) for name, kind in registry.items()}

    return dataclasses.field(default_factory=lambda: {name: block() for name, block in kinds().items()},
                             metadata={"kinds": kinds})


class _Builder:
    """Walks a schema and a document side by side, converting and naming what is wrong."""

    def __init__(self, doc: Document, folder: Path | None = None) -> None:
        self.doc = doc
        self.folder = folder

    def fail(self, path: Key, value: Any, right: str) -> KenpinError:
        return KenpinError(f"{self.doc.where(path)} = {value!r}: {right}")

    def dataclass(self, cls: type, data: Any, path: Key, base: Any) -> Any:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            at = self.doc.where(path) if path else self.doc.source
            raise KenpinError(f"{at}: expected a mapping of keys, got {data!r}")
        fields = [f for f in dataclasses.fields(cls) if f.init and not f.metadata.get("internal")]
        by_name = {f.name: f for f in fields}
        kinds = {name: (f.name, block) for f in fields if "kinds" in f.metadata
                 for name, block in f.metadata["kinds"]().items()}
        known = {f.name for f in fields if "kinds" not in f.metadata} | set(kinds)
        for key in data:
            if key not in known:
                raise KenpinError(f"{self.doc.where(path + (str(key),))}: unknown key; expected one of {sorted(known)}")
        hints = get_type_hints(cls)
        defaults = base if base is not None else _defaults(cls)
        if defaults is None:  # a section with required keys (a list item): each must be written
            for f in fields:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in data:
                    raise KenpinError(f"{self.doc.where(path + (f.name,), near=path)}: missing; this key is required")
        kwargs: dict[str, Any] = {}
        for k, v in data.items():
            if k in kinds:  # one kind's block: into its field's mapping, read by the kind's class
                field_name, block = kinds[k]
                blocks = kwargs.setdefault(field_name, dict(getattr(defaults, field_name)))
                blocks[k] = self.dataclass(block, v, path + (k,), blocks.get(k))
            else:
                kwargs[k] = self.value(v, hints[k], path + (k,), getattr(defaults, k, None))
                if by_name[k].metadata.get("file_path"):
                    kwargs[k] = self.relative(kwargs[k])
        try:
            return dataclasses.replace(defaults, **kwargs) if defaults is not None else cls(**kwargs)
        except Invalid as e:
            raise self.fail(path + key_path(e.key), e.value, e.right) from None
        except KenpinError as e:  # a check that names its own key: add where the section is
            raise KenpinError(f"{self.doc.where(path) if path else self.doc.source}: {e}") from None

    def relative(self, value: str) -> str:
        """A file_path value joined to the file's folder when relative ("" stays: no file)."""
        if not value or self.folder is None or Path(value).is_absolute():
            return value
        return str(self.folder / value)

    def value(self, value: Any, hint: Any, path: Key, base: Any) -> Any:
        origin, args = get_origin(hint), get_args(hint)
        if dataclasses.is_dataclass(hint):
            return self.dataclass(hint, value, path, base)
        if origin in (Union, types.UnionType):
            if value is None and type(None) in args:
                return None
            rest = [a for a in args if a is not type(None)]
            return self.value(value, rest[0], path, base if dataclasses.is_dataclass(base) else None)
        if origin is Literal:
            if value not in args:
                raise self.fail(path, value, f"use one of {list(args)}")
            return value
        if origin is tuple:
            return self.tuple(value, args, path)
        if origin is list:
            return list(self.tuple(value, (args[0], Ellipsis), path))
        if origin is dict:
            return self.mapping(value, args, path)
        return self.scalar(value, hint, path)

    def scalar(self, value: Any, hint: Any, path: Key) -> Any:
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if hint is bool and isinstance(value, bool):
            return value
        if hint is int and number and isinstance(value, int):
            return value
        if hint is float and number:
            return float(value)
        if hint is str and (isinstance(value, str) or (number and isinstance(value, int))):
            return str(value)
        if hint is Path and isinstance(value, str) and value:
            return Path(value)
        if hint is Any:
            return value
        if hint not in _NAMES:
            raise TypeError(f"unsupported schema type {hint!r}")  # a programming error, not a user's
        raise self.fail(path, value, f"expected {_NAMES[hint]}")

    def tuple(self, value: Any, args: tuple[Any, ...], path: Key) -> tuple[Any, ...]:
        if not isinstance(value, (list, tuple)):
            raise self.fail(path, value, "expected a list")
        if len(args) == 2 and args[1] is Ellipsis:  # each item named by its place: products[2]
            return tuple(self.value(v, args[0], path + (f"[{i}]",), None) for i, v in enumerate(value))
        if len(value) != len(args):
            raise self.fail(path, value, f"expected a list of {len(args)}, e.g. [640, 480]")
        return tuple(self.value(v, a, path, None) for v, a in zip(value, args))

    def mapping(self, value: Any, args: tuple[Any, ...], path: Key) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(path, value, "expected a mapping of keys")
        hint = args[1] if args else Any
        return {str(k): self.value(v, hint, path + (str(k),), None) for k, v in value.items()}


_NAMES = {bool: "true or false", int: "a whole number", float: "a number", str: "a string", Path: "a path"}


def _defaults(cls: type) -> Any:
    """``cls()`` when every field has a default (the usual case), else None (built from the file alone)."""
    try:
        return cls()
    except TypeError:
        return None
