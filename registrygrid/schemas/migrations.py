"""Migrations between the schema versions of a kind.

A migration step is a pure function from a record's ``fields`` at one version
to its ``fields`` at an adjacent version. A step never mutates its argument,
and it may raise :class:`~registrygrid.errors.ValidationError` when a record
cannot be carried across without losing data the step does not own. A step
does not validate: the caller checks the result against the target schema,
the same way it checks any other write.

:class:`Migrations` holds the steps of every kind as a graph (kind ->
from-version -> to-version) and chains them along the shortest path, so
registering 1->2 and 2->3 is enough to migrate 1->3, and the down steps 3->2
and 2->1 give 3->1.

Built-in steps
--------------
``asset`` v1 -> v2 (see ``builtin/asset.v2.json``):

* ``version: {"version": "1.4.0", "tag": "stable"}`` becomes
  ``version: "1.4.0"`` and ``release_tag: "stable"``;
* ``public_url: "https://..."`` becomes ``urls: ["https://..."]`` (v2 lists the
  primary URL first, then mirrors).

``asset`` v2 -> v1 is the inverse. It is lossless except for mirrors: v1 has
room for one URL, so ``urls[1:]`` are dropped. v1 -> v2 -> v1 gives back the
same record for every valid v1 record.

Both steps refuse (``ValidationError``) a record that already carries, as an
unknown extra field, a name the other version defines (for example a v1
record with a stray ``urls``): the step would have to overwrite or drop it.
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from registrygrid.errors import ValidationError

MigrationStep = Callable[[dict[str, Any]], dict[str, Any]]
"""Maps the ``fields`` of one version to those of an adjacent one; pure."""


class Migrations:
    """The migration steps of every kind, chained on demand."""

    def __init__(self) -> None:
        # kind -> from_version -> to_version -> step
        self._steps: dict[str, dict[int, dict[int, MigrationStep]]] = {}

    def register(self, kind: str, from_version: int, to_version: int, step: MigrationStep) -> None:
        """Add the step ``from_version -> to_version`` of ``kind``.

        Registering the same function again is a no-op; replacing a step
        with a different one is refused, so a plugin cannot silently change
        how another's records migrate.
        """
        for v in (from_version, to_version):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValidationError(f"schema versions are integers >= 1, got {v!r}")
        if from_version == to_version:
            raise ValidationError(f"a migration step must change the version (got {from_version} -> {to_version})")
        by_from = self._steps.setdefault(kind, {}).setdefault(from_version, {})
        existing = by_from.get(to_version)
        if existing is not None and existing is not step:
            raise ValidationError(
                f"a migration step {kind} v{from_version} -> v{to_version} is already registered"
            )
        by_from[to_version] = step

    def path(self, kind: str, from_version: int, to_version: int) -> list[tuple[int, int, MigrationStep]]:
        """The steps from one version to another (shortest chain); empty if equal.

        Raises ValidationError when no chain of registered steps connects them.
        """
        if from_version == to_version:
            return []
        graph = self._steps.get(kind, {})
        # Breadth-first search: versions are few, and BFS gives the fewest
        # steps (each step may lose a little, so fewer is better).
        came_from: dict[int, tuple[int, MigrationStep]] = {}
        seen = {from_version}
        queue = deque([from_version])
        while queue:
            current = queue.popleft()
            for nxt in sorted(graph.get(current, {})):
                if nxt in seen:
                    continue
                seen.add(nxt)
                came_from[nxt] = (current, graph[current][nxt])
                if nxt == to_version:
                    chain: list[tuple[int, int, MigrationStep]] = []
                    v = to_version
                    while v != from_version:
                        prev, step = came_from[v]
                        chain.append((prev, v, step))
                        v = prev
                    chain.reverse()
                    return chain
                queue.append(nxt)
        known = sorted(
            f"v{a}->v{b}" for a, targets in graph.items() for b in targets
        )
        raise ValidationError(
            f"no migration path for kind {kind!r} from v{from_version} to v{to_version}"
            f" (registered steps: {', '.join(known) or 'none'})",
            details={"kind": kind, "from_version": from_version, "to_version": to_version,
                     "steps": known},
        )

    def migrate(self, kind: str, fields: Mapping[str, Any], from_version: int, to_version: int) -> dict[str, Any]:
        """Carry ``fields`` from one version to another; the input is never mutated."""
        if not isinstance(fields, Mapping):
            raise ValidationError(f"fields must be a JSON object, got {type(fields).__name__}")
        chain = self.path(kind, from_version, to_version)
        # One deep copy up front: the steps are written to be pure, but a
        # step registered by a plugin might not be, and the caller's record
        # must come out untouched whatever the steps do.
        result: dict[str, Any] = copy.deepcopy(dict(fields))
        for _, _, step in chain:
            result = step(result)
        return result


# ---------------------------------------------------------------- asset


def _refuse_stray(fields: Mapping[str, Any], names: tuple[str, ...], target: str) -> None:
    stray = [n for n in names if n in fields]
    if stray:
        raise ValidationError(
            f"cannot migrate asset to {target}: the record already has extra field(s) "
            f"{', '.join(stray)} that {target} defines; rename them first",
            details={"fields": stray},
        )


def asset_v1_to_v2(fields: dict[str, Any]) -> dict[str, Any]:
    """``version: {version, tag}`` -> ``version`` + ``release_tag``; ``public_url`` -> ``urls``."""
    _refuse_stray(fields, ("release_tag", "urls"), "v2")
    out = {k: v for k, v in fields.items() if k not in ("version", "public_url")}
    if "version" in fields:
        version = fields["version"]
        if not isinstance(version, Mapping) or "version" not in version:
            raise ValidationError("asset v1 'version' must be an object with a 'version' string")
        out["version"] = version["version"]
        if "tag" in version:
            out["release_tag"] = version["tag"]
    if "public_url" in fields:
        out["urls"] = [fields["public_url"]]
    return out


def asset_v2_to_v1(fields: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`asset_v1_to_v2`; mirrors beyond ``urls[0]`` are dropped."""
    _refuse_stray(fields, ("public_url",), "v1")
    out = {k: v for k, v in fields.items() if k not in ("version", "release_tag", "urls")}
    if "version" in fields:
        version: dict[str, Any] = {"version": fields["version"]}
        if "release_tag" in fields:
            version["tag"] = fields["release_tag"]
        out["version"] = version
    elif "release_tag" in fields:
        # v1 keeps the tag inside the version object, which needs a version.
        raise ValidationError("asset v2 'release_tag' without 'version' has no place in v1")
    if "urls" in fields:
        urls = fields["urls"]
        if not isinstance(urls, list):
            raise ValidationError("asset v2 'urls' must be an array")
        if urls:
            out["public_url"] = urls[0]
    return out


def builtin_migrations() -> Migrations:
    """A fresh :class:`Migrations` holding the steps of the built-in kinds."""
    migrations = Migrations()
    migrations.register("asset", 1, 2, asset_v1_to_v2)
    migrations.register("asset", 2, 1, asset_v2_to_v1)
    return migrations
