"""A registry's conflict policy: which rule settles concurrent writes of a field.

Declared in the registry descriptor (``conflict_policy``, checked by
``schemas/builtin/registry.v1.json``), either one rule for the whole
registry or an object::

    {"default": "last-writer-wins",
     "fields": {"pricing": "owner-wins", "downloads": "max",
                "capabilities": "union", "license": "immutable",
                "description": "manual"},
     "kinds": {"model": {"default": "role-priority", "fields": {...}}},
     "delete": "delete-wins",
     "roles": ["federation-admin", "admin", "writer", "node", "member"]}

A field's rule is the first of: its kind's ``fields`` entry, the
registry's ``fields`` entry, its kind's ``default``, the registry's
``default``. Rules name top-level fields; a rule covers everything under
its field. The record's own attributes have fixed rules: tags are a set
(``union``), ``deleted`` follows ``delete``, and the rest (schema, links,
owner, created) follow the registry's default when it chooses a value
(else last-writer-wins).

The rules (crdt/resolver.py applies them):

  last-writer-wins  the greatest hybrid logical clock, then change ID
                    (the default; ``crdt``, the descriptor's old default,
                    names it too)
  owner-wins        a write by the record's owner org, else as above
  role-priority     the author's highest role in ``roles`` (the roles the
                    trust layer verified at the change's time), then LWW
  max / min         the greatest / least number
  union             lists merged (the latest's order, then the others'
                    new items), a value over a removal
  immutable         the value the record was created with; local updates
                    that change the field are refused
  manual            the last writer's value for now, and a dispute that an
                    authorized party resolves with a signed resolution

``delete``: ``delete-wins`` (default: a delete that did not see an update
still deletes) or ``update-wins`` (an update the delete did not see keeps
the record).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from registrygrid.errors import ValidationError

RULES = ("last-writer-wins", "owner-wins", "role-priority", "max", "min", "union", "immutable", "manual")
# "crdt" was the descriptor's default before conflict policies were read;
# it meant "let the CRDT pick", which is now last-writer-wins by clock.
ALIASES = {"crdt": "last-writer-wins"}
NAMES = (*RULES, *ALIASES)
VALUE_RULES = ("last-writer-wins", "owner-wins", "role-priority", "manual")  # rules that fit any value
DELETE_RULES = ("delete-wins", "update-wins")
# Federation admins above org admins above writers and nodes above plain
# members: the order of authority the trust layer grants (docs/trust.md).
DEFAULT_ROLE_ORDER = ("federation-admin", "admin", "writer", "node", "member")


@dataclass(frozen=True)
class KindRules:
    default: str | None = None
    fields: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ConflictPolicy:
    default: str = "last-writer-wins"
    fields: Mapping[str, str] = field(default_factory=dict)
    kinds: Mapping[str, KindRules] = field(default_factory=dict)
    delete: str = "delete-wins"
    roles: tuple[str, ...] = DEFAULT_ROLE_ORDER

    @classmethod
    def parse(cls, declared: Any) -> ConflictPolicy:
        """The policy a descriptor declares (a rule name or an object); a
        ValidationError names the bad part."""
        if declared is None:
            return cls()
        if isinstance(declared, str):
            return cls(default=_rule(declared, "/conflict_policy"))
        if not isinstance(declared, Mapping):
            raise ValidationError("conflict_policy must be a rule name or an object",
                                  details=[{"path": "/conflict_policy", "message": "not a string or object"}])
        unknown = set(declared) - {"default", "fields", "kinds", "delete", "roles"}
        if unknown:
            raise ValidationError(f"conflict_policy has unknown members {sorted(unknown)}",
                                  details=[{"path": f"/conflict_policy/{min(unknown)}", "message": "unknown"}])
        delete = declared.get("delete", "delete-wins")
        if delete not in DELETE_RULES:
            raise ValidationError(f"conflict_policy.delete must be one of {list(DELETE_RULES)}",
                                  details=[{"path": "/conflict_policy/delete", "message": f"not {list(DELETE_RULES)}"}])
        roles = declared.get("roles", DEFAULT_ROLE_ORDER)
        if not isinstance(roles, (list, tuple)) or not all(isinstance(r, str) and r for r in roles):
            raise ValidationError("conflict_policy.roles must be a list of role names",
                                  details=[{"path": "/conflict_policy/roles", "message": "not a list of names"}])
        kinds = declared.get("kinds") or {}
        if not isinstance(kinds, Mapping):
            raise ValidationError("conflict_policy.kinds must map kind names to rules",
                                  details=[{"path": "/conflict_policy/kinds", "message": "not an object"}])
        return cls(
            default=_rule(declared.get("default", "last-writer-wins"), "/conflict_policy/default"),
            fields=_field_rules(declared.get("fields"), "/conflict_policy/fields"),
            kinds={str(k): KindRules(
                default=_rule(v.get("default"), f"/conflict_policy/kinds/{k}/default") if v.get("default") else None,
                fields=_field_rules(v.get("fields"), f"/conflict_policy/kinds/{k}/fields"))
                for k, v in _objects(kinds, "/conflict_policy/kinds")},
            delete=delete,
            roles=tuple(roles),
        )

    def rule_for(self, kind: str, path: tuple[str, ...]) -> str:
        """The rule that settles a conflict at ``path`` of a ``kind`` record."""
        top = path[0]
        if top == "fields" and len(path) > 1:
            rules = self.kinds.get(kind)
            name = path[1]
            if rules is not None and name in rules.fields:
                return rules.fields[name]
            if name in self.fields:
                return self.fields[name]
            if rules is not None and rules.default:
                return rules.default
            return self.default
        if top == "tags":
            return "union"
        if top == "deleted":
            return self.delete
        return self.default if self.default in VALUE_RULES else "last-writer-wins"

    @property
    def reads_trust(self) -> bool:
        """Whether a rule picks by who wrote (verified roles, the owner org):
        then what the trust state learns can change its pick."""
        rules = {self.default, *self.fields.values()}
        for kind in self.kinds.values():
            rules |= {kind.default, *kind.fields.values()}
        return bool(rules & {"role-priority", "owner-wins"})

    def immutable_fields(self, kind: str) -> ImmutableFields:
        """Top-level fields a ``kind`` record may not change after its
        create: those whose rule (``rule_for``) is ``immutable``. A default
        of ``immutable`` makes every field so but those named with another
        rule."""
        rules = self.kinds.get(kind)
        named = {**self.fields, **(rules.fields if rules else {})}  # the kind's own entry first, as rule_for
        default = (rules.default if rules and rules.default else None) or self.default
        return ImmutableFields(every=default == "immutable",
                               named=frozenset(n for n, r in named.items() if r == "immutable"),
                               exempt=frozenset(n for n, r in named.items() if r != "immutable"))

    def to_dict(self) -> dict[str, Any]:
        return {"default": self.default, "fields": dict(self.fields),
                "kinds": {k: {"default": v.default, "fields": dict(v.fields)} for k, v in self.kinds.items()},
                "delete": self.delete, "roles": list(self.roles)}


@dataclass(frozen=True)
class ImmutableFields:
    """Which top-level fields are immutable: with ``every``, all but
    ``exempt``; else exactly ``named``. ``name in it`` asks of one field."""

    every: bool = False
    named: frozenset[str] = frozenset()
    exempt: frozenset[str] = frozenset()

    def __contains__(self, name: object) -> bool:
        return name not in self.exempt if self.every else name in self.named

    def __bool__(self) -> bool:
        return self.every or bool(self.named)

    def added_since(self, before: ImmutableFields) -> list[str]:
        """The fields immutable here but not in ``before`` (``*``: every field
        but the exempt ones), for a person to read."""
        if self.every and not before.every:
            return ["*"]
        if self.every:
            return sorted(before.exempt - self.exempt)
        return sorted(n for n in self.named if n not in before)


def _rule(name: Any, where: str) -> str:
    if name not in NAMES:
        raise ValidationError(f"unknown conflict rule {name!r}; the rules are {list(RULES)}",
                              details=[{"path": where, "message": f"not one of {list(RULES)}"}])
    return ALIASES.get(name, name)


def _objects(given: Mapping[str, Any], where: str) -> list[tuple[str, Mapping[str, Any]]]:
    out = []
    for key, value in given.items():
        if not isinstance(value, Mapping):
            raise ValidationError(f"{where}/{key} must be an object",
                                  details=[{"path": f"{where}/{key}", "message": "not an object"}])
        out.append((key, value))
    return out


def _field_rules(given: Any, where: str) -> dict[str, str]:
    if given is None:
        return {}
    if not isinstance(given, Mapping):
        raise ValidationError(f"{where} must map field names to rules",
                              details=[{"path": where, "message": "not an object"}])
    return {str(name): _rule(rule, f"{where}/{name}") for name, rule in given.items()}
