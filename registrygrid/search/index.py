"""The search index of one node: tantivy, derived from the changefeed.

Why tantivy (measured on this machine, benchmarks/bench_search.py and the
README): over 100k generated records, SQLite FTS5's BM25 top-10 took
9-29 ms p50 for common terms (it scores every match), tantivy's 0.4-1.3 ms
(block-max WAND skips what can't reach the top), and tantivy indexed twice
as fast. tantivy also gives fast fields for filters, sorting and facet
counts (aggregations), so one engine answers the whole query language.

The index lives in ``HOME/index/`` and holds one document per live
record (search/fields.py normalizes it), keyed by ``registry \\0 id``.
It is derived, never authoritative: ``catch_up`` reads the feed after
the index's cursor, replaces the document of every record the events
touched (or deletes it), commits, then stores the cursor. A crash between
the commit and the cursor replays those events, which replace the same
documents again: nothing is lost or doubled. ``rebuild`` starts over.

Sorting and pages. Relevance orders text queries (BM25 over name, which
counts 3x, description 1.5x, and every string of the record, reranked
with freshness and trust: ``rank``, over a fixed window: ``_by_relevance``);
pages reach ``MAX_RELEVANCE_WINDOW`` deep. Any number, date or keyword
field sorts too (keywords in UTF-8 byte order: see ``PREFIX_BYTES``),
ties broken by ``kid`` (a 62-bit hash
of the key): a cursor is the last hit's (value, kid), so a walk is stable
while records change (keyset, never offsets). A sort lists the records
that have the field.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import tantivy

from registrygrid.errors import (
    FeatureUnavailable,
    IntegrityError,
    RegistryError,
    StorageFailed,
    Unavailable,
    ValidationError,
)
from registrygrid.files import read_json
from registrygrid.home import write_json_durably
from registrygrid.engine.registries import REGISTRY_OF_REGISTRIES
from registrygrid.search import query as q
from registrygrid.search.fields import normalize

log = logging.getLogger(__name__)

# Bump when the schema or the normalization changes: an index of another
# version is rebuilt from the feed at open.
INDEX_VERSION = 2
# The trust statements are the federation's plumbing, and saved views are
# queries (a view would list its own record): neither is a thing to find.
NOT_INDEXED = frozenset({"grid.members", "grid.views"})
BATCH = 2000
# While catching up, commit once this many records were touched: a tantivy
# commit writes and syncs segment files (tens of ms); the cursor follows each commit.
COMMIT_EVERY = 20_000
WRITER_HEAP = 64 * 2**20
# Freshness halves every this many days.
FRESHNESS_HALF_LIFE_DAYS = 30.0
# Freshness, trust, boosts and meaning rerank this many of the best text
# hits, the same ones for every page of a walk (search engines' rescore
# window, which they too keep fixed while paging); 100 kept the reranked
# top 10 at ~4 ms p50 over 100k records (bench_search).
RERANK_WINDOW = 100
# A relevance walk reads every page from the index as it was at its first
# (a pinned searcher: tantivy's snapshot of its segments), as a scroll or a
# point in time does in Elasticsearch: a page is a position in one list, and
# writes between pages moved it (records came back, others never came).
# Kept this long after its last page, and this many walks at once (the
# oldest goes first): a walk paused longer goes on over the index as it is.
PIN_SECONDS = 300
MAX_PINNED = 64
_KEYWORDS = ("registry", "id", "kind", "owner", "name", "category", "region", "status")
# A keyword sort's keyset needs "after this string", which tantivy answers
# for numbers only (no range query over text): each keyword field also
# holds the first PREFIX_BYTES of its UTF-8 bytes as two big-endian u64
# (``<field>__p0``, ``<field>__p1``), an order-keeping projection of byte
# order. A page after value V is then V's ties (by kid), the values of V's
# prefix group after V (few: values rarely share 16 bytes), and every value
# whose prefix is beyond V's (a range query).
PREFIX_BYTES = 16
_WORD = re.compile(r'"([^"]*)"|(\S+)')
# Reciprocal rank fusion's constant (Cormack et al. 2009): ranks past the
# first few count for little, and neither ranking's scale matters.
RRF_K = 60


@contextlib.contextmanager
def _disk_refusals(path: Path) -> Iterator[None]:
    """The index's writes, with a disk that refuses them (full, over quota,
    failing) raised as StorageFailed: the node's indexing task logs it and
    tries again at the next commit (node/search.py), instead of ending the
    node. tantivy reports it as ValueError("An IO error occurred: ...").
    Its other errors on a write (files it does not expect, a meta.json it
    cannot read) are IntegrityError: the index is derived, so the caller
    starts it over (SearchIndex._start_over); but not a writer lock held
    elsewhere (Unavailable), which is an index in use."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in StorageFailed.ERRNOS:
            raise
        raise StorageFailed.at(path, exc, what="the search index", fix=_INDEX_FIX) from None
    except ValueError as exc:
        if "LockBusy" in str(exc):  # another writer holds it: in use, not damaged (never start it over)
            raise Unavailable(f"the search index at {path} is being written by another writer: {exc}") from None
        if not str(exc).startswith("An IO error occurred"):
            raise IntegrityError(f"the search index at {path} is damaged: {exc}") from None
        raise StorageFailed.at(path, exc, what="the search index", fix=_INDEX_FIX) from None


_INDEX_FIX = "free space; the index catches up by itself after the next write"


