"""Reading a sweep file's YAML as a careless or hostile file would be read: safely and bounded.

``yaml.safe_load`` runs no code, but it expands aliases (eight nested levels of nine aliases are
43 million values: gigabytes, then the value printed back in an error message) and silently keeps
the last of two equal keys. A sweep file is small and written by hand, so it needs neither:
aliases are refused, a key given twice is an error naming both lines, and values quoted back in
messages are cut short (``shown``).
"""
from __future__ import annotations

from typing import Any

import yaml

SHOWN_CHARS = 200  # the most of a value an error message quotes


class SweepYAMLError(ValueError):
    """The file is YAML a sweep file may not use: the message names the line."""


class _SweepLoader(yaml.SafeLoader):
    """SafeLoader without aliases and without duplicate keys."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise SweepYAMLError(f"line {event.start_mark.line + 1}: YAML aliases (*{event.anchor}) are not allowed "
                                 f"in a sweep file; write the value out")
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = lines.setdefault(key, line)
            except TypeError:  # an unhashable key: SafeLoader reports it below
                continue
            if first != line:
                raise SweepYAMLError(f"key {shown(key)} is given twice (lines {first} and {line}); keep one")
        return super().construct_mapping(node, deep)


def read(text: str) -> Any:
    """The YAML document in ``text``; raises SweepYAMLError or yaml.YAMLError."""
    return yaml.load(text, Loader=_SweepLoader)  # a SafeLoader: no tag constructs an object


def shown(value: Any) -> str:
    """``repr(value)``, cut to SHOWN_CHARS characters for messages."""
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else f"{text[:SHOWN_CHARS]}... ({len(text):,} characters in all)"


def read_file(path, error: type[Exception], missing: str | None = None) -> Any:
    """The YAML file at ``path`` read with ``read``; every failure raised as ``error`` naming the
    file (a missing file with ``missing`` as its message, when given)."""
    try:
        return read(path.read_text())
    except FileNotFoundError:
        if missing is None:
            raise error(f"{path}: cannot read: no such file") from None
        raise error(f"{path}: {missing}") from None
    except SweepYAMLError as e:
        raise error(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        raise error(f"{path}: not valid YAML: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"{path}: cannot read: {e}") from None
