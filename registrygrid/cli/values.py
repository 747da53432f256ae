"""Parsing what operators type: PATH=VALUE assignments, filters, JSON files; output paths."""

from __future__ import annotations

import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Any

import msgspec

from registrygrid.errors import FileFailed, MalformedInput, NotFound, ValidationError
from registrygrid.jsonkeys import repeated_name
from registrygrid.files import read_bounded

# A file we read whole into memory; larger than any record can be anyway
# (records are capped at 128 KiB), with room for pretty-printed JSON.
MAX_INPUT_FILE = 4 * 2**20


def read_json_file(path: Path | str) -> Any:
    text, where = read_text_file(path)
    return loads_json(text, where)


def typed_text(text: str, where: str) -> str:
    """``text`` as typed on the command line, refused if it is not UTF-8.

    Python hands on the bytes of an argument that is not UTF-8 (a terminal
    set to Latin-1) as lone surrogates, which no JSON or msgpack encoder
    takes: a put failed deep inside with "surrogates not allowed", a search
    crashed in the index's tokenizer, an org name went into org.json as a
    surrogate escape."""
    for i, c in enumerate(text):
        if "\udc80" <= c <= "\udcff":
            raise MalformedInput(f"{where} is not UTF-8 text: character {i} is the byte {ord(c) - 0xDC00:#04x} "
                                 "(is the terminal set to UTF-8?)",
                                 details=[{"path": where, "message": "not UTF-8", "character": i}])
    return text


def loads_json(text: str, where: str) -> Any:
    """``text`` as JSON; MalformedInput naming ``where`` when it is not, or
    when it nests deeper than Python's parser can follow (no record may nest
    past limits.MAX_NESTING anyway)."""
    def not_json(name: str) -> Any:
        # Python's parser reads Infinity, -Infinity and NaN, which JSON (and
        # the node's parser) does not: offline and through a node, one query
        # answered otherwise.
        raise MalformedInput(f"{where} is not valid JSON: {name} is no JSON number",
                             details=[{"path": where, "message": f"{name} is no JSON number"}])

    def finite(literal: str) -> float:
        number = float(literal)
        if not math.isfinite(number):  # 1e999: inf to Python, out of range to the node
            raise MalformedInput(f"{where} holds {literal[:40]}, a number past the largest a node reads (~1.8e308)",
                                 details=[{"path": where, "message": "number out of range"}])
        return number

    try:
        value = json.loads(text, parse_constant=not_json, parse_float=finite)
    except json.JSONDecodeError as exc:
        raise MalformedInput(f"{where} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
                             details=[{"path": where, "line": exc.lineno, "column": exc.colno}]) from None
    except RecursionError:
        raise MalformedInput(f"{where} nests arrays or objects too deeply to read",
                             details=[{"path": where, "message": "nested too deeply"}]) from None
    except ValueError:  # an integer past sys.get_int_max_str_digits(): it was a traceback
        raise ValidationError(f"{where} holds an integer of more than {sys.get_int_max_str_digits()} digits, "
                              "more than a node reads", details=[{"path": where, "message": "integer too long"}]) from None
    twice = repeated_name(text) if isinstance(value, (dict, list)) else None
    if twice is not None:
        raise MalformedInput(f"{where} names {twice[:80]!r} twice in one object: which one counts depends on who "
                             "reads it", details=[{"path": where, "message": f"duplicate member {twice[:80]!r}"}])
    return value


def read_text_file(path: Path | str) -> tuple[str, str]:
    """The UTF-8 text of a file an operator names ('-': stdin), at most
    MAX_INPUT_FILE bytes, and how to name it in errors."""
    if str(path) == "-":
        data = sys.stdin.buffer.read(MAX_INPUT_FILE + 1)
        where = "stdin"
    else:
        try:
            data = read_bounded(path, MAX_INPUT_FILE)
        except NotFound as exc:  # what the CLI said of a missing file before
            raise ValidationError(exc.message) from None
        where = str(Path(path))
    if len(data) > MAX_INPUT_FILE:
        raise ValidationError(f"{where} is larger than {MAX_INPUT_FILE} bytes")
    return decode_utf8(data, where), where


def decode_utf8(data: bytes, where: str) -> str:
    """``data`` as text: JSON files are UTF-8 (RFC 8259, section 8.1)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedInput(f"{where} is not UTF-8 text: byte {exc.start} is {data[exc.start]:#04x}",
                             details=[{"path": where, "byte": exc.start}]) from None


def parse_value(text: str) -> Any:
    """JSON when it parses (numbers, true, null, [..], {..}), else the plain string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text
    except RecursionError:
        raise MalformedInput(f"value {text[:40]!r}... nests arrays or objects too deeply to read") from None
    except ValueError:  # an integer longer than sys.get_int_max_str_digits(): a traceback, uncaught
        raise ValidationError(f"value {_shown(text)} holds an integer of more than {sys.get_int_max_str_digits()} "
                              "digits, more than Python reads") from None


