"""Access-policy engines for issue 14: Cedar (cedarpy), Casbin (pycasbin) and hand-written rules.

One rule set, written three ways, judged on the same requests, beside the floor:
  - the rules (docs/policy-engines.md): per registry a write policy (``open``:
    writers create and modify their own org's records; ``members``: the same,
    for the listed member orgs and the registry owner; ``owner``: the registry
    owner org only; ``roles``: a minimum role per action, on any record,
    creates still of one's own org), fields only the record's owner org may
    change (``pricing``), the writer's org jurisdiction, orgs denied outright;
    deny overrides permit; role priority admin > writer > reader; reads open;
    ``admin`` for the registry owner org's admins;
  - the floor: a bare dict lookup of the precomputed verdict (what any
    evaluation costs at least in Python: a call, a hash, a timer read);
  - "raw": a hand-written reference evaluator of the same rules (``Rules``),
    the bar an engine must come near;
  - each engine's decision latency p50/p99 for 3 policy-set sizes (every
    engine decides from the same inputs: key, action, registry, record owner,
    changed fields; its own request building is timed), the batch API where
    there is one, policy (re)load time, and whether the verdicts and the
    explanations (the deciding rule id) agree with the reference;
  - hostile policies (a peer publishes the policy record), each in a child
    process killed after 10 s: huge, many rules, deep nesting, regex-like
    patterns, string amplification, a clock, scope injection; and whether
    the determining-policy list is identical across processes.

    python -m benchmarks.bench_policy [--quick] [--json] [--no-hostile]

Issue 14's budget: every trust check together <= 10% of ingest (~300 us per
change today), so ~20-30 us per change; this prints each engine beside it.
A row reads "not installed" when its engine's package is missing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata

from benchmarks.limits import Figure

try:
    import cedarpy
except ImportError:  # the benchmark still runs; its rows say "not installed"
    cedarpy = None
try:
    import casbin
    from casbin.model import FastPolicy, Model, fast_policy_filter
except ImportError:
    casbin = None

ACTIONS = ("read", "create", "update", "delete", "admin")
WRITES = ("create", "update", "delete")
RANK = {"reader": 1, "writer": 2, "admin": 3}  # role priority: a higher role includes the lower ones
JURISDICTIONS = ("EU", "US", "CH", "JP", "SG")
FIELDS = ("description", "pricing", "sla", "tags", "endpoint")
SIZES = (20, 200, 1000)  # rules (Cedar policies) in the set; the issue names 20-200, 1000 shows the slope
BATCH = 500  # decisions per batch call: a sync/ingest batch is 100s-1000s of changes
HOSTILE_TIMEOUT_S = 10.0  # the brief: a hang must not stall the benchmark
HOSTILE_BASE = 200  # the realistic set a hostile record is added to

Request = tuple[str, str, str, str, frozenset]  # key, action, registry, record owner org, changed fields


def _did(kind: str, i: int) -> str:
    return "did:key:z6Mk" + hashlib.sha256(f"{kind}{i}".encode()).hexdigest()[:44]


# ------------------------------------------------------------------ world


@dataclass
class World:
    """Orgs, node keys and one policy record per registry, as grid.policies would hold them."""

    orgs: dict[str, str]  # org did -> jurisdiction
    keys: dict[str, tuple[str, tuple[str, ...]]]  # key did -> (org, roles)
    policies: list[dict]  # the policy records
    requests: list[Request] = field(default_factory=list)


def make_world(rules: int, *, seed: int = 14, n_requests: int = 1000) -> World:
    rng = random.Random(seed)
    orgs = {_did("org", i): rng.choice(JURISDICTIONS) for i in range(24)}
    org_ids = list(orgs)
    keys: dict[str, tuple[str, tuple[str, ...]]] = {}
    for i, org in enumerate(org_ids):  # one admin, one writer, one reader, one {reader, admin} per org
        for j, roles in enumerate((("admin",), ("writer",), ("reader",), ("reader", "admin"))):
            keys[_did("key", i * 4 + j)] = (org, roles)
    policies: list[dict] = []
    count = 2  # grid.read and grid.admin
    while count < rules:
        i = len(policies)
        registry = f"acme.reg{i:04d}"
        write = rng.choices(("open", "members", "owner", "roles"), (4, 2, 2, 2))[0]
        pol = {"id": f"pol-{registry}", "registry": registry, "owner": rng.choice(org_ids), "write": write,
               "members": sorted(rng.sample(org_ids, 5)) if write == "members" else [],
               "roles": {"create": "writer", "update": rng.choice(("writer", "admin")), "delete": "admin"}
               if write == "roles" else {},
               "owner_fields": ["pricing"] + (["sla"] if rng.random() < 0.3 else []) if rng.random() < 0.6 else [],
               "jurisdictions": sorted(rng.sample(JURISDICTIONS, 3)) if rng.random() < 0.3 else None,
               "deny_orgs": [rng.choice(org_ids)] if rng.random() < 0.2 else []}
        policies.append(pol)
        count += len(cedar_policies_of(pol))
    world = World(orgs, keys, policies)
    key_ids = list(keys)
    for _ in range(n_requests):
        pol = rng.choice(policies)
        key = rng.choice(key_ids)
        org = keys[key][0]
        action = rng.choices(ACTIONS, (6, 35, 45, 8, 6))[0]
        if action == "create":
            owner = org if rng.random() < 0.92 else rng.choice(org_ids)
        elif action in ("update", "delete"):
            owner = org if rng.random() < 0.5 else rng.choice(org_ids)
        else:
            owner = pol["owner"]
        changed = frozenset(rng.sample(FIELDS, rng.randint(1, 3))) if action == "update" else frozenset()
        world.requests.append((key, action, pol["registry"], owner, changed))
    return world


# ------------------------------------------------- the hand-written reference


@dataclass(frozen=True, slots=True)
class _Compiled:
    id: str
    owner: str
    write: str
    members: frozenset
    min_rank: dict
    owner_fields: frozenset
    jurisdictions: frozenset | None
    deny_orgs: frozenset


class Rules:
    """The rules as plain Python: a dict per registry, deny rules first, then the write policy.

    Deterministic by construction: no clock, no I/O, only the policy records
    and the trust state's answers (a key's org and roles, an org's
    jurisdiction). A decision is O(1) in the number of registries and rules.
    """

    def __init__(self, world: World) -> None:
        self.jurisdiction = dict(world.orgs)
        self.keys = {k: (org, max(RANK[r] for r in roles)) for k, (org, roles) in world.keys.items()}
        self.by_registry = {p["registry"]: self.compile(p) for p in world.policies}

    @staticmethod
    def compile(p: dict) -> _Compiled:
        return _Compiled(p["id"], p["owner"], p["write"], frozenset(p["members"]) | {p["owner"]},
                         {a: RANK[r] for a, r in p["roles"].items()}, frozenset(p["owner_fields"]),
                         None if p["jurisdictions"] is None else frozenset(p["jurisdictions"]),
                         frozenset(p["deny_orgs"]))

    def decide(self, key: str, action: str, registry: str, owner: str, changed: frozenset) -> tuple[bool, str]:
        """(allowed, id of the deciding rule); "default-deny" when no rule permits."""
        subject = self.keys.get(key)
        p = self.by_registry.get(registry)
        if subject is None or p is None:
            return False, "default-deny"
        org, rank = subject
        if action == "read":
            return True, "grid.read"
        if action == "admin":
            return (True, "grid.admin") if org == p.owner and rank >= RANK["admin"] else (False, "default-deny")
        # deny overrides: every forbid is checked before any permit
        if org in p.deny_orgs:
            return False, f"{p.id}.deny-org"
        if p.jurisdictions is not None and self.jurisdiction[org] not in p.jurisdictions:
            return False, f"{p.id}.jurisdiction"
        if action == "update" and owner != org and not p.owner_fields.isdisjoint(changed):
            return False, f"{p.id}.owner-fields"
        if p.write == "roles":
            if rank >= p.min_rank[action] and (action != "create" or owner == org):
                return True, f"{p.id}.{action}"
            return False, "default-deny"
        if owner != org or rank < RANK["writer"]:
            return False, "default-deny"
        if p.write == "owner" and org != p.owner or p.write == "members" and org not in p.members:
            return False, "default-deny"
        return True, f"{p.id}.write"


# ------------------------------------------------------------------ Cedar

CEDAR_SCHEMA = """
entity Role in [Role];
entity Org = { jurisdiction: String };
entity Key in [Role] = { org: Org };
entity Registry = { owner: Org };
type Change = { owner: Org, fields: Set<String> };
action "read", "admin", "create", "update", "delete" appliesTo { principal: [Key], resource: [Registry], context: Change };
"""

CEDAR_GLOBAL = [
    '@id("grid.read")\npermit (principal, action == Action::"read", resource);',
    ('@id("grid.admin")\npermit (principal in Role::"admin", action == Action::"admin", resource)\n'
     '  when { principal.org == resource.owner };'),
]


def _cedar_set(items: Sequence[str], entity: str | None = None) -> str:
    return "[" + ", ".join(f'{entity}::"{x}"' if entity else f'"{x}"' for x in items) + "]"


def cedar_policies_of(p: dict) -> list[str]:
    """One policy record as Cedar policies, each named by @id (the record id + the rule)."""
    reg = f'resource == Registry::"{p["registry"]}"'
    writes = 'action in [Action::"create", Action::"update", Action::"delete"]'
    out = []
    if p["write"] == "roles":
        for action in WRITES:
            own = " when { context.owner == principal.org }" if action == "create" else ""
            out.append(f'@id("{p["id"]}.{action}")\npermit (principal in Role::"{p["roles"][action]}", '
                       f'action == Action::"{action}", {reg}){own};')
    else:
        cond = "context.owner == principal.org"
        if p["write"] == "owner":
            cond += " && principal.org == resource.owner"
        elif p["write"] == "members":
            cond += (f" && (principal.org == resource.owner || "
                     f"{_cedar_set(p['members'], 'Org')}.contains(principal.org))")
        out.append(f'@id("{p["id"]}.write")\npermit (principal in Role::"writer", {writes}, {reg})\n'
                   f'  when {{ {cond} }};')
    if p["deny_orgs"]:
        out.append(f'@id("{p["id"]}.deny-org")\nforbid (principal, {writes}, {reg})\n'
                   f'  when {{ {_cedar_set(p["deny_orgs"], "Org")}.contains(principal.org) }};')
    if p["jurisdictions"] is not None:
        out.append(f'@id("{p["id"]}.jurisdiction")\nforbid (principal, {writes}, {reg})\n'
                   f'  unless {{ {_cedar_set(p["jurisdictions"])}.contains(principal.org.jurisdiction) }};')
    if p["owner_fields"]:
        out.append(f'@id("{p["id"]}.owner-fields")\nforbid (principal, action == Action::"update", {reg})\n'
                   f'  when {{ context.owner != principal.org && '
                   f'context.fields.containsAny({_cedar_set(p["owner_fields"])}) }};')
    return out


def cedar_text(world: World) -> str:
    return "\n\n".join(CEDAR_GLOBAL + [c for p in world.policies for c in cedar_policies_of(p)])


def cedar_json(text: str) -> str:
    """The same policies in Cedar's JSON form (EST), keyed by their @id: the form we would replicate."""
    est = json.loads(cedarpy.policies_to_json_str(text))
    static = {pol["annotations"]["id"]: pol for pol in est["staticPolicies"].values()}
    return json.dumps({"staticPolicies": static, "templates": {}, "templateLinks": []})