def _written_before(registry: Any, name: str, cursor: int) -> list[str]:
    """The ids of ``name``'s records whose last change the feed gave at or
    before ``cursor`` (the others come with the events still to read: an
    index rebuilt from the start takes each record once)."""
    from registrygrid.storage import records

    store = registry.store
    out = []
    with store.read() as txn:
        for record in records.iter_records(store, txn, registry=name):
            seqs = [feed_seq for feed_seq, _ in records.history(store, txn, name, record["id"])]
            if seqs and max(seqs) <= cursor:
                out.append(record["id"])
    return out


def doc_key(registry: str, record_id: str) -> str:
    return f"{registry}\0{record_id}"


def kid_of(key: str) -> int:
    """A stable 62-bit number for a key: the tie-breaker of every sort."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") >> 2


def _schema() -> tantivy.Schema:
    sb = tantivy.SchemaBuilder()
    sb.add_text_field("key", stored=True, fast=True, tokenizer_name="raw")
    sb.add_integer_field("kid", stored=True, indexed=True, fast=True)
    for name in _KEYWORDS:
        sb.add_text_field(name, stored=name in ("registry", "id"), fast=True, tokenizer_name="raw")
        for part in _prefix_fields(name):
            sb.add_unsigned_field(part, fast=True)  # range queries read fast fields: no postings needed
    sb.add_text_field("tags", fast=True, tokenizer_name="raw")
    sb.add_text_field("name_text", tokenizer_name="en_stem")
    sb.add_text_field("description", tokenizer_name="en_stem")
    sb.add_text_field("has_description", fast=True, tokenizer_name="raw")
    sb.add_text_field("text", tokenizer_name="en_stem")
    for name in ("price", "reputation"):
        sb.add_float_field(name, stored=True, indexed=True, fast=True)
    for name in ("created_at", "updated_at"):
        sb.add_integer_field(name, stored=True, indexed=True, fast=True)
    for name in ("verified", "local"):
        sb.add_boolean_field(name, stored=True, indexed=True, fast=True)
    sb.add_json_field("fields", fast=True, tokenizer_name="raw")
    return sb.build()


def _regex_escape(text: str) -> str:
    return "".join("\\" + c if c in "\\.+*?()|[]{}^$#&-~\"" else c for c in text)


@dataclass
class Hit:
    key: str
    registry: str
    id: str
    relevance: float  # BM25, cosine similarity, or the fused reciprocal rank (by the query's mode)
    updated_at: int
    verified: bool
    reputation: float | None
    value: Any  # the sort field's value
    kid: int
    score: float = 0.0
    components: dict[str, float] | None = None
    signals: dict[str, float] | None = None  # what the relevance was made of, for explain


class SearchIndex:
    """The tantivy index of one node's store and the feed cursor it reached."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.schema = _schema()
        self._write_lock = threading.RLock()  # one writer: catch-up and rebuild take turns
        self.vectors: Any = None  # a semantic.VectorIndex, when the semantic extra runs
        self._pinned: dict[str, tuple[Any, int, int, float]] = {}  # walk -> (searcher, now_ms, through, kept until)
        self._pins_lock = threading.Lock()
        self._open()

    # ------------------------------------------------------------ lifecycle

    def _open(self) -> None:
        meta = self.path / "search.json"
        self.started_over = 0  # times this index was found damaged and started over (at most once while open)
        try:
            state = read_json(meta) if meta.exists() else None
            if state is not None:
                int(state["cursor"])
        except (OSError, ValueError, KeyError, TypeError, OverflowError, RegistryError) as exc:
            # The index is derived from the feed: a cursor file it cannot
            # read (a hand edit, a damaged disk) costs a re-index, not the
            # node's start.
            log.warning("search: %s is unreadable (%s); indexing the feed again from its start", meta, exc)
            self.started_over += 1
            state = None
        if state is None or state.get("version") != INDEX_VERSION:
            shutil.rmtree(self.path, ignore_errors=True)
            self.path.mkdir(parents=True, exist_ok=True)
            state = {"version": INDEX_VERSION, "cursor": 0}
        epoch = state.get("epoch")
        # The feed this index follows: renewed when it finds the store's feed
        # is another one (_forget_feed), so views made from the old one know.
        self.epoch = epoch if isinstance(epoch, str) and epoch else secrets.token_hex(4)
        try:
            self._open_tantivy()
        except IntegrityError as exc:
            self._start_over(exc)
            return
        self.cursor = int(state["cursor"])
        at = state.get("at")
        self._save_cursor(self.cursor, at if isinstance(at, str) else None)

    def _open_tantivy(self) -> None:
        (self.path / "tantivy").mkdir(parents=True, exist_ok=True)
        with _disk_refusals(self.path):
            self.index = tantivy.Index(self.schema, path=str(self.path / "tantivy"))
            self._drop_uncommitted_files()

    def _start_over(self, why: IntegrityError) -> None:
        """An empty index at cursor 0, for a damaged one: the next catch-up
        indexes the whole feed again."""
        log.warning("search: %s; indexing the feed again from its start", why.message)
        self.started_over += 1
        shutil.rmtree(self.path / "tantivy", ignore_errors=True)
        self._open_tantivy()
        self._save_cursor(0)

    def _same_feed(self, registry: Any) -> bool:
        """Whether the store's feed is the one this index reached: the event
        at the cursor is the change the index saw there. A store restored
        from a backup, or made anew, restarts its feed below the cursor (or
        passes it with other changes); this index would then take their
        records as indexed already and never index them. A cursor saved
        before it kept its change is held to the feed's head alone."""
        if self.cursor == 0:
            return True
        found = registry.changes(self.cursor - 1, limit=1)
        if not found or found[0].seq != self.cursor:
            return False
        return self.at is None or found[0].change == self.at

    def _forget_feed(self) -> None:
        """Every document and vector goes and the cursor returns to 0: the
        feed is another one (``_same_feed``)."""
        log.warning("search: the store's feed is not the one this index reached (event %d is another change: "
                    "the store was restored or made anew); indexing it again from its start", self.cursor)
        self.started_over += 1
        with _disk_refusals(self.path):
            writer = self.index.writer(WRITER_HEAP, 1)
            writer.delete_all_documents()
            writer.commit()
            writer.wait_merging_threads()
        self.index.reload()
        self.epoch = secrets.token_hex(4)
        self._save_cursor(0)
        if self.vectors is not None:
            self.vectors.reset()

    def _drop_uncommitted_files(self) -> None:
        """Delete the files of a commit a crash cut short. tantivy registers
        each file before writing it and names a deletes file by segment and
        opstamp, but counts opstamps from the last meta.json it committed:
        left in place, the next commit's deletes file would have the name
        of one on disk already, and every commit would fail from then on."""
        with _disk_refusals(self.path):
            writer = self.index.writer(WRITER_HEAP, 1)
            writer.garbage_collect_files()
            del writer  # releases the index's writer lock

    def _save_cursor(self, cursor: int, at: str | None = None) -> None:
        """Save the cursor and ``at``, the change of the feed event at it."""
        with _disk_refusals(self.path):
            write_json_durably(self.path / "search.json", {"version": INDEX_VERSION, "cursor": cursor,
                                                          "epoch": self.epoch, **({"at": at} if at else {})})
        self.cursor, self.at = cursor, at

    # ------------------------------------------------------------ semantic (optional extra)

    def enable_semantic(self) -> bool:
        """Load the embedder and the vector index if the semantic extra is
        installed (search/semantic.py); whether it is."""
        from registrygrid.search import semantic

        if not semantic.available():
            return False
        self.vectors = semantic.VectorIndex(self.path / "vectors", semantic.Embedder(self.path / "model"))
        return True

    def catch_up_vectors(self, registry: Any, *, limit: int | None = None) -> int:
        """Embed what the feed touched since the vectors' own cursor (it lags
        the text index's; semantic queries see what it has reached)."""
        if self.vectors is None:
            return 0
        with _disk_refusals(self.path):
            return int(self.vectors.catch_up(registry, kid_of=kid_of, key_of=doc_key, skip=NOT_INDEXED,
                                             limit=limit))

    # ------------------------------------------------------------ writing

    def catch_up(self, registry: Any, *, org_verified: Callable[[str], bool], local_org: str | None,
                 limit: int | None = None, progress: Callable[[int, int], None] | None = None) -> int:
        """Index the feed after the cursor (at most ``limit`` events); the
        number of events read. ``registry`` is the node's LocalRegistry."""
        with self._write_lock:
            if not self._same_feed(registry):
                self._forget_feed()
            head = registry.feed_head()
            done = 0
            while self.cursor < head and (limit is None or done < limit):
                touched: dict[tuple[str, str], None] = {}
                described: dict[str, str] = {}  # registry -> its descriptor's last event type in this batch
                last, at = self.cursor, self.at
                while last < head and len(touched) < COMMIT_EVERY and (limit is None or done < limit):
                    events = registry.changes(last, limit=BATCH if limit is None else min(BATCH, limit - done))
                    if not events:
                        break
                    touched.update(dict.fromkeys((e.registry, e.record) for e in events
                                                 if e.registry not in NOT_INDEXED))
                    described.update((e.record, e.type) for e in events if e.registry == REGISTRY_OF_REGISTRIES)
                    last, at = events[-1].seq, events[-1].change
                    done += len(events)
                    if progress is not None:
                        progress(last, head)
                if last == self.cursor:
                    break
                closed, reopened = self._registries_closed_or_reopened(registry, described)
                for name in reopened:  # its records came back with its descriptor: no event of theirs says so
                    touched.update(dict.fromkeys((name, record_id) for record_id in
                                                 _written_before(registry, name, self.cursor)))
                docs = []
                for reg, record_id in touched:
                    try:
                        record = registry.get(reg, record_id)
                    except RegistryError:  # deleted since, or a registry gone: the document goes
                        continue
                    docs.append(normalize(record, org_verified=org_verified, local_org=local_org))
                try:
                    self._apply([doc_key(r, i) for r, i in touched], docs, closed)
                except IntegrityError as exc:
                    # Once while open: damage comes from a crash, which a start
                    # over mends; what it did not mend (a document tantivy
                    # refuses) must not cost a whole re-index at every commit.
                    if self.started_over:
                        raise
                    self._start_over(exc)
                    head = registry.feed_head()
                    continue
                self._save_cursor(last, at)
            return done

    def rebuild(self, registry: Any, *, org_verified: Callable[[str], bool], local_org: str | None,
                progress: Callable[[int, int], None] | None = None) -> int:
        """Start over from the feed's beginning; the events read."""
        with self._write_lock:  # held throughout: the node's own catch-up waits, so the count is whole
            with _disk_refusals(self.path):
                writer = self.index.writer(WRITER_HEAP, 1)
                writer.delete_all_documents()
                writer.commit()
                writer.wait_merging_threads()
            self._save_cursor(0)
            if self.vectors is not None:
                self.vectors.reset()
            events = self.catch_up(registry, org_verified=org_verified, local_org=local_org, progress=progress)
            self.catch_up_vectors(registry)
            return events

    def _registries_closed_or_reopened(self, registry: Any, described: Mapping[str, str]) -> tuple[list[str], list[str]]:
        """Of the registries whose descriptors a batch changed: those deleted
        (their records are unknown to readers: every document of theirs
        goes, though no event of the records says so), and those that may
        be back from a delete (open, with records, none indexed: the ones
        the feed brought before this batch are indexed again)."""
        closed, reopened = [], []
        for name in described:
            try:
                held = registry.list(name, limit=1).items
            except RegistryError:  # deleted (unknown to readers), whatever the event said
                closed.append(name)
                continue
            if held and not self._holds_any(name):
                reopened.append(name)
        return closed, reopened

    def _holds_any(self, registry_name: str) -> bool:
        """Whether any document of the registry is indexed."""
        searcher = self.index.searcher()
        found = searcher.search(tantivy.Query.term_query(self.schema, "registry", registry_name), 1, count=False)
        return bool(found.hits)

    def _apply(self, keys: Iterable[str], docs: list[dict[str, Any]], closed: Iterable[str] = ()) -> None:
        with _disk_refusals(self.path):
            writer = self.index.writer(WRITER_HEAP, 1)
            for name in closed:
                writer.delete_documents_by_term("registry", name)
            for key in keys:
                writer.delete_documents_by_term("key", key)
            for doc in docs:
                writer.add_document(self._document(doc))
            writer.commit()
            writer.wait_merging_threads()
        self.index.reload()

    def _document(self, doc: Mapping[str, Any]) -> tantivy.Document:
        key = doc_key(doc["registry"], doc["id"])
        out: dict[str, Any] = {"key": key, "kid": kid_of(key), "name_text": doc["title"], "text": doc["text"],
                               "created_at": int(doc["created_at"]), "updated_at": int(doc["updated_at"]),
                               "verified": bool(doc["verified"]), "local": bool(doc["local"]),
                               "fields": _json_safe(doc["fields"])}
        for name in _KEYWORDS:
            if doc.get(name) is not None:
                out[name] = doc[name]
        if doc["tags"]:
            out["tags"] = list(doc["tags"])
        if doc.get("description"):
            out["description"] = doc["description"]
            out["has_description"] = "1"
        for name in ("price", "reputation"):
            if doc.get(name) is not None:
                out[name] = float(doc[name])
        made = tantivy.Document(**out)
        for name in _KEYWORDS:  # u64 fields take unsigned values explicitly (a Python int reads as i64)
            if doc.get(name) is not None:
                for part, number in zip(_prefix_fields(name), _prefix_numbers(doc[name]), strict=True):
                    made.add_unsigned(part, number)
        return made

    # ------------------------------------------------------------ reading

    def count(self) -> int:
        return int(self.index.searcher().num_docs)

    @contextlib.contextmanager
    def steady(self) -> Iterator[None]:
        """Hold off catch-up and rebuild meanwhile: the index and its cursor
        agree throughout (saved views read both, search/views.py)."""
        with self._write_lock:
            yield

    def matching(self, query: q.Query, keys: Sequence[str]) -> dict[str, Any]:
        """Which of ``keys`` a text-mode query matches (its text, filter and
        registries), each with the value it orders them by: the field's for
        a sort by field (a record without it does not match, as a sorted
        search lists only records that have it), else the record's BM25 score
        exactly as a search of the whole index scores it (the restriction to
        ``keys`` is a constant-score clause worth 0)."""
        if not keys:
            return {}
        searcher = self.index.searcher()
        among = tantivy.Query.const_score_query(tantivy.Query.term_set_query(self.schema, "key", list(keys)), 0.0)
        clauses = [self._base(query, None), among]
        field = query.sort.field
        if field != "relevance":
            clauses.append(tantivy.Query.exists_query(field))
        out: dict[str, Any] = {}
        if field == "relevance":
            for score, address in searcher.search(_and(*clauses), len(keys), count=False).hits:
                out[searcher.doc(address)["key"][0]] = float(score)
            return out
        # The sort value as the sort reads it: the field's fast value (keywords are not stored).
        for value, address in searcher.search(_and(*clauses), len(keys), count=False, order_by_field=field).hits:
            out[searcher.doc(address)["key"][0]] = value
        return out

    def search(self, query: q.Query, *, registries: tuple[str, ...] | None = None,
               now_ms: int | None = None) -> dict[str, Any]:
        """The query's hits (keys, scores, explanations), facets and next cursor.
        ``registries`` narrows it further (a token scoped to one registry)."""
        searcher = None
        now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
        walk, through = "", self.cursor  # read first: a new searcher holds at least this much of the feed
        if query.sort.field == "relevance":
            walk, searcher, now_ms, through = self._walk_of(query, now_ms, through)
        searcher = searcher or self.index.searcher()
        base = self._base(query, registries)
        if query.mode != "text" and self.vectors is None:
            from registrygrid.search.semantic import EXTRA_HINT

            raise FeatureUnavailable(EXTRA_HINT)
        if query.sort.field == "relevance":
            hits, next_cursor = self._by_relevance(searcher, query, base, now_ms, registries, walk)
            if next_cursor is not None:
                self._pin(walk, searcher, now_ms, through)
            listed = base
        else:
            hits, next_cursor = self._by_field(searcher, query, base)
            # A sort by a field lists the records that have it: the total
            # counts those (it counted the others too, which no page shows).
            listed = _and(base, tantivy.Query.exists_query(query.sort.field))
        total = searcher.search(listed, 1, count=True).count
        facets = self._facets(searcher, query, base) if query.facets else {}
        return {"hits": hits, "total": total, "facets": facets, "next_cursor": next_cursor, "through": through}

    def _base(self, query: q.Query, registries: tuple[str, ...] | None, *, text: bool = True) -> tantivy.Query:
        """The query's text (unless ``text`` is false, or it is matched by
        meaning alone), filter and registries as one tantivy query."""
        must: list[tuple[tantivy.Occur, tantivy.Query]] = []
        if text and query.text is not None and query.mode != "semantic":
            must.append((tantivy.Occur.Must, self._text(query.text)))
        if query.filter is not None:
            must.append((tantivy.Occur.Must, self.compile(query.filter)))
        scopes = [tuple(query.registries), registries] if registries is not None else [tuple(query.registries)]
        for scope in scopes:
            if scope:
                must.append((tantivy.Occur.Must, tantivy.Query.term_set_query(self.schema, "registry", list(scope))))
        if not must:
            return tantivy.Query.all_query()
        if not text or query.text is None or query.mode == "semantic":  # filters alone: every match scores alike
            return tantivy.Query.const_score_query(tantivy.Query.boolean_query(must), 1.0)
        return tantivy.Query.boolean_query(must)

    def _text(self, text: str) -> tantivy.Query:
        """The user's words as BM25 clauses, any of them, quoted runs as
        phrases; nothing in the text is query syntax (no fields, no ranges)."""
        parts = []
        for phrase, word in _WORD.findall(text):
            cleaned = (phrase or word).replace('"', " ").replace("\\", " ").strip()
            if cleaned:
                parts.append(f'"{cleaned}"')
        if not parts:
            return tantivy.Query.all_query()
        return self.index.parse_query(" ".join(parts), ["name_text", "description", "text"],
                                      field_boosts={"name_text": 3.0, "description": 1.5})

    def compile(self, node: q.Node) -> tantivy.Query:
        """A filter node as a tantivy query matching what ``query.matches`` accepts."""
        schema = self.schema
        if isinstance(node, q.And):
            return tantivy.Query.boolean_query([(tantivy.Occur.Must, self.compile(n)) for n in node.items])
        if isinstance(node, q.Or):
            return tantivy.Query.boolean_query([(tantivy.Occur.Should, self.compile(n)) for n in node.items])
        if isinstance(node, q.Not):
            return _negate(self.compile(node.item))
        name, op, value, kind = node.field, node.op, node.value, node.type
        if op == "ne":
            return _negate(self.compile(q.Cmp(name, "eq", value)))
        if op == "in":
            return tantivy.Query.boolean_query([(tantivy.Occur.Should, self.compile(q.Cmp(name, "eq", v)))
                                                for v in value])
        if kind == "user":
            return self._user(name, op, value)
        if op == "exists":
            field = "has_description" if name == "description" else name
            found = tantivy.Query.exists_query(field)
            return found if value else _negate(found)
        if kind == q.KEYWORD:
            field = name
            if op == "prefix":
                return tantivy.Query.regex_query(schema, field, _regex_escape(value) + ".*")
            return tantivy.Query.term_query(schema, field, value)
        if kind == q.BOOL:
            return tantivy.Query.term_query(schema, name, value)
        ftype = tantivy.FieldType.Float if kind == q.NUMBER else tantivy.FieldType.Integer
        return _range(schema, name, ftype, op, value)

    def _user(self, name: str, op: str, value: Any) -> tantivy.Query:
        """A ``fields.<path>`` comparison. The Python binding compiles terms
        and existence on JSON paths directly; numeric comparisons go through
        tantivy's query parser, whose ranges compare JSON numbers of any
        type (the path is checked to be plain words, the bound is a number)."""
        path = name
        if op == "exists":
            found = tantivy.Query.exists_query(path, json_subpaths=True)
            return found if value else _negate(found)
        if op == "eq" and isinstance(value, str):
            return tantivy.Query.term_query(self.schema, path, value)
        # Written out, never with an exponent: the query parser refused
        # "-1e+16" (a 500), though it takes "1e+16". A whole number as it is
        # (through a float, 2^63 - 1 became 2^63, past the index's integers).
        bound = str(value) if isinstance(value, int) else format(Decimal(repr(float(value))), "f")
        syntax = {"eq": f"[{bound} TO {bound}]", "lt": f"{{* TO {bound}}}", "le": f"[* TO {bound}]",
                  "gt": f"{{{bound} TO *}}", "ge": f"[{bound} TO *]"}[op]
        return self.index.parse_query(f"{path}:{syntax}")

    # ------------------------------------------------------------ orders

    def _walk_of(self, query: q.Query, now_ms: int, through: int) -> tuple[str, Any, int, int]:
        """A relevance walk's id, and the searcher, clock and feed cursor its
        pages read (no searcher on its first page, or once it was let go:
        then the index as it is now). The cursor's key names the walk."""
        if query.cursor is None:
            return secrets.token_hex(8), None, now_ms, through
        walk = q.decode_cursor(query.cursor, query.sort).key
        with self._pins_lock:
            pinned = self._pinned.get(walk)
        if pinned is None:
            return walk, None, now_ms, through
        return walk, pinned[0], pinned[1], pinned[2]

    def _pin(self, walk: str, searcher: Any, now_ms: int, through: int) -> None:
        """Keep ``walk``'s searcher for its next page (PIN_SECONDS from now)."""
        now = time.monotonic()
        with self._pins_lock:
            for stale in [w for w, (_, _, _, until) in self._pinned.items() if until < now]:
                del self._pinned[stale]
            self._pinned.pop(walk, None)
            while len(self._pinned) >= MAX_PINNED:
                del self._pinned[next(iter(self._pinned))]  # the one whose page came longest ago
            self._pinned[walk] = (searcher, now_ms, through, now + PIN_SECONDS)

    def _by_relevance(self, searcher: Any, query: q.Query, base: tantivy.Query, now_ms: int,
                      registries: tuple[str, ...] | None, walk: str) -> tuple[list[Hit], str | None]:
        """One page of the query's one fixed order (every page of a walk
        cuts the same list, read by the same searcher: ``_walk_of``): a
        cursor is a position in it.

        Text alone: best BM25 first, ties in tantivy's order (``_text_order``).
        Freshness, trust, boosts and meaning rerank the best ``RERANK_WINDOW``
        only (a window that grew with the page, as it did, chose other hits
        for each page, so a walk repeated some and never reached others);
        text hits beyond it follow in text order. Semantic search has no text order to follow:
        its pages end with the window."""
        start = 0
        if query.cursor is not None:
            start = int(q.decode_cursor(query.cursor, query.sort).value)
        depth = min(q.MAX_RELEVANCE_WINDOW, start + query.limit + 1)  # one more: is there a next page
        reranked = (query.weights.freshness > 0 or query.weights.trust > 0 or bool(query.boosts)
                    or query.mode != "text")
        text: list[Hit] = []
        if query.mode in ("text", "hybrid"):
            text = self._text_order(searcher, base, max(depth, RERANK_WINDOW) if reranked else depth)
        if reranked:
            head = text[:RERANK_WINDOW]
            if query.mode in ("semantic", "hybrid"):
                head = self._fuse(head, self._nearest(searcher, query, registries, RERANK_WINDOW), query.mode)
            boosts = [(self.compile(b.filter), b.factor) for b in query.boosts]
            rank(head, query.weights, now_ms, self._boosted_keys(searcher, boosts, [h.key for h in head]))
            head.sort(key=lambda h: (-h.score, h.kid))
            shown = {h.key for h in head}
            tail = [h for h in text[RERANK_WINDOW:] if h.key not in shown]
            rank(tail, query.weights, now_ms, {}, best=max((h.relevance for h in text[:1]), default=0.0))
            hits = head + tail
        else:
            rank(text, query.weights, now_ms, {})
            hits = text
        page = hits[start:start + query.limit]
        more = start + query.limit < min(len(hits), q.MAX_RELEVANCE_WINDOW)
        cursor = q.encode_cursor(q.Cursor("relevance", start + query.limit, walk)) if page and more else None
        return page, cursor

    def _text_order(self, searcher: Any, base: tantivy.Query, n: int) -> list[Hit]:
        """The first ``n`` text hits, best BM25 first, in tantivy's order:
        ties by document address, so that the first n are a prefix of one
        order whatever n is, while the index holds the same documents (as a
        positional cursor needs). Ordering ties by kid, as this did, took a
        different set of tied hits for each page."""
        hits = []
        for rank_no, (score, address) in enumerate(searcher.search(base, n, count=False).hits, 1):
            hit = self._hit(searcher, address, score, None)
            hit.signals = {"bm25": float(score), "bm25_rank": rank_no}
            hits.append(hit)
        return hits

    def _nearest(self, searcher: Any, query: q.Query, registries: tuple[str, ...] | None,
                 window: int) -> list[Hit]:
        """The records nearest the query text by meaning that pass its filter
        and registries, nearest first (asks the vector index for more than
        the window, since a filter may drop some)."""
        assert query.text is not None
        nearest = self.vectors.search(query.text, min(4 * window, 4 * q.MAX_RELEVANCE_WINDOW))
        if not nearest:
            return []
        similarity = dict(nearest)
        allowed = _and(self._base(query, registries, text=False),
                       tantivy.Query.term_set_query(self.schema, "kid", list(similarity)))
        # Ordered by kid, a hit's order key is its kid (a fast field): the
        # survivors are ranked by similarity before any document is loaded.
        passed = [(int(kid), address) for kid, address in searcher.search(
            allowed, len(similarity), count=False, order_by_field="kid", order=tantivy.Order.Asc).hits]
        passed.sort(key=lambda pair: (-similarity[pair[0]], pair[0]))
        found = []
        for rank_no, (kid, address) in enumerate(passed[:window], 1):
            hit = self._hit(searcher, address, 0.0, None)
            hit.relevance = similarity[kid]
            hit.signals = {"similarity": similarity[kid], "vector_rank": rank_no}
            found.append(hit)
        return found

    @staticmethod
    def _fuse(text_hits: list[Hit], vector_hits: list[Hit], mode: str) -> list[Hit]:
        """Semantic: the vector hits. Hybrid: reciprocal rank fusion (k=60) of
        the BM25 and vector rankings, each hit's relevance its fused score."""
        if mode == "semantic":
            return vector_hits
        merged: dict[str, Hit] = {}
        for hit in [*text_hits, *vector_hits]:
            kept = merged.setdefault(hit.key, hit)
            if kept is not hit:
                kept.signals = {**(kept.signals or {}), **(hit.signals or {})}
        for hit in merged.values():
            signals = hit.signals or {}
            rrf = sum(1.0 / (RRF_K + signals[name]) for name in ("bm25_rank", "vector_rank") if name in signals)
            hit.relevance = rrf
            hit.signals = {**signals, "rrf": rrf}
        return list(merged.values())

    def _boosted_keys(self, searcher: Any, boosts: list[tuple[tantivy.Query, float]],
                      keys: list[str]) -> dict[str, float]:
        """key -> product of the factors of the boosts it matches, for ``keys``."""
        out: dict[str, float] = {}
        if not boosts or not keys:
            return out
        among = tantivy.Query.term_set_query(self.schema, "key", keys)
        for compiled, factor in boosts:
            both = tantivy.Query.boolean_query([(tantivy.Occur.Must, among), (tantivy.Occur.Must, compiled)])
            for _, address in searcher.search(both, len(keys), count=False).hits:
                key = searcher.doc(address)["key"][0]
                out[key] = out.get(key, 1.0) * factor
        return out

    def _by_field(self, searcher: Any, query: q.Query, base: tantivy.Query) -> tuple[list[Hit], str | None]:
        """Keyset pages over (field, kid): hits after the cursor, ties of the
        page's last value completed in kid order so the next page starts clean."""
        field, desc = query.sort.field, query.sort.descending
        keyword = q.FIELDS[field].type == q.KEYWORD
        has = tantivy.Query.boolean_query([(tantivy.Occur.Must, base),
                                           (tantivy.Occur.Must, tantivy.Query.exists_query(field))])
        limit = query.limit
        page: list[Hit] = []
        after: Any = None
        if query.cursor is not None:
            cursor = q.decode_cursor(query.cursor, query.sort)
            after = cursor.value
            page += self._ties(searcher, has, field, after, int(_kid_of_cursor(cursor)), limit)
            if keyword and len(page) < limit:
                page += self._prefix_group_after(searcher, has, field, after, desc, limit - len(page))
        if len(page) < limit:
            beyond = has if after is None else _and(has, self._beyond(field, after, desc))
            want = limit - len(page)
            found = searcher.search(beyond, want, count=False, order_by_field=field,
                                    order=tantivy.Order.Desc if desc else tantivy.Order.Asc).hits
            rows = [self._hit(searcher, address, 0.0, value) for value, address in found]
            if len(rows) == want and rows:
                last = rows[-1].value
                page += _in_order([h for h in rows if h.value != last], desc)
                page += self._ties(searcher, has, field, last, None, limit - len(page))
            else:
                page += _in_order(rows, desc)
        page = page[:limit]
        cursor_text = None
        if len(page) == limit:
            last_hit = page[-1]
            cursor_text = q.encode_cursor(q.Cursor(field, last_hit.value, f"{last_hit.kid}"))
        return page, cursor_text

    def _beyond(self, field: str, value: Any, desc: bool) -> tantivy.Query:
        """Values strictly after ``value`` in the sort's direction; for a
        keyword, those whose whole prefix is (its own group comes apart)."""
        op = "lt" if desc else "gt"
        if q.FIELDS[field].type != q.KEYWORD:
            return _range(self.schema, field, _ftype(field), op, value)
        (p0, p1), (n0, n1) = _prefix_fields(field), _prefix_numbers(value)
        u64 = tantivy.FieldType.Unsigned
        return tantivy.Query.boolean_query([
            (tantivy.Occur.Should, _range(self.schema, p0, u64, op, n0)),
            (tantivy.Occur.Should, _and(_range(self.schema, p0, u64, "eq", n0), _range(self.schema, p1, u64, op, n1))),
        ])

    def _prefix_group_after(self, searcher: Any, has: tantivy.Query, field: str, value: str, desc: bool,
                            limit: int) -> list[Hit]:
        """The hits whose keyword shares ``value``'s prefix and sorts after it
        (its own ties excepted: ``_ties`` gives those), in order, at most
        ``limit``, their last value's ties completed."""
        (p0, p1), (n0, n1) = _prefix_fields(field), _prefix_numbers(value)
        u64 = tantivy.FieldType.Unsigned
        group = _and(has, _range(self.schema, p0, u64, "eq", n0), _range(self.schema, p1, u64, "eq", n1))
        order = tantivy.Order.Desc if desc else tantivy.Order.Asc
        rows: list[Hit] = []
        offset, chunk = 0, 1000
        while True:  # the values before ``value`` come first: page past them
            found = searcher.search(group, chunk, count=False, order_by_field=field, order=order, offset=offset).hits
            rows += [self._hit(searcher, address, 0.0, found_value) for found_value, address in found
                     if (found_value < value if desc else found_value > value)]
            offset += chunk
            if len(rows) > limit or len(found) < chunk:
                break
        if len(rows) <= limit:
            return _in_order(rows, desc)
        rows = _in_order(rows, desc)
        last = rows[limit - 1].value
        kept = [h for h in rows[:limit] if h.value != last]
        return kept + self._ties(searcher, has, field, last, None, limit - len(kept))

    def _ties(self, searcher: Any, has: tantivy.Query, field: str, value: Any, after_kid: int | None,
              limit: int) -> list[Hit]:
        if limit <= 0:
            return []
        equal = (tantivy.Query.term_query(self.schema, field, value) if q.FIELDS[field].type == q.KEYWORD
                 else _range(self.schema, field, _ftype(field), "eq", value))
        clauses = [has, equal]
        if after_kid is not None:
            clauses.append(_range(self.schema, "kid", tantivy.FieldType.Integer, "gt", after_kid))
        found = searcher.search(_and(*clauses), limit, count=False, order_by_field="kid",
                                order=tantivy.Order.Asc).hits
        return [self._hit(searcher, address, 0.0, value) for _, address in found]

    def _hit(self, searcher: Any, address: Any, score: float, value: Any) -> Hit:
        doc = searcher.doc(address)
        key = doc["key"][0]
        registry, _, record_id = key.partition("\0")
        reputation = doc.get_first("reputation")
        return Hit(key, registry, record_id, float(score), int(doc.get_first("updated_at") or 0),
                   bool(doc.get_first("verified")), reputation, value, int(doc["kid"][0]))

    def _facets(self, searcher: Any, query: q.Query, base: tantivy.Query) -> dict[str, list[dict[str, Any]]]:
        # The 50 most frequent values (the API documents the cap).
        spec = {name: {"terms": {"field": name, "size": 50}} for name in query.facets}
        answer = searcher.aggregate(base, spec)
        out: dict[str, list[dict[str, Any]]] = {}
        for name in query.facets:
            buckets = answer.get(name, {}).get("buckets", [])
            if q.FIELDS[name].type == q.BOOL:
                out[name] = [{"value": b["key_as_string"] == "true", "count": b["doc_count"]} for b in buckets]
            else:
                out[name] = [{"value": b["key"], "count": b["doc_count"]} for b in buckets]
        return out