def parse_where_value(text: str, option: str = "--where") -> Any:
    """A filter's VALUE, read as the node's bridge reads it (node/bridge/app.py
    parse_value: msgspec's JSON, else the plain string), so that a filter
    answers the same whether the CLI reads the store itself or asks the
    running node (which gets the value as json.dumps wrote it, client/calls.py).

    Python's json.loads read more than msgspec does: Infinity, NaN and 1e999
    as floats (`n<Infinity` listed every record offline, none through the
    node, which took the text "Infinity" for a string) and it raised a bare
    ValueError for an integer past sys.get_int_max_str_digits(), which
    msgspec refuses too. Such a number is refused here, naming it, before
    anyone is asked; the bridge itself takes it for a plain string."""
    try:
        return msgspec.json.decode(text)
    except msgspec.ValidationError:  # decoding untyped, msgspec refuses only numbers out of range
        digits = text.strip().lstrip("-")
        if digits.isascii() and digits.isdigit():
            raise ValidationError(f"{option} value {_shown(text)}: an integer of {len(digits)} digits is more than "
                                  f"the {sys.get_int_max_str_digits()} a node reads") from None
        raise ValidationError(f"{option} value {_shown(text)} holds a number out of range: JSON numbers here are "
                              "finite, at most about 1.8e308 either side of 0") from None
    except RecursionError:
        raise MalformedInput(f"{option} value {_shown(text)} nests arrays or objects too deeply to read") from None
    except msgspec.DecodeError:
        pass
    constant = _non_finite_constant(text)
    if constant is not None:
        raise ValidationError(f"{option} value {_shown(text)}: {constant} is not a number a node reads (JSON has "
                              f"no Infinity or NaN); to compare with the string, quote it: '\"{constant}\"'")
    return text


def _non_finite_constant(text: str) -> str | None:
    """The Infinity, -Infinity or NaN that makes ``text`` JSON to Python's
    parser (which reads them, unlike RFC 8259 and msgspec), if any."""
    found: list[str] = []

    def constant(name: str) -> float:
        found.append(name)
        return math.nan

    try:
        json.loads(text, parse_constant=constant)
    except (ValueError, RecursionError):
        return None
    return found[0] if found else None


def _shown(text: str) -> str:
    """``text`` quoted for an error message, cut short when long (a 5000-digit number)."""
    if len(text) <= 40:
        return repr(text)
    return f"{text[:20]!r}... ({len(text)} characters)"


def parse_assignments(assignments: list[str] | tuple[str, ...], base: Any) -> dict[str, Any]:
    if not isinstance(base, dict):
        raise ValidationError("record fields must be a JSON object")
    for assignment in assignments:
        path, sep, raw = assignment.partition("=")
        if not sep or not path:
            raise ValidationError(f"--set expects PATH=VALUE, got {assignment!r}")
        parts = path.split(".")
        target = base
        for part in parts[:-1]:
            child = target.get(part)
            if not isinstance(child, dict):
                child = target[part] = {}
            target = child
        target[parts[-1]] = parse_value(raw)
    return base


_WHERE = re.compile(r"^([A-Za-z0-9_.\-]+)\s*(<=|>=|!=|=|<|>|~)\s*(.*)$")
_OPS = {"=": "eq", "!=": "ne", "<": "lt", "<=": "le", ">": "gt", ">=": "ge", "~": "contains"}


def parse_where(text: str) -> tuple[str, str, Any]:
    match = _WHERE.match(text)
    if not match:
        raise ValidationError(f"bad filter {text!r}: expected PATH OP VALUE with OP one of = != < <= > >= ~")
    path, op, raw = match.groups()
    if raw[:1] in ("<", ">", "=", "!", "~"):
        # `count=>4`, `count>>4`: a mistyped operator, whose rest would be
        # compared as the string "=>4" or ">4" and match nothing, silently.
        raise ValidationError(f"bad filter {text!r}: after {op!r} the value {raw!r} starts with an operator; "
                              f"operators are = != < <= > >= ~ (quote a string value that starts so: "
                              f"{path}{op}'\"{raw}\"')")
    return path, _OPS[op], parse_where_value(raw)


def check_writable(path: Path, option: str = "--out") -> None:
    """Refuse an output file the command could not write (FileFailed),
    before it changes anything: a command that acts, then fails to write
    what it made, leaves its user without it."""
    folder = path.parent
    if path.is_dir():
        raise FileFailed(f"{option} {path}: is a folder; name a file in it")
    if not folder.is_dir():
        raise FileFailed(f"{option} {path}: no folder {folder}")
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise FileFailed(f"{option} {path}: not writable")