def cedar_entities(world: World) -> list[dict]:
    ent: list[dict] = [
        {"uid": {"type": "Role", "id": "admin"}, "attrs": {}, "parents": [{"type": "Role", "id": "writer"}]},
        {"uid": {"type": "Role", "id": "writer"}, "attrs": {}, "parents": [{"type": "Role", "id": "reader"}]},
        {"uid": {"type": "Role", "id": "reader"}, "attrs": {}, "parents": []},
    ]
    ent += [{"uid": {"type": "Org", "id": o}, "attrs": {"jurisdiction": j}, "parents": []} for o, j in world.orgs.items()]
    ent += [{"uid": {"type": "Key", "id": k}, "attrs": {"org": {"__entity": {"type": "Org", "id": org}}},
             "parents": [{"type": "Role", "id": r} for r in roles]} for k, (org, roles) in world.keys.items()]
    ent += [{"uid": {"type": "Registry", "id": p["registry"]},
             "attrs": {"owner": {"__entity": {"type": "Org", "id": p["owner"]}}}, "parents": []}
            for p in world.policies]
    return ent


def cedar_request(key: str, action: str, registry: str, owner: str, changed: frozenset) -> dict:
    # the dict form of the uids: ids are never spliced into Cedar text
    return {"principal": {"type": "Key", "id": key}, "action": {"type": "Action", "id": action},
            "resource": {"type": "Registry", "id": registry},
            "context": {"owner": {"__entity": {"type": "Org", "id": owner}}, "fields": sorted(changed)}}


