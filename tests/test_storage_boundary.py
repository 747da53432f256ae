"""Storage owns LMDB (DESIGN.md, decision 3 of wire format 2): only
``registrygrid/storage/`` imports lmdb, opens a sub-database by name or
walks a key prefix; everything else calls its typed functions."""

from __future__ import annotations

import ast
from pathlib import Path

import registrygrid

PACKAGE = Path(registrygrid.__file__).parent
STORAGE = PACKAGE / "storage"


def _outside_storage() -> list[Path]:
    return [p for p in sorted(PACKAGE.rglob("*.py")) if STORAGE not in p.parents]


def _reaches_into_lmdb(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name.split(".")[0] == "lmdb"]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "lmdb":
            found.append(f"from {node.module} import ...")
        elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute) and node.value.attr == "db":
            found.append(f"{ast.unparse(node)} (a sub-database by name)")
        elif isinstance(node, ast.Attribute) and node.attr in ("iter_prefix", "env"):
            found.append(f"{ast.unparse(node)}")
    return found


def test_only_storage_touches_lmdb_its_sub_databases_and_key_layouts() -> None:
    offenders = {}
    for path in _outside_storage():
        found = _reaches_into_lmdb(ast.parse(path.read_text(), str(path)))
        if found:
            offenders[str(path.relative_to(PACKAGE))] = found
    assert offenders == {}


def test_the_check_sees_each_way_of_reaching_in() -> None:
    code = "import lmdb\nfrom lmdb import Environment\nstore.db['records']\nstore.iter_prefix(txn, 'x', b'')\n"
    assert len(_reaches_into_lmdb(ast.parse(code))) == 4
