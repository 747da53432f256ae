"""User kinds as the grid settles them: the catalog follows grid.kinds.

A user kind version is defined by its record in ``grid.kinds``
(``NAME.vVERSION``). Two creates of one kind version can race: two orgs
that both publish ``model-card`` v1, or two nodes of one org, before they
meet. Every node ends with the same record (the earliest create's where
two orgs raced: engine/rebuild.py; the one the conflict policy picks where
one org's nodes did), and after every commit or rebuild of a kind record
its catalog takes the definition that record shows.

Whether a record's change is valid then depends on that definition, so a
change of a user kind that fails its schema is refused and kept in its
author's chain as evidence (engine/ingest.py), like a change trust refuses,
rather than dropped: its author's later changes still follow their chain,
and when a kind's definition is replaced, every record of that kind
version is rebuilt with each change judged anew, schema included
(engine/rebuild.py). A record one definition let in is then kept as
evidence, and one it refused may count: every node holds the same records
whatever order the creates and the records reached it in.

A remote change of a user kind version this node has no definition of yet
waits for it (``_awaits_kind``; parked under the kind's grid.kinds record,
released when that commits), as a change waits for a missing dependency.

Built-in kinds ship with the software and never change, so a change that
fails one is malformed input, rejected as before.
"""

from __future__ import annotations

from typing import Any

from registrygrid.engine import registries as regs
from registrygrid.engine.batch import Batch
from registrygrid.engine.core import EngineCore
from registrygrid.errors import RegistryError, UnknownKind
from registrygrid.protocol.envelope import Draft, Envelope
from registrygrid.storage import records
from registrygrid.storage.store import Txn


class Kinds(EngineCore):
    """The engine's user kinds (mixed into Engine)."""

    def _is_user_kind(self, kind: str, version: Any) -> bool:
        try:
            return not self.catalog.get(kind, version).builtin
        except UnknownKind:
            return False

    def _awaits_kind(self, kind: str, version: int) -> bool:
        """Whether a remote change must wait for its kind's definition: a
        kind version the catalog lacks whose name no built-in kind has. A
        built-in kind's version this software lacks never arrives as a
        record: such a change is rejected (sync offers it again after an
        upgrade)."""
        try:
            self.catalog.get(kind, version)
            return False
        except UnknownKind:
            try:
                return not any(self.catalog.get(kind, v).builtin for v in self.catalog.versions(kind))
            except UnknownKind:
                return True

    def _after_kind_record(self, txn: Txn, batch: Batch, record: dict[str, Any] | None,
                           cause: Envelope | Draft, origin: str) -> None:
        """A grid.kinds record was committed or rebuilt: the catalog takes
        the definition it shows; where that replaces another definition, the
        records of that kind version are judged again."""
        if record is None or record["deleted"]:
            return
        try:
            kind = self._kind_of(record["id"], record["fields"])
            try:
                before = self.catalog.get(kind.name, kind.version)
            except UnknownKind:
                before = None
            changed = self.catalog.register(kind, replace=True)
        except RegistryError:
            self.metrics["kinds.unloadable"] += 1
            return
        if changed and before is not None:
            self.metrics["kinds.redefined"] += 1
            self._rebuild_kind(txn, batch, kind.name, kind.version, cause, origin)

    def _rebuild_kind(self, txn: Txn, batch: Batch, name: str, version: int, cause: Envelope | Draft,
                      origin: str) -> None:
        """Rebuild every record of ``name`` v``version``, and every record
        holding refused changes, in each registry that lists the kind."""
        holders = [r["id"] for r in records.iter_records(self.store, txn, registry=regs.REGISTRY_OF_REGISTRIES)
                   if name in (r["fields"].get("kinds") or ())]
        for registry in sorted(holders):
            self._rebuild_records(txn, batch, registry, lambda record: record["schema"] == version,  # type: ignore[attr-defined]
                                  cause, origin, kind=name)