def _cedar_reason(result) -> str:
    # diagnostics.reasons come in a per-process random order (a Rust HashSet): sort them
    reasons = sorted(result.diagnostics.reasons)
    return reasons[0] if reasons else "default-deny"


class CedarDecider:
    """Every policy in one PolicySet (Cedar evaluates each policy on every request)."""

    def __init__(self, world: World) -> None:
        self.policies = cedarpy.PolicySet.from_json_str(cedar_json(cedar_text(world)))
        self.entities = cedarpy.Entities.from_json_str(json.dumps(cedar_entities(world)))

    def decide(self, *req) -> tuple[bool, str]:
        result = cedarpy.is_authorized(cedar_request(*req), self.policies, self.entities)
        return result.allowed, _cedar_reason(result)

    def decide_batch(self, reqs: Sequence[Request]) -> list[tuple[bool, str]]:
        results = cedarpy.is_authorized_batch([cedar_request(*r) for r in reqs], self.policies, self.entities)
        return [(r.allowed, _cedar_reason(r)) for r in results]


class CedarPerRegistry(CedarDecider):
    """One PolicySet per registry (its record's policies + the 2 global ones): a
    decision evaluates ~5 policies whatever the number of registries."""

    def __init__(self, world: World) -> None:
        self.entities = cedarpy.Entities.from_json_str(json.dumps(cedar_entities(world)))
        glob = "\n".join(CEDAR_GLOBAL)
        self.sets = {p["registry"]: cedarpy.PolicySet.from_json_str(
            cedar_json(glob + "\n" + "\n".join(cedar_policies_of(p)))) for p in world.policies}
        self.empty = cedarpy.PolicySet.from_str("")

    def decide(self, *req) -> tuple[bool, str]:
        result = cedarpy.is_authorized(cedar_request(*req), self.sets.get(req[2], self.empty), self.entities)
        return result.allowed, _cedar_reason(result)

    def decide_batch(self, reqs: Sequence[Request]) -> list[tuple[bool, str]]:
        """A batch of one registry's changes (as a sync batch of one chain is)."""
        results = cedarpy.is_authorized_batch([cedar_request(*r) for r in reqs], self.sets.get(reqs[0][2], self.empty),
                                              self.entities)
        return [(r.allowed, _cedar_reason(r)) for r in results]


def cedar_binding_floor(requests: Sequence[Request], max_s: float) -> Figure:
    """One call through cedarpy with one trivial policy and no entities: the binding's own cost."""
    ps, ents = cedarpy.PolicySet.from_str("permit (principal, action, resource);"), cedarpy.Entities.from_json_str("[]")
    p50, p99, n = latency(lambda *r: cedarpy.is_authorized(cedar_request(*r), ps, ents).allowed, requests,
                          max_calls=5000, max_seconds=max_s)
    return Figure("floor cedarpy: 1 trivial policy, no entities", p50, "us p50",
                  f"p99 {p99:.1f} us, n={n}; request dict -> JSON -> Rust -> JSON -> AuthzResult")


# ------------------------------------------------------------------ Casbin

# Conditions are data (a "who" kind and its argument), not expressions: the
# matcher is fixed, so a policy row can't carry code (see the eval() model
# in the hostile cases for the other way Casbin offers).
CASBIN_MODEL = """
[request_definition]
r = reg, act, sub, obj

[policy_definition]
p = reg, act, who, arg, eft, id

[role_definition]
g = _, _
g2 = _, _

[policy_effect]
e = some(where (p.eft == allow)) && !some(where (p.eft == deny))

[matchers]
m = r.reg == p.reg && r.act == p.act && (p.who == "any" \
|| (p.who == "regadmin" && r.sub.org == p.arg && g(r.sub.key, "admin")) \
|| (p.who == "own" && r.obj.owner == r.sub.org && g(r.sub.key, "writer")) \
|| (p.who == "own_regowner" && r.obj.owner == r.sub.org && r.sub.org == p.arg && g(r.sub.key, "writer")) \
|| (p.who == "own_member" && r.obj.owner == r.sub.org && g2(r.sub.org, p.arg) && g(r.sub.key, "writer")) \
|| (p.who == "role" && g(r.sub.key, p.arg)) \
|| (p.who == "role_own" && r.obj.owner == r.sub.org && g(r.sub.key, p.arg)) \
|| (p.who == "org" && r.sub.org == p.arg) \
|| (p.who == "not_juris" && !g2(r.sub.juris, p.arg)) \
|| (p.who == "field_not_owner" && r.obj.owner != r.sub.org && p.arg in r.obj.fields))
"""

CASBIN_EVAL_MODEL = """
[request_definition]
r = reg, act, sub, obj

[policy_definition]
p = reg, act, cond, eft, id

[role_definition]
g = _, _

[policy_effect]
e = some(where (p.eft == allow)) && !some(where (p.eft == deny))

[matchers]
m = r.reg == p.reg && r.act == p.act && eval(p.cond)
"""


