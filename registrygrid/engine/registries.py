"""Registry descriptors: which kinds a registry holds and who may write it.

Built-in registries are described in code (``schemas.BUILTIN_REGISTRIES``);
every other registry is a record of kind ``registry`` in ``grid.registries``
whose id is the registry's name, so descriptors are signed, versioned and
replicated like any record: the registry of registries is a registry.

A descriptor may name ``limits`` (schema: ``schemas/builtin/registry.v1.json``):
``max_record_bytes``, the most its records' fields may take packed (at most,
and by default, the global ``protocol.limits.MAX_RECORD_BYTES``), and
``max_changes_per_second_per_org``, how fast one org's changes are taken in
from peers (none by default: the org budget of ``protocol/guard.py`` applies).
The node's guard enforces both on changes from peers (docs/federation.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from registrygrid.crdt.conflict_policy import DEFAULT_ROLE_ORDER, ConflictPolicy
from registrygrid.errors import PolicyDenied, RegistryError, UnknownRegistry, ValidationError
from registrygrid.protocol import limits, registry_record
from registrygrid.schemas import BUILTIN_REGISTRIES, SchemaCatalog

REGISTRY_OF_REGISTRIES = "grid.registries"
KINDS_REGISTRY = "grid.kinds"

WRITE_POLICIES = ("open", "owner", "members", "roles")
# The highest per-org rate a descriptor may name (registry.v1.json says the
# same): above the engine's whole ingest (~2,500 changes/s measured) a limit
# means nothing, and 100,000 leaves room for much faster machines.
MAX_CHANGES_PER_SECOND_PER_ORG = 100_000


@dataclass(frozen=True)
class RegistryDescriptor:
    name: str
    kinds: tuple[str, ...]
    owner: str | None  # did:key; None for built-ins (anyone may write them)
    write_policy: str = "open"
    conflict_policy: Any = "last-writer-wins"  # as declared: a rule name or an object
    replication: str = "federation"
    description: str = ""
    builtin: bool = False
    max_record_bytes: int = limits.MAX_RECORD_BYTES
    max_changes_per_second_per_org: float | None = None
    readers: tuple[str, ...] = ()  # orgs besides the owner that may read a private registry
    write_roles: tuple[str, ...] = ()  # roles that may create under write_policy "roles" (trust/access.py)
    conflict_rules: ConflictPolicy = field(default_factory=ConflictPolicy)  # conflict_policy, read (crdt/conflict_policy.py)
    deleted: bool = False  # its descriptor record is deleted: no local writes; remote ones still land (lookup)
    changed_hlc: tuple[int, int] = (0, 0)  # the clock of the descriptor's latest change (EngineCore._descriptor_at)

    @property
    def private(self) -> bool:
        return self.replication == "private"

    def readable_by(self, org: str | None) -> bool:
        """May nodes of ``org`` be sent this registry's records? Anyone for a
        shared registry; the owner org and the named readers for a private
        one; nobody for a local one (it never leaves this node)."""
        if self.replication == "local":
            return False
        if not self.private:
            return True
        return org is not None and (org == self.owner or org in self.readers)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kinds": list(self.kinds),
            "owner": self.owner,
            "write_policy": self.write_policy,
            "conflict_policy": self.conflict_policy,
            "replication": self.replication,
            "description": self.description,
            "builtin": self.builtin,
            "readers": list(self.readers),
            "limits": {"max_record_bytes": self.max_record_bytes,
                       "max_changes_per_second_per_org": self.max_changes_per_second_per_org},
        }


# The built-in registries' namespace: no registry of users' is created in it.
RESERVED_PREFIX = "grid."

BUILTINS: dict[str, RegistryDescriptor] = {
    r.name: RegistryDescriptor(name=r.name, kinds=tuple(r.kinds), owner=None, description=r.description,
                               builtin=True)
    for r in BUILTIN_REGISTRIES
}


def descriptor_from_record(record: Mapping[str, Any]) -> RegistryDescriptor:
    fields = record["fields"]
    replication = fields.get("replication") or {}
    return RegistryDescriptor(
        name=record["id"],
        kinds=tuple(fields.get("kinds") or ()),
        owner=record["owner"],
        write_policy=fields.get("write_policy", "open"),
        conflict_policy=fields.get("conflict_policy", "last-writer-wins"),
        conflict_rules=_conflict_rules(fields.get("conflict_policy")),
        replication=replication.get("scope", "federation") if isinstance(replication, Mapping) else "federation",
        readers=tuple(replication.get("readers") or ()) if isinstance(replication, Mapping) else (),
        write_roles=tuple(r for r in fields.get("write_roles") or () if isinstance(r, str)),
        description=fields.get("description", ""),
        deleted=bool(record.get("deleted")),
        changed_hlc=tuple(record.get("updated_hlc") or (0, 0)),  # type: ignore[arg-type]
        **_limits(fields.get("limits")),
    )


def _conflict_rules(declared: Any) -> ConflictPolicy:
    """The descriptor's conflict policy; checked on every write of the
    descriptor, read defensively all the same (a stored descriptor that no
    longer reads settles by the default rule, never fails a read)."""
    try:
        return ConflictPolicy.parse(declared)
    except RegistryError:
        return ConflictPolicy()


def _limits(given: Any) -> dict[str, Any]:
    """A descriptor's ``limits``, as checked by its schema on every write;
    read defensively all the same (a registry never raises the global cap)."""
    out: dict[str, Any] = {}
    if not isinstance(given, Mapping):
        return out
    size = given.get("max_record_bytes")
    if isinstance(size, int) and not isinstance(size, bool) and size >= 1:
        out["max_record_bytes"] = min(size, limits.MAX_RECORD_BYTES)
    rate = given.get("max_changes_per_second_per_org")
    if isinstance(rate, (int, float)) and not isinstance(rate, bool) and 0 < rate <= MAX_CHANGES_PER_SECOND_PER_ORG:
        out["max_changes_per_second_per_org"] = float(rate)
    return out


def check_descriptor_change(name: str, before: Mapping[str, Any], after: Mapping[str, Any]) -> None:
    """Rules of a local change to a registry's existing descriptor (an
    update, or a create that brings a deleted one back).

    ``immutable`` shows the value a record was created with, so a field made
    immutable later would show every existing record's create value again,
    undoing the updates made since: refused, naming the access policy that
    freezes a field from now on instead (docs/trust.md, in force from its
    creation). Remote changes are not refused for it (a rule must judge the
    same on every node, whatever records each holds), so the rule below
    holds between honest nodes."""
    was, now = _conflict_rules(before.get("conflict_policy")), ConflictPolicy.parse(after.get("conflict_policy"))
    added = []
    for kind in sorted({*(before.get("kinds") or ()), *(after.get("kinds") or ())}):
        added += [f"{kind}.{field_name}" for field_name in now.immutable_fields(kind).added_since(
            was.immutable_fields(kind))]
    if added:
        shown = ", ".join("every field of " + a[:-2] if a.endswith(".*") else a for a in added)
        raise ValidationError(
            f"{name}: `immutable` shows the value a record was created with, so it is set when a registry is "
            f"created: making {shown} immutable now would undo every update of it made since. To stop changes "
            "of a field from now on, forbid them with an access policy in grid.policies (in force from its "
            "creation; docs/trust.md, \"Access policies\")",
            details=[{"path": "/conflict_policy", "message": f"immutable added to {added}"}])


def check_new_descriptor(record_id: str, fields: Mapping[str, Any], catalog: SchemaCatalog, *,
                         owner: str | None) -> None:
    """Rules a registry descriptor must meet beyond its JSON Schema, for a
    local write; ``owner``: the registry's owner org, whose key must have
    signed a transfer."""
    check_descriptor_rules(record_id, fields, owner=owner)
    for kind in fields.get("kinds") or []:
        catalog.get(kind)  # UnknownKind names the known ones


def descriptor_refusal(record_id: str, state: Mapping[str, Any]) -> PolicyDenied | None:
    """Why a descriptor a peer signed (``state``: the record its change
    made) does not count, or None. A refusal, not a rejection: the change
    is kept as evidence and its author's chain goes on (a node of an older
    version may have let its own user make it)."""
    try:
        check_descriptor_rules(record_id, state.get("fields") or {}, owner=state.get("owner"))
    except ValidationError as exc:
        return PolicyDenied(f"{REGISTRY_OF_REGISTRIES}/{record_id}: {exc.message}", details=exc.details)
    return None


def check_descriptor_rules(record_id: str, fields: Mapping[str, Any], *, owner: str | None) -> None:
    """The rules of a descriptor that read nothing but the descriptor, so
    every node judges a remote one alike whatever else it holds (a kind it
    lists may not have arrived yet: its records wait for it)."""
    if record_id in BUILTINS:
        raise ValidationError(f"{record_id} is a built-in registry")
    if record_id.startswith(RESERVED_PREFIX):
        # A later version's built-in of that name would meet a user's
        # registry of it on every node that holds one.
        raise ValidationError(f"registry names starting with {RESERVED_PREFIX!r} are kept for the built-in "
                              f"registries; name it after your org (acme.{record_id[len(RESERVED_PREFIX):]})",
                              details=[{"path": "/name", "message": "reserved prefix"}])
    if fields.get("name", record_id) != record_id:
        raise ValidationError(f"descriptor name {fields.get('name')!r} must equal its record id {record_id!r}")
    policy = ConflictPolicy.parse(fields.get("conflict_policy"))  # names the bad part the schema let through
    # Rules of a descriptor written from now on; a stored one that breaks
    # them is still read as it was (_conflict_rules).
    if not policy.roles:
        # role-priority would rank every writer alike: silently last-writer-wins
        raise ValidationError("/conflict_policy/roles must name at least one role, highest first "
                              f"(leave it out for {list(DEFAULT_ROLE_ORDER)})",
                              details=[{"path": "/conflict_policy/roles", "message": "empty"}])
    held = set(fields.get("kinds") or ())
    for kind in sorted(set(policy.kinds) - held):
        # Rules for a kind the registry does not hold would be ignored for
        # good: most often a misspelt kind, whose records then settle by
        # the defaults without a word.
        raise ValidationError(f"/conflict_policy/kinds/{kind}: the registry holds no kind {kind!r} "
                              f"(its kinds: {sorted(held)}); add the kind to kinds or drop its rules",
                              details=[{"path": f"/conflict_policy/kinds/{kind}", "message": "not one of kinds"}])
    if "transfer" in fields:
        if owner is None:
            raise ValidationError("only an org's registry can be transferred", details=[{"path": "/transfer"}])
        registry_record.transfer_field(record_id, owner, fields["transfer"])
    if not fields.get("kinds"):
        raise ValidationError("a registry must hold at least one kind", details=[{"path": "/kinds", "message": "empty"}])


def lookup(store: Any, txn: Any, name: str, *, include_deleted: bool = False) -> RegistryDescriptor:
    """A registry's descriptor from a read transaction, without touching any
    writer cache (readers on other threads use this). A deleted registry is
    unknown to readers and local writers; ``include_deleted`` gives its last
    descriptor (``deleted`` set), for what must go on regardless: the changes
    its members made before they saw the delete still land and replicate, so
    every node holds the same registry should it come back (a delete is a
    tombstone, as for any record), and a private one stays private."""
    from registrygrid.storage import records

    builtin = BUILTINS.get(name)
    if builtin is not None:
        return builtin
    record = records.get_record(store, txn, REGISTRY_OF_REGISTRIES, name)
    if record is None or (record["deleted"] and not include_deleted):
        raise unknown_registry(name)
    return descriptor_from_record(record)


def is_deleted(store: Any, txn: Any, name: str) -> bool:
    """Whether ``name``'s descriptor is held here deleted: its records are
    unknown to readers as it is (``lookup``). One read, no parse of the
    descriptor: a record read asks it."""
    from registrygrid.storage import records

    if name in BUILTINS:
        return False
    record = records.get_record(store, txn, REGISTRY_OF_REGISTRIES, name)
    return record is not None and bool(record["deleted"])


def unknown_registry(name: str) -> UnknownRegistry:
    return UnknownRegistry(
        f"no registry named {name!r}; create it with `rgrid registry create {name} --kind KIND` "
        f"or list them with `rgrid registry list`"
    )