def _prefix_fields(field: str) -> tuple[str, str]:
    return f"{field}__p0", f"{field}__p1"


def _prefix_numbers(value: str) -> tuple[int, int]:
    """The first PREFIX_BYTES of ``value``'s UTF-8, zero-padded, as two
    big-endian numbers: s < t in byte order implies the pair of s is at
    most t's."""
    head = value.encode()[:PREFIX_BYTES].ljust(PREFIX_BYTES, b"\0")
    return int.from_bytes(head[:8], "big"), int.from_bytes(head[8:], "big")


def _ftype(field: str) -> Any:
    return tantivy.FieldType.Float if q.FIELDS[field].type == q.NUMBER else tantivy.FieldType.Integer


def _in_order(hits: list[Hit], desc: bool) -> list[Hit]:
    """Hits by value in the sort's direction, ties by kid (two stable sorts:
    strings can't be negated)."""
    hits = sorted(hits, key=lambda h: h.kid)
    hits.sort(key=lambda h: h.value, reverse=desc)
    return hits


def _kid_of_cursor(cursor: q.Cursor) -> int:
    try:
        return int(cursor.key)
    except ValueError:
        raise ValidationError("query/cursor: not a cursor this node made",
                              details=[{"path": "/cursor", "message": "malformed"}]) from None