def casbin_rows(world: World) -> tuple[list[list[str]], list[list[str]], list[list[str]]]:
    """(p rows, g rows: key -> role and the role hierarchy, g2 rows: member and jurisdiction groups)."""
    p_rows: list[list[str]] = []
    g2_rows: list[list[str]] = []
    for p in world.policies:
        reg, pid = p["registry"], p["id"]
        p_rows.append([reg, "read", "any", "", "allow", "grid.read"])
        p_rows.append([reg, "admin", "regadmin", p["owner"], "allow", "grid.admin"])
        for action in WRITES:
            if p["write"] == "roles":
                who = "role_own" if action == "create" else "role"
                p_rows.append([reg, action, who, p["roles"][action], "allow", f"{pid}.{action}"])
            elif p["write"] == "open":
                p_rows.append([reg, action, "own", "", "allow", f"{pid}.write"])
            elif p["write"] == "owner":
                p_rows.append([reg, action, "own_regowner", p["owner"], "allow", f"{pid}.write"])
            else:
                p_rows.append([reg, action, "own_member", f"{pid}.members", "allow", f"{pid}.write"])
            p_rows += [[reg, action, "org", o, "deny", f"{pid}.deny-org"] for o in p["deny_orgs"]]
            if p["jurisdictions"] is not None:
                p_rows.append([reg, action, "not_juris", f"{pid}.jurisdictions", "deny", f"{pid}.jurisdiction"])
        p_rows += [[reg, "update", "field_not_owner", f, "deny", f"{pid}.owner-fields"] for f in p["owner_fields"]]
        if p["write"] == "members":
            g2_rows += [[o, f"{pid}.members"] for o in {*p["members"], p["owner"]}]
        g2_rows += [[j, f"{pid}.jurisdictions"] for j in p["jurisdictions"] or ()]
    g_rows = [["admin", "writer"], ["writer", "reader"]]
    g_rows += [[k, r] for k, (_, roles) in world.keys.items() for r in roles]
    return p_rows, g_rows, g2_rows


def casbin_enforcer(world: World, *, fast: bool = False):
    model = Model()
    model.load_model_from_text(CASBIN_MODEL)
    if fast:
        # FastModel([0, 1]) would do this, but its add_def returns None, so the
        # model loader stops after the first [role_definition] (g2 is lost)
        model.model["p"]["p"].policy = FastPolicy([0, 1])
    enforcer = casbin.Enforcer(model)
    p_rows, g_rows, g2_rows = casbin_rows(world)
    enforcer.add_policies(p_rows)
    enforcer.add_named_grouping_policies("g", g_rows)
    enforcer.add_named_grouping_policies("g2", g2_rows)
    return enforcer


class CasbinDecider:
    def __init__(self, world: World, *, fast: bool = False) -> None:
        self.enforcer = casbin_enforcer(world, fast=fast)
        self.fast = fast
        self.subjects = {k: types.SimpleNamespace(key=k, org=org, juris=world.orgs[org])
                         for k, (org, _) in world.keys.items()}

    def decide(self, key: str, action: str, registry: str, owner: str, changed: frozenset) -> tuple[bool, str]:
        sub = self.subjects.get(key)
        if sub is None:
            return False, "default-deny"
        obj = types.SimpleNamespace(owner=owner, fields=changed)
        if self.fast:  # FastEnforcer.enforce does this but returns no explanation
            with fast_policy_filter(self.enforcer.model.model["p"]["p"].policy, registry, action):
                allowed, rule = self.enforcer.enforce_ex(registry, action, sub, obj)
        else:
            allowed, rule = self.enforcer.enforce_ex(registry, action, sub, obj)
        return allowed, (rule[5] if rule else "default-deny")


# ------------------------------------------------------------ measurement


def _p(samples: list[int], q: float) -> float:
    return sorted(samples)[min(len(samples) - 1, int(q * len(samples)))] / 1000  # ns -> us


def latency(decide: Callable, requests: Sequence[Request], *, max_calls: int, max_seconds: float
            ) -> tuple[float, float, int]:
    """(p50 us, p99 us, calls): each call timed alone, requests in a fixed random order."""
    for r in requests[:20]:
        decide(*r)
    clock = time.perf_counter_ns
    samples: list[int] = []
    deadline = time.perf_counter() + max_seconds
    i = 0
    while i < max_calls and time.perf_counter() < deadline:
        r = requests[i % len(requests)]
        t0 = clock()
        decide(*r)
        samples.append(clock() - t0)
        i += 1
    return _p(samples, 0.5), _p(samples, 0.99), len(samples)


def batch_rate(decide_batch: Callable, requests: Sequence[Request], *, max_seconds: float) -> tuple[float, int]:
    """(us per decision, decisions) over whole batches of BATCH requests."""
    batches = [requests[i:i + BATCH] for i in range(0, len(requests) - BATCH + 1, BATCH)] or [requests]
    decide_batch(batches[0])
    n, t0 = 0, time.perf_counter()
    while True:
        for b in batches:
            decide_batch(b)
            n += len(b)
        elapsed = time.perf_counter() - t0
        if elapsed > max_seconds or n >= 20 * len(requests):
            return elapsed / n * 1e6, n


def best_of(fn: Callable, *, rounds: int = 5, max_seconds: float = 3.0) -> float:
    """The fastest of a few runs of fn, in ms (load times: the floor of what a reload costs)."""
    best, t_end = float("inf"), time.perf_counter() + max_seconds
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        if time.perf_counter() > t_end:
            break
    return best * 1000


def agreement(decide: Callable, ref: Rules, requests: Sequence[Request]) -> str:
    verdicts = reasons = 0
    for r in requests:
        allowed, rule = decide(*r)
        want_allowed, want_rule = ref.decide(*r)
        verdicts += allowed == want_allowed
        reasons += rule == want_rule
    return f"verdicts agree {verdicts}/{len(requests)}, deciding rule {reasons}/{len(requests)}"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


NAN = float("nan")


def engine_figures(sizes: Sequence[int], *, quick: bool) -> tuple[list[Figure], dict]:
    max_s = 0.4 if quick else 1.5  # per timing loop; the whole run stays well under 2 minutes
    figs: list[Figure] = []
    if cedarpy is not None:
        figs.append(cedar_binding_floor(make_world(20).requests, max_s))
    sets: dict = {}
    for size in sizes:
        size_figs, tag, shape = size_figures(make_world(size), max_s)
        figs += size_figs
        sets[tag] = shape
    return figs, sets


