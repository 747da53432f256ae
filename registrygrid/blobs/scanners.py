"""Checks before a blob is written and before it is served.

    checks = Checks.from_config({"max_bytes": 10 << 30, "content_types": ["application/*"],
                                 "licenses": ["apache-2.0", "mit"]})
    verdicts = checks.judge(Subject("upload", size=n, content_type="application/zip", name="x.zip",
                                    license="mit"))     # every check's verdict, allowed or not
    checks.enforce(subject)                             # PolicyDenied naming the first refusal

Each check is a small object with a name and a ``judge(subject)`` that
returns a ``Verdict`` (allowed or refused, and why) or None when it has no
opinion (a license rule on a file that states no license, unless told to
refuse those). The node runs them at three points: when an upload is
created (what the client declares), before a finished upload or a direct
put becomes a blob (what the bytes say: their size, and the metadata read
from their head, blobs/metadata.py), and before a blob is served. The
caller audits every verdict (node/bridge/asset_routes.py), so the ledger
shows which rule let what in or kept it out.

Rules come from config.json (``assets.checks``) and, when it names one,
from a policy record's ``rules.assets`` member (the same keys), which
replicates like any record, so a federation can share its asset rules.
Plug-ins are any object with ``name`` and ``judge``: pass them to Checks.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from registrygrid.errors import PolicyDenied, ValidationError


class CheckRefused(PolicyDenied):
    code = "check_refused"


@dataclass(frozen=True)
class Subject:
    action: str  # "declare" (an upload is created), "upload" (the bytes are in) or "download"
    size: int
    content_type: str
    name: str = ""
    license: str | None = None  # from the bytes' metadata, when they state one
    metadata: Mapping[str, Any] = field(default_factory=dict)  # the normalized fields (blobs/metadata.py)


@dataclass(frozen=True)
class Verdict:
    check: str
    allowed: bool
    reason: str


class Check(Protocol):
    name: str

    def judge(self, subject: Subject) -> Verdict | None: ...


@dataclass(frozen=True)
class SizeCap:
    max_bytes: int
    name: str = "size"

    def judge(self, subject: Subject) -> Verdict:
        if subject.size > self.max_bytes:
            return Verdict(self.name, False, f"{subject.size} bytes is over the cap of {self.max_bytes}")
        return Verdict(self.name, True, f"{subject.size} <= {self.max_bytes} bytes")


@dataclass(frozen=True)
class ContentTypes:
    allowed: tuple[str, ...]  # media types, with wildcards: "application/*", "text/plain"
    name: str = "content_type"

    def judge(self, subject: Subject) -> Verdict:
        media = subject.content_type.split(";", 1)[0].strip().lower()
        if any(fnmatch.fnmatchcase(media, pattern.lower()) for pattern in self.allowed):
            return Verdict(self.name, True, f"{media} is allowed")
        return Verdict(self.name, False, f"{media} is not among {', '.join(self.allowed)}")


@dataclass(frozen=True)
class LicenseAllowlist:
    allowed: tuple[str, ...]  # SPDX identifiers, compared case-insensitively
    refuse_unstated: bool = False
    downloads_too: bool = False
    name: str = "license"

    def judge(self, subject: Subject) -> Verdict | None:
        if subject.action == "download" and not self.downloads_too:
            return None
        if subject.license is None:
            if self.refuse_unstated and subject.action != "declare":
                return Verdict(self.name, False, "the bytes state no license")
            return None
        if subject.license.lower() in {a.lower() for a in self.allowed}:
            return Verdict(self.name, True, f"license {subject.license} is allowed")
        return Verdict(self.name, False, f"license {subject.license} is not among {', '.join(self.allowed)}")


class Checks:
    def __init__(self, checks: Sequence[Check] = ()) -> None:
        self.checks = list(checks)

    @classmethod
    def from_config(cls, rules: Mapping[str, Any] | None, *, where: str = "assets.checks") -> Checks:
        """The built-in checks a rules object asks for (config.json or a policy record)."""
        if not rules:
            return cls()
        if not isinstance(rules, Mapping):
            raise ValidationError(f"{where}: an object")
        unknown = set(rules) - {"max_bytes", "content_types", "licenses", "refuse_unstated_license",
                                "license_on_download"}
        if unknown:
            raise ValidationError(f"{where}: unknown rules {', '.join(sorted(unknown))}")
        checks: list[Check] = []
        if "max_bytes" in rules:
            cap = rules["max_bytes"]
            if not isinstance(cap, int) or isinstance(cap, bool) or cap < 0:
                raise ValidationError(f"{where}.max_bytes: a whole number of bytes")
            checks.append(SizeCap(cap))
        if "content_types" in rules:
            checks.append(ContentTypes(_strings(rules["content_types"], f"{where}.content_types")))
        if "licenses" in rules:
            checks.append(LicenseAllowlist(_strings(rules["licenses"], f"{where}.licenses"),
                                           refuse_unstated=bool(rules.get("refuse_unstated_license", False)),
                                           downloads_too=bool(rules.get("license_on_download", False))))
        return cls(checks)

    def __add__(self, other: Checks) -> Checks:
        return Checks([*self.checks, *other.checks])

    def judge(self, subject: Subject) -> list[Verdict]:
        return [v for v in (check.judge(subject) for check in self.checks) if v is not None]

    def enforce(self, subject: Subject) -> list[Verdict]:
        """Every verdict; CheckRefused (with all of them) if any refuses."""
        verdicts = self.judge(subject)
        refused = [v for v in verdicts if not v.allowed]
        if refused:
            raise CheckRefused(f"refused by the {refused[0].check} check: {refused[0].reason}",
                               details=[{"check": v.check, "allowed": v.allowed, "reason": v.reason}
                                        for v in verdicts])
        return verdicts


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise ValidationError(f"{where}: a non-empty list of strings")
    return tuple(value)


def summary(verdicts: Sequence[Verdict]) -> str:
    """One line for the audit ledger: every check and its outcome."""
    if not verdicts:
        return "no checks"
    return "; ".join(f"{v.check}: {'ok' if v.allowed else 'refused'} ({v.reason})" for v in verdicts)
