"""The blobs an erasure notice names, purged after the record is erased.

The engine erases a record inside its LMDB transaction; a blob's bytes live
in the object store, outside it, so the node purges them once the erasure
is committed (and again at its next start, should it stop in between:
``still_held`` finds what is left). A legal hold or a retention period on
this node wins over the notice: the bytes stay, and the outcome says why,
for the audit ledger. docs/erasure.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from registrygrid.blobs.blobs import BlobStore, RetentionHeld
from registrygrid.blobs.digest import parse_cid
from registrygrid.errors import RegistryError


@dataclass(frozen=True)
class BlobPurge:
    cid: str
    outcome: str  # purged | absent | held | failed
    reason: str = ""


def purge_blobs(blobs: BlobStore, cids: Iterable[str]) -> list[BlobPurge]:
    """Delete each named blob this node holds; one outcome per CID."""
    out = []
    for text in cids:
        try:
            cid = parse_cid(text)
            if blobs.entry(cid) is None:
                out.append(BlobPurge(text, "absent"))
                continue
            blobs.delete(cid)
            out.append(BlobPurge(text, "purged"))
        except RetentionHeld as exc:
            out.append(BlobPurge(text, "held", exc.message))
        except RegistryError as exc:  # the object store unreachable: tried again at the next start
            out.append(BlobPurge(text, "failed", f"{exc.code}: {exc.message}"))
    return out


def still_held(blobs: BlobStore, cids: Iterable[str]) -> list[str]:
    """The named blobs this node still holds (a purge the node did not
    finish). A name that is no CID (a notice a peer signed) names none:
    it stopped every start of the node."""
    held = []
    for text in cids:
        try:
            cid = parse_cid(text)
        except RegistryError:
            continue
        if blobs.entry(cid) is not None:
            held.append(text)
    return held