def size_figures(world: World, max_s: float) -> tuple[list[Figure], str, str]:
    """Every engine on one world: latency, batch, load, agreement with the reference."""
    figs: list[Figure] = []
    reqs = world.requests
    ref = Rules(world)
    verdicts = {r: ref.decide(*r) for r in reqs}
    allowed = sum(v[0] for v in verdicts.values()) / len(reqs)
    n_cedar = len(CEDAR_GLOBAL) + sum(len(cedar_policies_of(p)) for p in world.policies)
    tag = f"{n_cedar} rules"
    shape = f"{len(world.policies)} registries, {len(world.keys)} keys, {len(reqs)} requests, {allowed:.0%} allowed"

    p50, p99, n = latency(lambda *r: verdicts[r], reqs, max_calls=20000, max_seconds=max_s)
    figs.append(Figure(f"[{tag}] floor: dict lookup of the verdict", p50, "us p50",
                       f"p99 {p99:.2f} us, n={n} (a call + a hash + the timer)"))
    p50, p99, n = latency(ref.decide, reqs, max_calls=20000, max_seconds=max_s)
    figs.append(Figure(f"[{tag}] raw: hand-written Rules.decide", p50, "us p50", f"p99 {p99:.2f} us, n={n}; {shape}"))
    figs.append(Figure(f"[{tag}] raw: hand-written, load", best_of(lambda: Rules(world)), "ms",
                       f"compile {len(world.policies)} records (best of 5)"))

    if cedarpy is None:
        figs.append(Figure(f"[{tag}] cedarpy", NAN, "", "not installed"))
    else:
        dec = CedarDecider(world)
        p50, p99, n = latency(dec.decide, reqs, max_calls=5000, max_seconds=max_s)
        figs.append(Figure(f"[{tag}] cedarpy is_authorized, one set", p50, "us p50",
                           f"p99 {p99:.1f} us, n={n}; pre-parsed PolicySet + Entities; "
                           + agreement(dec.decide, ref, reqs)))
        per, n = batch_rate(dec.decide_batch, reqs, max_seconds=max_s)
        figs.append(Figure(f"[{tag}] cedarpy is_authorized_batch, one set", per, "us/decision",
                           f"batches of {BATCH} mixed requests, n={n}"))
        per_reg = CedarPerRegistry(world)
        p50, p99, n = latency(per_reg.decide, reqs, max_calls=5000, max_seconds=max_s)
        figs.append(Figure(f"[{tag}] cedarpy is_authorized, set per registry", p50, "us p50",
                           f"p99 {p99:.1f} us, n={n}; {len(per_reg.sets)} sets; "
                           + agreement(per_reg.decide, ref, reqs)))
        # Cedar's own timing of its Rust side (AuthzResult.metrics): what no binding could take away
        metrics = [cedarpy.is_authorized(cedar_request(*r), per_reg.sets[r[2]], per_reg.entities).metrics
                   for r in reqs[:300]]
        build = statistics.median(m["build_request_duration_micros"] for m in metrics)
        authz = statistics.median(m["authz_duration_micros"] for m in metrics)
        figs.append(Figure(f"[{tag}] cedarpy Rust side alone, set per registry", build + authz, "us p50",
                           f"Cedar's metrics: build_request {build:.0f} us + authz {authz:.0f} us (median of 300)"))
        busiest = max(per_reg.sets, key=lambda g: sum(r[2] == g for r in reqs))
        one_reg = [(r[0], r[1], busiest, r[3], r[4]) for r in reqs]
        per, n = batch_rate(per_reg.decide_batch, one_reg, max_seconds=max_s)
        figs.append(Figure(f"[{tag}] cedarpy is_authorized_batch, set per registry", per, "us/decision",
                           f"batches of {BATCH} requests on one registry, n={n}"))
        text = cedar_text(world)
        est = cedar_json(text)
        entities = cedar_entities(world)
        ents = json.dumps(entities)
        figs.append(Figure(f"[{tag}] cedarpy load: PolicySet.from_str",
                           best_of(lambda: cedarpy.PolicySet.from_str(text)), "ms",
                           f"{len(text) / 1024:.0f} KiB of Cedar text"))
        figs.append(Figure(f"[{tag}] cedarpy load: PolicySet.from_json_str",
                           best_of(lambda: cedarpy.PolicySet.from_json_str(est)), "ms",
                           f"{len(est) / 1024:.0f} KiB of Cedar JSON (EST)"))
        figs.append(Figure(f"[{tag}] cedarpy load: + Entities.from_json_str",
                           best_of(lambda: cedarpy.Entities.from_json_str(ents)), "ms",
                           f"{len(entities)} entities (roles, orgs, keys, registries)"))
        schema = cedarpy.Schema.from_str(CEDAR_SCHEMA)
        one = "\n".join(cedar_policies_of(world.policies[0]))
        ok = cedarpy.validate_policies(text, schema).validation_passed
        figs.append(Figure(f"[{tag}] cedarpy validate_policies (schema)",
                           best_of(lambda: cedarpy.validate_policies(text, schema)), "ms",
                           f"whole set, passed={ok}; one record alone: "
                           f"{best_of(lambda: cedarpy.validate_policies(one, schema)):.3f} ms"))
    if casbin is None:
        figs.append(Figure(f"[{tag}] pycasbin", NAN, "", "not installed"))
    else:
        p_rows, _, _ = casbin_rows(world)
        for fast in (False, True):
            dec = CasbinDecider(world, fast=fast)
            name = "FastEnforcer (filter by reg, act)" if fast else "Enforcer.enforce_ex"
            p50, p99, n = latency(dec.decide, reqs, max_calls=3000, max_seconds=max_s)
            figs.append(Figure(f"[{tag}] pycasbin {name}", p50, "us p50",
                               f"p99 {p99:.0f} us, n={n}; {len(p_rows)} p rows, fixed matcher; "
                               + agreement(dec.decide, ref, reqs[:300 if fast else 100])))
        enf = casbin_enforcer(world)
        subs = CasbinDecider(world).subjects
        batch = [(r[2], r[1], subs[r[0]], types.SimpleNamespace(owner=r[3], fields=r[4])) for r in reqs[:50]]
        t0 = time.perf_counter()
        enf.batch_enforce(batch)
        figs.append(Figure(f"[{tag}] pycasbin batch_enforce", (time.perf_counter() - t0) / len(batch) * 1e6,
                           "us/decision", f"{len(batch)} requests; a loop over enforce (no shared work)"))
        figs.append(Figure(f"[{tag}] pycasbin load: Enforcer + add_policies",
                           best_of(lambda: casbin_enforcer(world), rounds=3), "ms", f"{len(p_rows)} p rows"))
    return figs, tag, shape


