"""What an asset's bytes say about themselves, read from the head of them.

    extracted = extract("model.safetensors", "application/octet-stream", chunks)
    extracted.format, extracted.parameters, extracted.dtypes

``extract`` recognises a format by its magic bytes first, then by the
name's extension or the content type, and reads only as far as that
format's header (a ZIP is the exception: its listing needs the whole
archive, blobs/zipfiles.py). Unknown formats give an empty ``Extracted``;
a file that claims a known format and breaks it raises MetadataMalformed,
and one whose header exceeds a bound here raises MetadataRefused.

The normalized fields (``Extracted``; absent ones are None or empty):

==============  ==========================================================
format          "safetensors", "gguf", "zip", "model-card"; None: unknown
parameters      weights: the sum over tensors of the product of the shape
tensor_count    weights: how many tensors
dtypes          weights: element types, sorted ("BF16", "F32", "Q4_K")
architecture    GGUF ``general.architecture`` ("llama")
name            GGUF ``general.name``
context_length  GGUF ``<architecture>.context_length``
quantization    GGUF ``general.file_type`` by name ("Q4_K_M", "F16")
license         card ``license``, GGUF ``general.license``
languages       card ``language``, GGUF ``general.languages``
tags            card ``tags``, GGUF ``general.tags``
base_models     card ``base_model``
datasets        card ``datasets``
pipeline_tag    card ``pipeline_tag`` ("text-generation")
library_name    card ``library_name`` ("transformers")
entry_count     ZIP: entries
total_size      ZIP: expanded bytes of all entries
top_level       ZIP: first name segments (directories end in "/"), sorted
metadata        safetensors ``__metadata__`` as is; GGUF: the scalar
                key/values (numbers, booleans, strings up to 1 KiB)
==============  ==========================================================

Model cards are Hugging Face's: YAML front matter at the top of a
README.md, or the same keys in a JSON (or YAML) object.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Iterable, Iterator
from typing import Any

import msgspec
import yaml

from registrygrid.blobs.zipfiles import DEFAULT_LIMITS, ZipLimits, manifest
from registrygrid.errors import MalformedInput, ValidationError


class MetadataMalformed(MalformedInput):
    """The bytes claim a format (by magic, name or content type) and break it.

    422, as ZipMalformed: the bytes are a stored blob's, not a request's."""

    code = "metadata_malformed"
    http_status = 422


class MetadataRefused(ValidationError):
    """A header beyond the bounds this module reads, or a version it does not know."""

    code = "metadata_refused"


Scalar = str | int | float | bool


class Extracted(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    format: str | None = None
    parameters: int | None = None
    tensor_count: int | None = None
    dtypes: tuple[str, ...] = ()
    architecture: str | None = None
    name: str | None = None
    context_length: int | None = None
    quantization: str | None = None
    license: str | None = None
    languages: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    base_models: tuple[str, ...] = ()
    datasets: tuple[str, ...] = ()
    pipeline_tag: str | None = None
    library_name: str | None = None
    entry_count: int | None = None
    total_size: int | None = None
    top_level: tuple[str, ...] = ()
    metadata: dict[str, Scalar] = msgspec.field(default_factory=dict)


# ---- bounds

# safetensors' own reader refuses headers over 100,000,000 bytes
# (MAX_HEADER_SIZE, "to prevent parsing extremely large JSON").
MAX_SAFETENSORS_HEADER = 100_000_000
# GGUF has no header limit. Its biggest part is the tokenizer: a 128k-token
# vocabulary with scores, types and 280k BPE merges is ~10 MB (parsed here
# in 0.2 s), a 256k one about twice that. 64 MiB leaves room for a file
# that also embeds tokenizer.json, and bounds a hostile header of 1-byte
# strings to ~4 s here.
MAX_GGUF_HEADER = 64 << 20
# The GGUF spec caps keys at 65,535 bytes; values get 16 MiB, enough for an
# embedded tokenizer.json. Arrays: the largest vocabularies and merge lists
# have well under a million items.
MAX_GGUF_KEY = 0xFFFF
MAX_GGUF_STRING = 16 << 20
MAX_GGUF_ARRAY = 1 << 24
# Nested arrays are allowed by the spec and unused in practice.
MAX_GGUF_NESTING = 4
# ggml's GGML_MAX_DIMS and GGML_MAX_NAME.
MAX_GGUF_DIMS = 4
MAX_GGUF_TENSOR_NAME = 64
# ggml stacks a MoE layer's experts in one tensor, so even the largest
# models have a few thousand tensors per file; key/values are a few dozen
# besides the tokenizer's. Each tensor info costs a few reads to parse.
MAX_GGUF_TENSORS = 1 << 16
MAX_GGUF_KEYS = 1 << 16
# A model card's metadata is a screenful of YAML: a few KiB, a few tens with
# a model-index of evaluation results. PyYAML's safe_load (pure Python)
# parses ~90 KB/s of hostile-shaped YAML here (900 KB: 10 s), so 64 KiB
# keeps a crafted card under a second of work.
MAX_CARD_BYTES = 64 << 10
# Lists and strings kept from cards and GGUF: enough for any real card,
# small enough to put in a record.
MAX_LIST_ITEMS = 256
MAX_TEXT = 256
# GGUF strings kept in ``metadata`` (chat templates are longer and left out).
MAX_KEPT_STRING = 1024


def extract(name: str, content_type: str | None, head_chunks: Iterable[bytes], *,
            zip_limits: ZipLimits = DEFAULT_LIMITS) -> Extracted:
    """The metadata of the file ``name`` whose bytes start with ``head_chunks``
    (for a ZIP: the whole archive). Reads no further than needed."""
    head = _Head(head_chunks)
    start = head.peek(9)
    base = name.rsplit("/", 1)[-1].lower()
    kind = (content_type or "").split(";", 1)[0].strip().lower()
    if start.startswith(b"GGUF"):
        return _gguf(head)
    if start.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return _zip(head, zip_limits)
    if _looks_like_safetensors(start) or base.endswith(".safetensors"):
        return _safetensors(head)
    if base.endswith(".gguf"):
        raise MetadataMalformed(f"{name!r} does not start with the GGUF magic")
    if base.endswith(".zip") or kind in ("application/zip", "application/x-zip-compressed"):
        return _zip(head, zip_limits)
    if base.endswith((".md", ".markdown")) or kind == "text/markdown":
        return _front_matter_card(head)
    if base.endswith(".json") or kind == "application/json":
        return _object_card(head, msgspec.json.decode)
    if base.endswith((".yaml", ".yml")) or kind in ("application/yaml", "application/x-yaml", "text/yaml"):
        return _object_card(head, yaml.safe_load)
    return Extracted()


class _Head:
    """Bytes from the start of a stream, pulled a chunk at a time only as
    they are asked for. ``limit`` (None: none) bounds what ``read`` and
    ``skip`` may consume; ``what`` names the file in errors."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._source = iter(chunks)
        self._buf = bytearray()
        self._pos = 0
        self.consumed = 0
        self.limit: int | None = None
        self.what = "the file"

    # -- looking ahead, consuming nothing

    def more(self) -> bool:
        """Pull one more chunk into the buffer; False at the end of the stream."""
        chunk = next(self._source, None)
        if chunk is None:
            return False
        if self._pos:
            del self._buf[:self._pos]
            self._pos = 0
        self._buf += chunk
        return True

    def _fill(self, n: int) -> bool:
        while len(self._buf) - self._pos < n:
            if not self.more():
                return False
        return True

    def peek(self, n: int) -> bytes:
        """Up to ``n`` bytes ahead: fewer only at the end of the stream."""
        self._fill(n)
        return bytes(self._buf[self._pos:self._pos + n])

    def buffered(self) -> bytes:
        return bytes(self._buf[self._pos:])

    # -- consuming

    def _check_limit(self, n: int) -> None:
        if self.limit is not None and self.consumed + n > self.limit:
            raise MetadataRefused(f"{self.what}'s header is longer than {self.limit} bytes, "
                                  "the most read here", details={"limit": self.limit})

    def _truncated(self) -> MetadataMalformed:
        return MetadataMalformed(f"{self.what} ends inside its header (truncated)")

    def read(self, n: int) -> bytes:
        """Exactly ``n`` bytes."""
        self._check_limit(n)
        if not self._fill(n):
            raise self._truncated()
        out = bytes(self._buf[self._pos:self._pos + n])
        self._pos += n
        self.consumed += n
        return out

    def read_upto(self, n: int) -> bytes:
        """Up to ``n`` bytes: fewer only at the end of the stream."""
        out = self.peek(n)
        self._pos += len(out)
        self.consumed += len(out)
        return out

    def skip(self, n: int) -> None:
        """Read past ``n`` bytes without copying them out."""
        self._check_limit(n)
        if not self._fill(n):
            raise self._truncated()
        self._pos += n
        self.consumed += n

    def skip_strings(self, count: int, order: str, limit: int) -> None:
        """Read past ``count`` strings of a u64 length and that many bytes,
        making no object of each: a tokenizer has 10^5 of them."""
        length_of = struct.Struct(order + "Q").unpack_from
        for _ in range(count):
            if not self._fill(8):
                raise self._truncated()
            length = length_of(self._buf, self._pos)[0]
            if length > limit:
                raise MetadataRefused(f"a string of {length} bytes in {self.what} is longer than {limit}",
                                      details={"limit": limit})
            self.skip(8 + length)

    # -- handing the stream on

    def pull(self) -> bytes | None:
        """The next chunk of the stream, bypassing the buffer (for a reader
        that took ``buffered()`` and reads nothing through this one again)."""
        return next(self._source, None)

    def rest(self) -> Iterator[bytes]:
        """Every byte not yet consumed, as chunks."""
        if len(self._buf) > self._pos:
            yield bytes(self._buf[self._pos:])
        self._buf.clear()
        self._pos = 0
        yield from self._source


