"""RegistryGrid: a decentralized registry node for the participants of an open AI grid.

The SDK for apps that embed a store is ``registrygrid.open(home)``; see
:mod:`registrygrid.sdk`. Errors are in :mod:`registrygrid.errors`.
"""

from registrygrid.engine.ops import Delete, IngestResult, Put, Remote, Update, WriteResult
from registrygrid.errors import RegistryError
from registrygrid.sdk import LocalRegistry, Page, open

__version__ = "0.1.0"

__all__ = [
    "Delete",
    "IngestResult",
    "LocalRegistry",
    "Page",
    "Put",
    "RegistryError",
    "Remote",
    "Update",
    "WriteResult",
    "open",
]