# ---------------------------------------------------------- hostile cases
#
# Each runs in a child process (python -m benchmarks.bench_policy --hostile
# NAME) and prints one JSON line; the parent kills it after 10 s. A hostile
# record is what a peer publishes into grid.policies: we time loading it
# (what validation at the edge would do) and one ordinary decision with it
# in a realistic set of HOSTILE_BASE rules.


def _rss_mb() -> float:
    # VmHWM, not getrusage's ru_maxrss: Linux keeps ru_maxrss across execve, so a
    # child would report the parent's peak at fork time
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(fn: Callable) -> tuple[object, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, (time.perf_counter() - t0) * 1000


def _cedar_case(hostile: str, *, json_form: bool = False, context: dict | None = None) -> dict:
    world = make_world(HOSTILE_BASE)
    base = cedarpy.PolicySet.from_json_str(cedar_json(cedar_text(world)))
    entities = cedarpy.Entities.from_json_str(json.dumps(cedar_entities(world)))
    try:
        parsed, load_ms = _timed(lambda: (cedarpy.PolicySet.from_json_str(hostile) if json_form
                                          else cedarpy.PolicySet.from_str(hostile)))
    except ValueError as e:
        return {"outcome": "rejected at load", "note": str(e)[:80], "rss_mb": _rss_mb()}
    combined = base.with_added_str(str(parsed))
    req = cedar_request(*world.requests[0])
    if context:
        req["context"].update(context)
    result, decide_ms = _timed(lambda: cedarpy.is_authorized(req, combined, entities))
    errors = result.diagnostics.errors
    return {"outcome": "ok", "load_ms": load_ms, "decide_ms": decide_ms, "rss_mb": _rss_mb(),
            "note": f"{len(hostile) / 1024:,.0f} KiB; decision {result.decision.value}"
                    + (f"; the policy was skipped: {errors[0].split(': ', 1)[-1]}" if errors else "")}


def _h_cedar_huge() -> dict:
    items = ", ".join(f'"x{i}"' for i in range(100_000))
    return _cedar_case('permit (principal, action == Action::"update", resource == Registry::"acme.reg0000")\n'
                       f'  when {{ [{items}].contains(principal.org.jurisdiction) }};')


def _h_cedar_many() -> dict:
    world = make_world(20_000, n_requests=10)
    text = cedar_text(world)
    ps, load_ms = _timed(lambda: cedarpy.PolicySet.from_str(text))
    entities = cedarpy.Entities.from_json_str(json.dumps(cedar_entities(world)))
    reqs = [cedar_request(*r) for r in world.requests]
    _, decide_ms = _timed(lambda: [cedarpy.is_authorized(r, ps, entities) for r in reqs])
    return {"outcome": "ok", "load_ms": load_ms, "decide_ms": decide_ms / len(reqs), "rss_mb": _rss_mb(),
            "note": f"{len(ps)} policies, {len(text) / 2**20:.1f} MiB text, {len(world.policies)} registries"}


def _h_cedar_parens() -> dict:
    return _cedar_case('permit (principal, action, resource) when { ' + "(" * 1000 + "true" + ")" * 1000 + " };")


def _h_cedar_parens_json() -> dict:
    body = '{"!": {"arg": ' * 1000 + '{"Value": true}' + "}}" * 1000
    return _cedar_case('{"staticPolicies": {"hostile": {"effect": "permit", "principal": {"op": "All"}, '
                       '"action": {"op": "All"}, "resource": {"op": "All"}, '
                       f'"conditions": [{{"kind": "when", "body": {body}}}]}}}}, "templates": {{}}, '
                       '"templateLinks": []}', json_form=True)


def _h_cedar_and_chain() -> dict:
    cond = " && ".join(["principal.org == context.owner"] * 10_000)
    return _cedar_case(f'forbid (principal, action, resource) when {{ {cond} }};')


def _h_cedar_like() -> dict:
    pattern = "*a" * 5000 + "*b"
    return _cedar_case(f'forbid (principal, action, resource) when {{ context.s like "{pattern}" }};',
                       context={"s": "a" * 100_000})


def _h_cedar_reasons() -> dict:
    """Run 3 times by the parent: the verdicts and the determining policies of the request pool."""
    world = make_world(HOSTILE_BASE)
    text = cedar_text(world) + "\n" + "\n".join(
        f'@id("extra.read.{i}")\npermit (principal, action == Action::"read", resource);' for i in range(8))
    ps = cedarpy.PolicySet.from_str(text)
    entities = cedarpy.Entities.from_json_str(json.dumps(cedar_entities(world)))
    results = [cedarpy.is_authorized(cedar_request(*r), ps, entities) for r in world.requests]
    raw = [(r.decision.value, r.diagnostics.reasons) for r in results]
    digest = lambda x: hashlib.sha256(json.dumps(x).encode()).hexdigest()[:12]
    return {"outcome": "ok", "verdicts": digest([d for d, _ in raw]), "reasons_raw": digest([r for _, r in raw]),
            "reasons_sorted": digest([sorted(r) for _, r in raw]),
            "example": next(r for d, r in raw if len(r) > 2)[:4]}


def _casbin_eval_enforcer(world: World, extra: list[list[str]]):
    model = Model()
    model.load_model_from_text(CASBIN_EVAL_MODEL)
    e = casbin.Enforcer(model)
    rows = [[p["registry"], a, "r.obj.owner == r.sub.org && g(r.sub.key, 'writer')", "allow", f"{p['id']}.write"]
            for p in world.policies for a in WRITES]
    e.add_policies(rows + extra)
    e.add_named_grouping_policies("g", [["admin", "writer"], ["writer", "reader"]]
                                  + [[k, r] for k, (_, roles) in world.keys.items() for r in roles])
    return e


def _casbin_case(cond: str, *, registry: str = "acme.reg0000", probe_registry: str | None = None,
                 rows: int = 1, twice_after_s: float = 0.0) -> dict:
    """A hostile row for the attacker's registry (in the eval() model: Casbin's ABAC
    "policy with a condition"), then one decision on probe_registry (by default the
    same one: anyone's write there makes every node evaluate the row): a key of
    one org updating a record of another."""
    probe_registry = probe_registry or registry
    world = make_world(HOSTILE_BASE)
    extra = [[registry, "update", cond, "allow", "hostile"]] * rows
    e, load_ms = _timed(lambda: _casbin_eval_enforcer(world, extra))
    attacker = next(iter(world.keys))
    sub = types.SimpleNamespace(key=attacker, org=world.keys[attacker][0])
    obj = types.SimpleNamespace(owner=_did("org", 999), fields=frozenset({"pricing"}))
    try:
        (allowed, rule), decide_ms = _timed(lambda: e.enforce_ex(probe_registry, "update", sub, obj))
    except Exception as ex:  # noqa: BLE001 - which exception is the finding
        return {"outcome": "every decision raises", "load_ms": load_ms, "rss_mb": _rss_mb(),
                "note": f"{type(ex).__name__}: {str(ex)[:60]}"}
    note = f"another org's record on {probe_registry}: {'ALLOWED by ' + rule[4] if allowed else 'denied'}"
    if twice_after_s:
        time.sleep(twice_after_s)
        again, _ = e.enforce_ex(probe_registry, "update", sub, obj)
        note += f"; same request {twice_after_s:.1f} s later: {'allowed' if again else 'denied'}"
    return {"outcome": "ok", "load_ms": load_ms, "decide_ms": decide_ms, "rss_mb": _rss_mb(), "note": note}


def _h_casbin_many() -> dict:
    world = make_world(HOSTILE_BASE)
    extra = [[f"acme.x{i}", "update", "r.obj.owner == r.sub.org", "allow", f"x{i}"] for i in range(10_000)]
    e, load_ms = _timed(lambda: _casbin_eval_enforcer(world, extra))
    k = next(iter(world.keys))
    sub = types.SimpleNamespace(key=k, org=world.keys[k][0])
    obj = types.SimpleNamespace(owner=sub.org, fields=frozenset())
    _, decide_ms = _timed(lambda: e.enforce_ex("acme.reg0000", "update", sub, obj))
    return {"outcome": "ok", "load_ms": load_ms, "decide_ms": decide_ms, "rss_mb": _rss_mb(),
            "note": "eval() model: each row's condition is re-parsed (ast.parse) on every decision"}


def _h_casbin_fixed_many() -> dict:
    # 5,000, not 20,000: add_policies is quadratic (a list scan per row), 20,000 rules
    # (~60,000 rows) take > 10 s to load on this machine
    world = make_world(5_000, n_requests=10)
    dec, load_ms = _timed(lambda: CasbinDecider(world))
    _, decide_ms = _timed(lambda: [dec.decide(*r) for r in world.requests])
    return {"outcome": "ok", "load_ms": load_ms, "decide_ms": decide_ms / len(world.requests), "rss_mb": _rss_mb(),
            "note": f"fixed matcher, {len(casbin_rows(world)[0])} p rows, {len(world.policies)} registries"}


def _h_casbin_nest() -> dict:
    return _casbin_case("(" * 300 + "True" + ")" * 300, registry="acme.reg0009", probe_registry="acme.reg0001")


def _h_casbin_regex() -> dict:
    return _casbin_case('regexMatch("' + "a" * 32 + '!", "^(a+)+$")')


def _h_casbin_amplify() -> dict:
    return _casbin_case('("a" * 99999).replace("a", "b" * 20000) != ""')


def _h_casbin_clock() -> dict:
    end = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time.time() + 1.2))
    return _casbin_case(f'timeMatch("_", "{end}")', registry="acme.reg0001", twice_after_s=1.5)