def _and(*queries: tantivy.Query) -> tantivy.Query:
    return tantivy.Query.boolean_query([(tantivy.Occur.Must, x) for x in queries])


def _negate(query: tantivy.Query) -> tantivy.Query:
    return tantivy.Query.boolean_query([(tantivy.Occur.Must, tantivy.Query.all_query()),
                                        (tantivy.Occur.MustNot, query)])


def _range(schema: Any, field: str, ftype: Any, op: str, value: Any) -> tantivy.Query:
    cast = float(value) if ftype == tantivy.FieldType.Float else int(value)
    if ftype == tantivy.FieldType.Integer and cast != value:  # a date compared with a fraction of a ms
        cast = math.floor(value) if op in ("gt", "le") else math.ceil(value)
        if op == "eq":
            return tantivy.Query.empty_query()
    if op == "eq":
        return tantivy.Query.range_query(schema, field, ftype, cast, cast)
    if op in ("lt", "le"):
        return tantivy.Query.range_query(schema, field, ftype, None, cast, include_upper=op == "le")
    return tantivy.Query.range_query(schema, field, ftype, cast, None, include_lower=op == "ge")


def _json_safe(value: Any) -> Any:
    """Record fields as the JSON field holds them: the values ``query.lookup``
    compares (long strings are left to full text)."""
    kind = type(value)  # record fields are decoded JSON: plain dicts and lists (exact checks are faster)
    if kind is dict:
        return {k: _json_safe(v) for k, v in value.items()}
    if kind is list:
        return [_json_safe(v) for v in value]
    if kind is float and not math.isfinite(value):
        return None
    if kind is str and len(value) > q.MAX_VALUE_CHARS:
        return None
    return value


def rank(hits: list[Hit], weights: q.Weights, now_ms: int, boosted: Mapping[str, float], *,
         best: float | None = None) -> None:
    """Each hit's score: its relevance (BM25, similarity or fused rank, over
    ``best``, by default the best of ``hits``), freshness (halves every
    ``FRESHNESS_HALF_LIFE_DAYS``) and trust (a verified owner 0.6, its
    reputation up to 0.4), weighted, times its boosts."""
    best = (best if best is not None else max((h.relevance for h in hits), default=0.0)) or 1.0
    for h in hits:
        age_days = max(0.0, (now_ms - h.updated_at) / 86_400_000)
        freshness = 0.5 ** (age_days / FRESHNESS_HALF_LIFE_DAYS)
        reputation = min(1.0, max(0.0, h.reputation)) if h.reputation is not None else 0.0
        trust = (0.6 if h.verified else 0.0) + 0.4 * reputation
        components = {"text": weights.text * h.relevance / best, "freshness": weights.freshness * freshness,
                      "trust": weights.trust * trust}
        boost = boosted.get(h.key, 1.0)
        h.score = sum(components.values()) * boost
        h.components = {**components, **(h.signals or {}), "boost": boost}