# ---- safetensors: u64 LE header length, JSON header, then the tensor bytes

# Bits per element of the types safetensors defines (safetensors/src/tensor.rs
# Dtype); a type not listed is accepted by name without a size check.
_SAFETENSORS_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32, "C64": 64,
    "I64": 64, "U64": 64, "F64": 64,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}
_DTYPE = re.compile(r"^[A-Z][A-Z0-9_]{0,15}$")


def _looks_like_safetensors(start: bytes) -> bool:
    # A header length that fits the format's limit, then the JSON's '{'
    # (the format requires it as the header's first byte).
    if len(start) < 9:
        return False
    length = struct.unpack_from("<Q", start)[0]
    return 2 <= length <= MAX_SAFETENSORS_HEADER and start[8:9] == b"{"


def _safetensors(head: _Head) -> Extracted:
    head.what = "the safetensors file"
    length = struct.unpack("<Q", head.read(8))[0]
    if length > MAX_SAFETENSORS_HEADER:
        raise MetadataRefused(f"a safetensors header of {length} bytes is over the format's "
                              f"{MAX_SAFETENSORS_HEADER}-byte limit", details={"limit": MAX_SAFETENSORS_HEADER})
    if length < 2:
        raise MetadataMalformed("the safetensors header is empty")
    raw = head.read(length)
    if raw[:1] != b"{":
        raise MetadataMalformed("the safetensors header does not start with '{'")
    try:
        header = msgspec.json.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # msgspec raises the latter for bad UTF-8
        raise MetadataMalformed(f"the safetensors header is not valid UTF-8 JSON: {exc}") from None
    if not isinstance(header, dict):
        raise MetadataMalformed("the safetensors header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise MetadataMalformed("safetensors __metadata__ must map strings to strings")
    spans = []
    parameters = 0
    dtypes = set()
    for tensor, info in header.items():
        dtype, count, begin, end = _tensor_info(tensor, info)
        bits = _SAFETENSORS_BITS.get(dtype)
        if bits is not None and (count * bits % 8 or (end - begin) != count * bits // 8):
            raise MetadataMalformed(f"tensor {tensor[:100]!r}: {end - begin} bytes do not hold "
                                    f"{count} elements of {dtype}")
        spans.append((begin, end, tensor))
        parameters += count
        dtypes.add(dtype)
    # As safetensors' own validation: the tensors tile the byte buffer in
    # offset order, with no gap and no overlap.
    position = 0
    for begin, end, tensor in sorted(spans):
        if begin != position:
            raise MetadataMalformed(f"tensor {tensor[:100]!r} starts at {begin}, not at {position}: "
                                    "the data offsets overlap or leave a gap")
        position = end
    return Extracted(format="safetensors", parameters=parameters, tensor_count=len(spans),
                     dtypes=tuple(sorted(dtypes)), metadata=_kept_strings(meta))


def _kept_strings(meta: dict[str, str]) -> dict[str, str]:
    """What a blob's index entry keeps of a safetensors ``__metadata__``:
    the first MAX_LIST_ITEMS keys in order, each at most MAX_TEXT long with a
    value at most MAX_KEPT_STRING long (longer ones are left out, as GGUF's
    are). It was kept whole: a 20 MB header was stored in the index and
    sent in every finalize, meta and asset info answer."""
    kept: dict[str, str] = {}
    for key in sorted(meta):
        if len(kept) >= MAX_LIST_ITEMS:
            break
        if len(key) <= MAX_TEXT and len(meta[key]) <= MAX_KEPT_STRING:
            kept[key] = meta[key]
    return kept


def _tensor_info(tensor: str, info: Any) -> tuple[str, int, int, int]:
    def bad(why: str) -> MetadataMalformed:
        return MetadataMalformed(f"tensor {tensor[:100]!r} in the safetensors header: {why}")

    if not isinstance(info, dict):
        raise bad("not an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str) or not _DTYPE.fullmatch(dtype):
        raise bad(f"dtype {dtype!r} is not a type name")
    if not isinstance(shape, list) or not all(_whole(d) for d in shape):
        raise bad("shape must be a list of whole numbers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_whole(o) for o in offsets)
            and offsets[0] <= offsets[1]):
        raise bad("data_offsets must be [begin, end] with begin <= end")
    return dtype, math.prod(shape), offsets[0], offsets[1]


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# ---- GGUF (ggml docs/gguf.md): magic, version, counts, typed key/values, tensor infos

_GGUF_UINT8, _GGUF_INT8, _GGUF_UINT16, _GGUF_INT16, _GGUF_UINT32, _GGUF_INT32 = range(6)
_GGUF_FLOAT32, _GGUF_BOOL, _GGUF_STRING, _GGUF_ARRAY, _GGUF_UINT64, _GGUF_INT64, _GGUF_FLOAT64 = range(6, 13)
_GGUF_NUMBERS = {
    _GGUF_UINT8: "B", _GGUF_INT8: "b", _GGUF_UINT16: "H", _GGUF_INT16: "h",
    _GGUF_UINT32: "I", _GGUF_INT32: "i", _GGUF_FLOAT32: "f",
    _GGUF_UINT64: "Q", _GGUF_INT64: "q", _GGUF_FLOAT64: "d",
}

# ggml_type (ggml.h); gaps are types since removed.
_GGML_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1",
    10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K",
    16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S",
    22: "IQ2_S", 23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64",
    29: "IQ1_M", 30: "BF16", 34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4",
}
# llama_ftype (llama.h, LLAMA_FTYPE_MOSTLY_*), the value of general.file_type.
_FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
    10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M",
    16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S",
    22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M",
    28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0",
    37: "TQ2_0", 38: "MXFP4_MOE",
}
_SKIPPED = object()  # a value read past but not kept (long strings, big arrays)


class _GGUFReader:
    def __init__(self, head: _Head, order: str) -> None:
        self.head = head
        self.order = order  # '<' or '>': GGUF v3 files may be big-endian

    def number(self, code: str) -> Any:
        fmt = self.order + code
        return struct.unpack(fmt, self.head.read(struct.calcsize(fmt)))[0]

    def string(self, limit: int, *, keep: int | None = None) -> Any:
        length = self.number("Q")
        if length > limit:
            raise MetadataRefused(f"a GGUF string of {length} bytes is longer than {limit}", details={"limit": limit})
        if keep is not None and length > keep:
            self.head.skip(length)
            return _SKIPPED
        return self.head.read(length).decode("utf-8", "replace")

    def value(self, kind: int, depth: int = 0) -> Any:
        if kind in _GGUF_NUMBERS:
            return self.number(_GGUF_NUMBERS[kind])
        if kind == _GGUF_BOOL:
            byte = self.head.read(1)[0]
            if byte > 1:
                raise MetadataMalformed(f"a GGUF bool holds {byte}, not 0 or 1")
            return bool(byte)
        if kind == _GGUF_STRING:
            return self.string(MAX_GGUF_STRING, keep=MAX_KEPT_STRING)
        if kind == _GGUF_ARRAY:
            return self.array(depth + 1)
        raise MetadataMalformed(f"unknown GGUF value type {kind}")

    def array(self, depth: int) -> Any:
        if depth > MAX_GGUF_NESTING:
            raise MetadataRefused(f"GGUF arrays nested deeper than {MAX_GGUF_NESTING}")
        kind = self.number("I")
        count = self.number("Q")
        if count > MAX_GGUF_ARRAY:
            raise MetadataRefused(f"a GGUF array of {count} items is longer than {MAX_GGUF_ARRAY}",
                                  details={"limit": MAX_GGUF_ARRAY})
        if kind in _GGUF_NUMBERS or kind == _GGUF_BOOL:
            size = 1 if kind == _GGUF_BOOL else struct.calcsize(_GGUF_NUMBERS[kind])
            if count > MAX_LIST_ITEMS:
                self.head.skip(size * count)
                return _SKIPPED
            data = self.head.read(size * count)
            if kind == _GGUF_BOOL:
                return [bool(b) for b in data]
            return list(struct.unpack(f"{self.order}{count}{_GGUF_NUMBERS[kind]}", data))
        if kind == _GGUF_STRING and count > MAX_LIST_ITEMS:
            self.head.skip_strings(count, self.order, MAX_GGUF_STRING)
            return _SKIPPED
        items = [self.value(kind, depth) for _ in range(count)]
        return _SKIPPED if count > MAX_LIST_ITEMS else items


def _gguf(head: _Head) -> Extracted:
    head.what = "the GGUF file"
    head.limit = MAX_GGUF_HEADER
    head.read(4)  # the magic, checked by the caller
    raw_version = head.read(4)
    order = "<"
    version = struct.unpack("<I", raw_version)[0]
    if version not in (2, 3) and struct.unpack(">I", raw_version)[0] in (2, 3):
        order, version = ">", struct.unpack(">I", raw_version)[0]
    if version == 1:
        raise MetadataRefused("GGUF version 1 (32-bit counts, before August 2023) is not read; "
                              "versions 2 and 3 are", details={"version": 1})
    if version not in (2, 3):
        raise MetadataMalformed(f"unknown GGUF version {version}")
    reader = _GGUFReader(head, order)
    tensor_count, kv_count = reader.number("Q"), reader.number("Q")
    if tensor_count > MAX_GGUF_TENSORS or kv_count > MAX_GGUF_KEYS:
        raise MetadataRefused(f"a GGUF header with {tensor_count} tensors and {kv_count} key/values is over "
                              f"the bounds ({MAX_GGUF_TENSORS}, {MAX_GGUF_KEYS})")
    kv: dict[str, Any] = {}
    for _ in range(kv_count):
        key = reader.string(MAX_GGUF_KEY)
        kv[key] = reader.value(reader.number("I"))
    parameters = 0
    dtypes = set()
    for _ in range(tensor_count):
        reader.string(MAX_GGUF_TENSOR_NAME)
        dims = reader.number("I")
        if dims > MAX_GGUF_DIMS:
            raise MetadataMalformed(f"a GGUF tensor with {dims} dimensions (ggml has at most {MAX_GGUF_DIMS})")
        parameters += math.prod(reader.number("Q") for _ in range(dims))
        kind = reader.number("I")
        dtypes.add(_GGML_TYPES.get(kind, f"TYPE_{kind}"))
        reader.number("Q")  # the tensor's offset in the data section
    architecture = _text(kv.get("general.architecture"))
    file_type = kv.get("general.file_type")
    return Extracted(
        format="gguf", parameters=parameters, tensor_count=tensor_count, dtypes=tuple(sorted(dtypes)),
        architecture=architecture, name=_text(kv.get("general.name")),
        context_length=_count(kv.get(f"{architecture}.context_length")) if architecture else None,
        quantization=_FILE_TYPES.get(file_type, f"TYPE_{file_type}") if _count(file_type) is not None else None,
        license=_text(kv.get("general.license")), languages=_texts(kv.get("general.languages")),
        tags=_texts(kv.get("general.tags")),
        metadata={k: v for k, v in kv.items() if isinstance(v, (str, int, float, bool))},
    )


# ---- ZIP


def _zip(head: _Head, limits: ZipLimits) -> Extracted:
    listing = manifest(head.rest(), limits=limits)
    return Extracted(format="zip", entry_count=len(listing.entries), total_size=listing.total_size,
                     top_level=listing.top_level()[:MAX_LIST_ITEMS])


# ---- model cards (Hugging Face: YAML front matter in README.md, or the same keys in an object)

_CARD_KEYS = ("license", "language", "tags", "base_model", "datasets", "pipeline_tag", "library_name")
_FRONT_MATTER_START = re.compile(rb"---[ \t]*\r?\n")
_FRONT_MATTER_END = re.compile(rb"^(?:---|\.\.\.)[ \t]*(?:\r?\n|\Z)", re.MULTILINE)


def _front_matter_card(head: _Head) -> Extracted:
    head.what = "the model card"
    if head.peek(3) == b"\xef\xbb\xbf":  # a UTF-8 byte order mark
        head.read(3)
    if not _FRONT_MATTER_START.match(head.peek(64)):
        return Extracted()  # a README without front matter: nothing to normalize
    block = _front_matter(head)
    try:
        data = yaml.safe_load(block.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise MetadataMalformed(f"the model card's front matter is not valid YAML: {exc}") from None
    if data is None:
        return Extracted(format="model-card")
    if not isinstance(data, dict):
        raise MetadataMalformed("the model card's front matter is not a YAML mapping")
    return _card(data)


def _front_matter(head: _Head) -> bytes:
    """The YAML between the opening '---' line and the closing '---' (or
    '...') line, pulling chunks only until the closing line has arrived.
    Each pass scans from the last line that was not complete, so many small
    chunks cost no more than one big one."""
    text = bytearray(head.buffered())
    start = scan = text.index(b"\n") + 1
    while True:
        end = _FRONT_MATTER_END.search(text, scan)
        # A '---' at the very end of what has arrived may begin a longer
        # line: it closes only if the stream ends there.
        if end is not None and end.group().endswith(b"\n"):
            return bytes(text[start:end.start()])
        if len(text) > MAX_CARD_BYTES:
            raise MetadataRefused(f"the model card's front matter is longer than {MAX_CARD_BYTES} bytes",
                                  details={"limit": MAX_CARD_BYTES})
        chunk = head.pull()
        if chunk is None:
            if end is not None:
                return bytes(text[start:end.start()])
            raise MetadataMalformed("the model card's front matter has no closing '---' line")
        last_line = text.rfind(b"\n", scan)
        scan = last_line + 1 if last_line >= 0 else scan
        text += chunk


def _object_card(head: _Head, decode: Any) -> Extracted:
    """A JSON or YAML file is a model card only if it is an object with card
    keys; anything else (config.json, a 10 MB tokenizer.json) is not one."""
    text = head.read_upto(MAX_CARD_BYTES + 1)
    if len(text) > MAX_CARD_BYTES:
        return Extracted()
    try:
        data = decode(text)
    except (msgspec.DecodeError, yaml.YAMLError, UnicodeDecodeError):
        return Extracted()
    if isinstance(data, dict) and isinstance(data.get("cardData"), dict):
        data = data["cardData"]  # the Hub API's wrapping of a card
    if not isinstance(data, dict) or not any(key in data for key in _CARD_KEYS):
        return Extracted()
    return _card(data)


def _card(data: dict[str, Any]) -> Extracted:
    licenses = _texts(data.get("license"))
    return Extracted(
        format="model-card", license=licenses[0] if licenses else None,
        languages=_texts(data.get("language"), yaml_no=True), tags=_texts(data.get("tags")),
        base_models=_texts(data.get("base_model")), datasets=_texts(data.get("datasets")),
        pipeline_tag=_text(data.get("pipeline_tag")), library_name=_text(data.get("library_name")),
    )


def _text(value: Any) -> str | None:
    if isinstance(value, str) and value.strip() and len(value.strip()) <= MAX_TEXT:
        return value.strip()
    return None


def _texts(value: Any, *, yaml_no: bool = False) -> tuple[str, ...]:
    """A string or a list of them, as a tuple (bounded, order kept, no repeats).

    ``yaml_no``: YAML 1.1, which PyYAML follows, reads an unquoted ``no``
    (Norwegian's language code) as false; in a language list false can only
    have been that."""
    items = value if isinstance(value, list) else [value]
    out: list[str] = []
    for item in items[:MAX_LIST_ITEMS]:
        if item is False and yaml_no:
            item = "no"
        if isinstance(item, (int, float)) and not isinstance(item, bool):
            item = str(item)
        text = _text(item)
        if text is not None and text not in out:
            out.append(text)
    return tuple(out)


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None