def _h_casbin_inject() -> dict:
    # the attacker's own registry's row; the probe is on another registry
    return _casbin_case("False) || (True", registry="acme.reg0009", probe_registry="acme.reg0001")


def _h_rules_many() -> dict:
    world = make_world(20_000, n_requests=10)
    rules, load_ms = _timed(lambda: Rules(world))
    _, decide_ms = _timed(lambda: [rules.decide(*r) for r in world.requests])
    return {"outcome": "ok", "load_ms": load_ms, "decide_ms": decide_ms / len(world.requests), "rss_mb": _rss_mb(),
            "note": f"{len(world.policies)} records"}


def _h_rules_huge() -> dict:
    world = make_world(HOSTILE_BASE)
    world.policies[0] = {**world.policies[0], "write": "members", "members": [f"x{i}" for i in range(100_000)]}
    rules, load_ms = _timed(lambda: Rules(world))
    _, decide_ms = _timed(lambda: rules.decide(*world.requests[0]))
    return {"outcome": "ok", "load_ms": load_ms, "decide_ms": decide_ms, "rss_mb": _rss_mb(),
            "note": f"{len(json.dumps(world.policies[0])) / 1024:,.0f} KiB record, 100,000 members"}


HOSTILE: dict[str, tuple[str, str, Callable[[], dict]]] = {
    # name: (engine, label, case)
    "cedar-huge": ("cedar", "1 policy, 100,000-element set literal", _h_cedar_huge),
    "cedar-many": ("cedar", "20,000 policies (load; decide p/request)", _h_cedar_many),
    "cedar-parens": ("cedar", "1,000 nested parentheses, text (2 KiB)", _h_cedar_parens),
    "cedar-parens-json": ("cedar", "same depth as Cedar JSON (EST)", _h_cedar_parens_json),
    "cedar-and-chain": ("cedar", "forbid with a 10,000-term && chain", _h_cedar_and_chain),
    "cedar-like": ("cedar", "like with 5,000 wildcards on 100 kB", _h_cedar_like),
    "casbin-many": ("casbin", "eval() model, 10,000 extra rows", _h_casbin_many),
    "casbin-fixed-many": ("casbin", "fixed matcher, 5,000 rules", _h_casbin_fixed_many),
    "casbin-nest": ("casbin", "eval(): 300 nested parens in 1 row", _h_casbin_nest),
    "casbin-regex": ("casbin", "eval(): regexMatch (a+)+$ on 33 chars", _h_casbin_regex),
    "casbin-amplify": ("casbin", "eval(): 45-byte string amplification", _h_casbin_amplify),
    "casbin-clock": ("casbin", "eval(): timeMatch (reads the clock)", _h_casbin_clock),
    "casbin-inject": ("casbin", "eval(): condition 'False) || (True'", _h_casbin_inject),
    "rules-many": ("raw", "20,000 rules", _h_rules_many),
    "rules-huge": ("raw", "1 record with 100,000 members", _h_rules_huge),
}


