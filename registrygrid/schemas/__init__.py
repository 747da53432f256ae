"""Record kinds: the built-in kinds' versioned JSON Schemas, user kinds, validation, migration.

A record's ``fields`` are validated against its kind's Draft 2020-12 JSON
Schema; everything else about a record (kind, schema version, owner, tags,
links) lives outside ``fields``. The built-in schemas are package data in
``builtin/<kind>.v<N>.json``.

This package sits below storage, crdt and node: it imports nothing of ours but
:mod:`registrygrid.errors`, and reads nothing but its own package data.
"""

from .catalog import (
    BUILTIN_REGISTRIES,
    FORMAT_CHECKER,
    BuiltinRegistry,
    KindSchema,
    SchemaCatalog,
)
from .migrations import MigrationStep, Migrations

__all__ = [
    "BUILTIN_REGISTRIES",
    "FORMAT_CHECKER",
    "BuiltinRegistry",
    "KindSchema",
    "MigrationStep",
    "Migrations",
    "SchemaCatalog",
]