def run_hostile_child(name: str) -> None:
    print(json.dumps(CHILD_CASES[name][2]()), flush=True)


def _spawn(name: str) -> tuple[dict | None, str]:
    cmd = [sys.executable, "-m", "benchmarks.bench_policy", "--hostile", name]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=HOSTILE_TIMEOUT_S,
                              cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    except subprocess.TimeoutExpired:
        return None, f"TIMEOUT: killed after {HOSTILE_TIMEOUT_S:.0f} s"
    wall = time.perf_counter() - t0
    if proc.returncode < 0:
        import signal
        return None, f"CRASH: the process died of {signal.Signals(-proc.returncode).name} after {wall:.1f} s"
    if proc.returncode != 0:
        return None, f"ERROR rc={proc.returncode}: {proc.stderr.strip().splitlines()[-1][:100]}"
    return json.loads(proc.stdout.strip().splitlines()[-1]), ""


def hostile_figures() -> list[Figure]:
    figs: list[Figure] = []
    for name, (engine, label, _) in HOSTILE.items():
        if engine == "cedar" and cedarpy is None or engine == "casbin" and casbin is None:
            figs.append(Figure(f"hostile {engine}: {label}", NAN, "", "not installed"))
            continue
        out, failure = _spawn(name)
        if out is None:
            figs.append(Figure(f"hostile {engine}: {label}", NAN, "", failure))
            continue
        load, decide = out.get("load_ms"), out.get("decide_ms")
        value = NAN if load is None and decide is None else (load or 0) + (decide or 0)
        parts = [out["outcome"]]
        if load is not None:
            parts.append(f"load {load:,.1f} ms")
        if decide is not None:
            parts.append(f"decide {decide:,.2f} ms")
        parts.append(f"peak RSS {out['rss_mb']:,.0f} MB")
        figs.append(Figure(f"hostile {engine}: {label}", value, "ms" if load or decide else "",
                           ", ".join(parts) + f"; {out.get('note', '')}"))
    if cedarpy is not None:
        runs = [_spawn("cedar-reasons")[0] for _ in range(3)]
        if all(runs):
            same = lambda k: len({r[k] for r in runs}) == 1
            figs.append(Figure("determinism cedar: 3 processes, 1,000 requests", NAN, "",
                               f"verdicts identical: {same('verdicts')}; diagnostics.reasons order identical: "
                               f"{same('reasons_raw')}; sorted: {same('reasons_sorted')} "
                               f"(e.g. {runs[0]['example']} vs {runs[1]['example']})"))
    figs.append(Figure("hostile raw: nesting, regex, clock, injection", NAN, "",
                       "not expressible: a record is typed data (enums, id lists, field names), no expressions"))
    return figs


# child-only cases: run by hostile_figures itself, not in the table loop
CHILD_CASES = {**HOSTILE, "cedar-reasons": ("cedar", "reasons", _h_cedar_reasons)}


# ------------------------------------------------------------------ output


def format_rows(figs: list[Figure]) -> str:
    def val(v: float) -> str:
        if math.isnan(v):  # no figure: not installed, crash, timeout
            return "-"
        return f"{v:,.0f}" if v >= 100 else f"{v:,.2f}"
    rows = [(f.name, val(f.value), f.unit, f.detail) for f in figs]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len("value"), *(len(r[1]) for r in rows))
    w2 = max(len("unit"), *(len(r[2]) for r in rows))
    lines = [f"{'figure':<{w0}}  {'value':>{w1}}  {'unit':<{w2}}  detail", f"{'-' * w0}  {'-' * w1}  {'-' * w2}  ------"]
    lines += [f"{a:<{w0}}  {b:>{w1}}  {c:<{w2}}  {d}" for a, b, c, d in rows]
    return "\n".join(lines)


INGEST_US = 300.0  # one change through ingest today (benchmarks.bench_federation), the budget's base
BUDGET_US = 0.10 * INGEST_US  # issue 14: every trust check together <= 10% of ingest


def summary(figs: list[Figure]) -> list[str]:
    """Each engine's per-decision figure beside the raw evaluator, the budget and a change's cost."""
    lines = [(f"per decision, beside raw (hand-written) and the budget ({BUDGET_US:.0f} us = 10% of a "
              f"~{INGEST_US:.0f} us change):")]
    picks = ("raw: hand-written Rules.decide", "cedarpy is_authorized, one set", "cedarpy is_authorized, set per registry",
             "cedarpy is_authorized_batch, set per registry", "cedarpy Rust side alone, set per registry",
             "pycasbin FastEnforcer (filter by reg, act)")
    for f in figs:
        if not f.name.startswith("[") or math.isnan(f.value):
            continue
        tag, name = f.name[1:].split("] ", 1)
        if name not in picks:
            continue
        raw = next(g.value for g in figs if g.name == f"[{tag}] {picks[0]}")
        verdict = "within" if f.value <= BUDGET_US else f"{f.value / BUDGET_US:.1f}x over"
        lines.append(f"  {'[' + tag + ']':<12} {name:<46} {f.value:>9,.1f} us  {f.value / raw:>7,.0f}x raw  "
                     f"{f.value / INGEST_US:>6.1%} of a change  ({verdict} budget)")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter timing loops (smoke test)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--no-hostile", action="store_true", help="skip the hostile-policy child processes")
    parser.add_argument("--hostile", metavar="CASE", help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args()
    if args.hostile:
        run_hostile_child(args.hostile)
        return
    t0 = time.perf_counter()
    versions = {d: _version(d) for d in ("cedarpy", "pycasbin", "simpleeval")}
    header = (f"Python {platform.python_version()} {platform.machine()}, {os.cpu_count()} CPUs; "
              + ", ".join(f"{d} {v}" for d, v in versions.items()))
    figs, sets = engine_figures(SIZES, quick=args.quick)
    if not args.no_hostile:
        figs += hostile_figures()
    if args.json:
        print(json.dumps({"versions": versions, "figures": [asdict(f) for f in figs], "sets": sets,
                          "seconds": time.perf_counter() - t0}, indent=2))
        return
    print(header)
    print(format_rows(figs))
    print()
    print("\n".join(summary(figs)))
    print(f"\nrun took {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
