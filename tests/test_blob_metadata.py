"""Metadata from the head of an asset's bytes (blobs/metadata.py), over real
files written here per each format's spec: safetensors (header + zero
bytes), GGUF v2/v3 (a small writer below), ZIP, Hugging Face model cards."""

from __future__ import annotations

import io
import json
import math
import struct
import zipfile
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from registrygrid.blobs.metadata import (
    MAX_CARD_BYTES,
    MAX_SAFETENSORS_HEADER,
    Extracted,
    MetadataMalformed,
    MetadataRefused,
    extract,
)
from registrygrid.blobs.zipfiles import ZipLimits, ZipRefused
from registrygrid.errors import MalformedInput, ValidationError


def chunked(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start:start + size]


def then_explode(head: bytes, size: int = 4096) -> Iterator[bytes]:
    """``head``, then a stream that fails if anything reads past it."""
    yield from chunked(head, size)
    raise AssertionError("read past the header")


# ---- safetensors, written per the format: u64 LE length, JSON header, bytes

_BYTES_PER = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8, "U8": 1, "BOOL": 1}


def safetensors_header(tensors: dict[str, tuple[str, list[int]]], metadata: dict[str, str] | None = None) -> bytes:
    header: dict[str, Any] = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    offset = 0
    for name, (dtype, shape) in tensors.items():
        size = math.prod(shape) * _BYTES_PER[dtype]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors pads the header to 8 bytes with spaces
    return struct.pack("<Q", len(raw)) + raw


def safetensors_file(tensors: dict[str, tuple[str, list[int]]], metadata: dict[str, str] | None = None) -> bytes:
    data_size = sum(math.prod(s) * _BYTES_PER[d] for d, s in tensors.values())
    return safetensors_header(tensors, metadata) + bytes(data_size)


def raw_safetensors(header: Any) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw


TENSORS = {
    "model.embed_tokens.weight": ("BF16", [320, 64]),
    "model.layers.0.mlp.up_proj.weight": ("BF16", [128, 64]),
    "model.norm.weight": ("F32", [64]),
    "lm_head.bias": ("F32", []),  # a scalar: one element
}


def test_safetensors_gives_tensor_count_dtypes_parameters_and_its_metadata_map():
    data = safetensors_file(TENSORS, {"format": "pt", "source": "unit test"})
    got = extract("model.safetensors", "application/octet-stream", chunked(data, 1000))
    assert got == Extracted(format="safetensors", tensor_count=4, dtypes=("BF16", "F32"),
                            parameters=320 * 64 + 128 * 64 + 64 + 1,
                            metadata={"format": "pt", "source": "unit test"})


def test_a_safetensors_metadata_map_is_kept_within_the_caps_gguf_has():
    # Kept whole: 20 MB of strings went into the blob's index entry and into
    # every finalize, meta and asset info answer.
    from registrygrid.blobs.metadata import MAX_KEPT_STRING, MAX_LIST_ITEMS, MAX_TEXT
    metadata = {f"k{i:04}": "v" for i in range(MAX_LIST_ITEMS + 50)}
    metadata |= {"a-long-value": "x" * (MAX_KEPT_STRING + 1), "a" + "k" * MAX_TEXT: "long key", "format": "pt"}
    kept = extract("model.safetensors", None, [safetensors_file(TENSORS, metadata)]).metadata
    assert len(kept) == MAX_LIST_ITEMS and "a-long-value" not in kept and "a" + "k" * MAX_TEXT not in kept
    assert "format" in kept and all(kept[k] == "v" for k in kept if k.startswith("k"))


def test_safetensors_is_recognised_by_its_header_whatever_its_name():
    got = extract("blob-1234", None, [safetensors_file(TENSORS)])
    assert got.format == "safetensors" and got.tensor_count == 4


def test_safetensors_reads_only_its_header():
    header = safetensors_header(TENSORS)
    assert extract("model.safetensors", None, then_explode(header, 7)).tensor_count == 4


def test_a_safetensors_header_over_the_format_limit_is_refused_without_reading_it():
    too_long = struct.pack("<Q", MAX_SAFETENSORS_HEADER + 1) + b"{"
    with pytest.raises(MetadataRefused) as caught:
        extract("model.safetensors", None, then_explode(too_long))
    assert caught.value.code == "metadata_refused" and isinstance(caught.value, ValidationError)


@pytest.mark.parametrize("header", [
    b"{not json}",
    b"[1, 2]",
    {"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}},       # 2 x F32 is 8 bytes
    {"t": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}},       # end before begin
    {"t": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}},
    {"t": {"dtype": "F32", "shape": "2", "data_offsets": [0, 8]}},
    {"t": {"dtype": "f32 ", "shape": [2], "data_offsets": [0, 8]}},
    {"t": {"shape": [2], "data_offsets": [0, 8]}},
    {"t": [1, 2]},
    {"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
     "b": {"dtype": "U8", "shape": [4], "data_offsets": [2, 6]}},       # overlap
    {"a": {"dtype": "U8", "shape": [4], "data_offsets": [4, 8]}},       # gap at the start
    {"__metadata__": {"epoch": 3}, "t": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}},
])
def test_a_malformed_safetensors_header_is_refused(header):
    with pytest.raises(MetadataMalformed) as caught:
        extract("model.safetensors", None, [raw_safetensors(header)])
    assert caught.value.code == "metadata_malformed" and isinstance(caught.value, MalformedInput)
    assert caught.value.http_status == 422  # the bytes are a stored blob's, not the request's


def test_a_truncated_safetensors_header_is_malformed():
    data = safetensors_header(TENSORS)
    with pytest.raises(MetadataMalformed) as caught:
        extract("model.safetensors", None, [data[:len(data) // 2]])
    assert "truncated" in caught.value.message


def test_an_unknown_safetensors_dtype_is_kept_by_name():
    header = {"t": {"dtype": "F8_E3M4", "shape": [3], "data_offsets": [0, 3]}}
    assert extract("x.safetensors", None, [raw_safetensors(header)]).dtypes == ("F8_E3M4",)


# ---- GGUF, written per the spec (ggml docs/gguf.md)

U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
_CODES = {U8: "B", I8: "b", U16: "H", I16: "h", U32: "I", I32: "i", F32: "f", U64: "Q", I64: "q", F64: "d"}


class GGUFWriter:
    """Just enough of a GGUF writer: header, typed key/values, tensor infos."""

    def __init__(self, *, version: int = 3, order: str = "<") -> None:
        self.version, self.order = version, order
        self.kv: list[bytes] = []
        self.tensors: list[bytes] = []

    def _pack(self, code: str, *values: Any) -> bytes:
        return struct.pack(self.order + code, *values)

    def _string(self, text: str | bytes) -> bytes:
        raw = text.encode() if isinstance(text, str) else text
        return self._pack("Q", len(raw)) + raw

    def _value(self, kind: int, value: Any) -> bytes:
        if kind in _CODES:
            return self._pack(_CODES[kind], value)
        if kind == BOOL:
            return bytes([value])
        if kind == STRING:
            return self._string(value)
        item_kind, items = value
        return self._pack("I", item_kind) + self._pack("Q", len(items)) + \
            b"".join(self._value(item_kind, item) for item in items)

    def add(self, key: str, kind: int, value: Any) -> GGUFWriter:
        self.kv.append(self._string(key) + self._pack("I", kind) + self._value(kind, value))
        return self

    def raw(self, key: str, kind: int, payload: bytes) -> GGUFWriter:
        """A key/value of any type code, with its bytes as given."""
        self.kv.append(self._string(key) + self._pack("I", kind) + payload)
        return self

    def tensor(self, name: str, dims: list[int], ggml_type: int) -> GGUFWriter:
        self.tensors.append(self._string(name) + self._pack("I", len(dims)) +
                            b"".join(self._pack("Q", d) for d in dims) +
                            self._pack("I", ggml_type) + self._pack("Q", 0))
        return self

    def header(self) -> bytes:
        return b"GGUF" + self._pack("I", self.version) + self._pack("Q", len(self.tensors)) + \
            self._pack("Q", len(self.kv)) + b"".join(self.kv) + b"".join(self.tensors)


def llama(writer: GGUFWriter) -> GGUFWriter:
    return (writer
            .add("general.architecture", STRING, "llama")
            .add("general.name", STRING, "Tiny Llama")
            .add("general.file_type", U32, 15)
            .add("general.license", STRING, "apache-2.0")
            .add("general.tags", ARRAY, (STRING, ["text-generation", "tiny"]))
            .add("general.languages", ARRAY, (STRING, ["en", "fr"]))
            .add("llama.context_length", U32, 4096)
            .add("llama.rope.freq_base", F32, 10000.0)
            .add("llama.attention.layer_norm_rms_epsilon", F64, 1e-5)
            .add("tokenizer.ggml.add_bos_token", BOOL, 1)
            .add("tokenizer.ggml.tokens", ARRAY, (STRING, [f"tok{i}" for i in range(1000)]))
            .add("tokenizer.ggml.scores", ARRAY, (F32, [0.0] * 1000))
            .add("tokenizer.chat_template", STRING, "{% for m in messages %}" * 100)
            .add("nested", ARRAY, (ARRAY, [(I8, [1, -2]), (I8, [3])]))
            .add("general.quantization_version", U32, 2)
            .tensor("token_embd.weight", [64, 1000], 12)   # Q4_K
            .tensor("blk.0.attn_norm.weight", [64], 0)     # F32
            .tensor("output.weight", [64, 1000], 14))      # Q6_K


@pytest.mark.parametrize(("version", "order"), [(3, "<"), (2, "<"), (3, ">")])
def test_gguf_gives_architecture_quantization_context_and_parameters(version, order):
    data = llama(GGUFWriter(version=version, order=order)).header()
    got = extract("tiny-llama.Q4_K_M.gguf", None, then_explode(data, 333))
    assert got.format == "gguf"
    assert (got.architecture, got.name, got.context_length, got.quantization) == \
        ("llama", "Tiny Llama", 4096, "Q4_K_M")
    assert (got.tensor_count, got.parameters, got.dtypes) == (3, 64 * 1000 * 2 + 64, ("F32", "Q4_K", "Q6_K"))
    assert (got.license, got.tags, got.languages) == ("apache-2.0", ("text-generation", "tiny"), ("en", "fr"))
    assert got.metadata["llama.rope.freq_base"] == 10000.0
    assert got.metadata["tokenizer.ggml.add_bos_token"] is True
    assert got.metadata["general.quantization_version"] == 2
    assert "tokenizer.ggml.tokens" not in got.metadata  # arrays are not scalars
    assert "tokenizer.chat_template" not in got.metadata  # longer than kept


def test_gguf_is_recognised_by_its_magic_whatever_its_name():
    assert extract("blob", "application/octet-stream", [llama(GGUFWriter()).header()]).format == "gguf"


def test_gguf_version_1_is_refused_by_name():
    data = b"GGUF" + struct.pack("<IIQ", 1, 0, 0)
    with pytest.raises(MetadataRefused) as caught:
        extract("old.gguf", None, [data])
    assert "version 1" in caught.value.message


@pytest.mark.parametrize("data", [
    b"GGUF" + struct.pack("<I", 7) + bytes(16),                                           # unknown version
    GGUFWriter().add("flag", BOOL, 2).header(),                                          # bool that is neither 0 nor 1
    GGUFWriter().raw("x", 13, bytes(8)).header(),                                             # unknown value type
    GGUFWriter().tensor("t", [1, 2, 3, 4, 5], 0).header(),                               # more dims than ggml has
    llama(GGUFWriter()).header()[:500],                                                  # truncated
    b"NOTGGUF...",                                                                        # named .gguf, no magic
])
def test_a_malformed_gguf_header_is_refused(data):
    with pytest.raises(MetadataMalformed):
        extract("model.gguf", None, [data])


def test_gguf_lengths_are_bounded_before_anything_is_read_or_allocated():
    writer = GGUFWriter()
    huge_string = writer._string("general.name") + writer._pack("I", STRING) + writer._pack("Q", 1 << 40)
    huge_array = writer._string("a") + writer._pack("I", ARRAY) + writer._pack("I", U8) + writer._pack("Q", 1 << 40)
    for kv in (huge_string, huge_array):
        data = b"GGUF" + writer._pack("I", 3) + writer._pack("Q", 0) + writer._pack("Q", 1) + kv
        with pytest.raises(MetadataRefused):
            extract("m.gguf", None, then_explode(data))
    too_many = b"GGUF" + writer._pack("I", 3) + writer._pack("Q", 1 << 40) + writer._pack("Q", 0)
    with pytest.raises(MetadataRefused):
        extract("m.gguf", None, then_explode(too_many))


_SCALARS = st.one_of(
    st.tuples(st.just(U8), st.integers(0, 255)), st.tuples(st.just(I8), st.integers(-128, 127)),
    st.tuples(st.just(U16), st.integers(0, 65535)), st.tuples(st.just(I32), st.integers(-2**31, 2**31 - 1)),
    st.tuples(st.just(U64), st.integers(0, 2**64 - 1)), st.tuples(st.just(I64), st.integers(-2**63, 2**63 - 1)),
    st.tuples(st.just(F32), st.floats(width=32, allow_nan=False)),
    st.tuples(st.just(F64), st.floats(allow_nan=False)),
    st.tuples(st.just(BOOL), st.booleans()), st.tuples(st.just(STRING), st.text(max_size=40)),
)


@settings(max_examples=60, deadline=None)
@given(kv=st.dictionaries(st.text(alphabet="abcdefghij._", min_size=1, max_size=20), _SCALARS, max_size=12),
       order=st.sampled_from("<>"))
def test_every_gguf_scalar_type_reads_back_as_written(kv, order):
    writer = GGUFWriter(order=order)
    for key, (kind, value) in kv.items():
        writer.add(key, kind, int(value) if kind == BOOL else value)
    got = extract("m.gguf", None, chunked(writer.header(), 5))
    assert got.metadata == {key: value for key, (_, value) in kv.items()}


@settings(max_examples=150, deadline=None)
@given(flips=st.lists(st.tuples(st.integers(min_value=0), st.integers(min_value=1, max_value=255)),
                      min_size=1, max_size=3))
def test_no_damaged_gguf_or_safetensors_header_escapes_as_anything_but_a_typed_error(flips):
    for name, original in (("m.gguf", llama(GGUFWriter()).header()), ("m.safetensors", safetensors_file(TENSORS))):
        data = bytearray(original)
        for at, mask in flips:
            data[at % len(data)] ^= mask
        try:
            extract(name, None, [bytes(data)])
        except (MetadataMalformed, MetadataRefused):
            pass


# ---- ZIP


def test_a_zip_gives_its_entry_count_total_size_and_top_level_names():
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("agent/manifest.json", b"{}")
        archive.writestr("agent/tools/search.py", b"print('hi')\n" * 10)
        archive.writestr("README.md", b"# Agent\n")
    got = extract("bundle.zip", "application/zip", chunked(out.getvalue(), 100))
    assert got == Extracted(format="zip", entry_count=3, total_size=2 + 120 + 8, top_level=("README.md", "agent/"))


def test_a_zip_is_bounded_by_the_zip_limits():
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("zeros", bytes(1 << 20))
    with pytest.raises(ZipRefused):
        extract("bomb.zip", None, [out.getvalue()], zip_limits=ZipLimits(max_total_bytes=1000))


# ---- model cards

CARD = """---
license: apache-2.0
language:
- en
- no
tags:
- text-generation
- llama
base_model: meta-llama/Llama-3.1-8B
datasets:
- HuggingFaceFW/fineweb
pipeline_tag: text-generation
library_name: transformers
---

# My model

Some prose with a horizontal rule:

---
"""


def test_a_readme_front_matter_gives_the_card_fields():
    got = extract("README.md", "text/markdown", chunked(CARD.encode(), 16))
    assert got == Extracted(format="model-card", license="apache-2.0", languages=("en", "no"),
                            tags=("text-generation", "llama"), base_models=("meta-llama/Llama-3.1-8B",),
                            datasets=("HuggingFaceFW/fineweb",), pipeline_tag="text-generation",
                            library_name="transformers")


def test_a_card_with_a_bom_and_crlf_lines_reads_the_same():
    crlf = b"\xef\xbb\xbf" + CARD.replace("\n", "\r\n").encode()
    assert extract("README.md", None, [crlf]) == extract("README.md", None, [CARD.encode()])


def test_a_card_reads_only_up_to_its_closing_line():
    head = b"---\nlicense: mit\n---\n" + b"prose " * 100
    assert extract("README.md", None, then_explode(head)).license == "mit"


def test_a_readme_without_front_matter_has_nothing_to_say():
    assert extract("README.md", None, [b"# Just prose\n\n---\nmore\n"]) == Extracted()


def test_empty_front_matter_is_a_card_without_fields():
    assert extract("README.md", None, [b"---\n---\n# Title\n"]) == Extracted(format="model-card")


@pytest.mark.parametrize("text", [
    b"---\nlicense: mit\n# never closed\n",
    b"---\nlicense: [unclosed\n---\n",
    b"---\n- just\n- a list\n---\n",
    b"---\nexploit: !!python/object/apply:os.system ['echo pwned']\n---\n",  # safe_load refuses tags
])
def test_a_broken_or_unsafe_front_matter_is_malformed(text):
    with pytest.raises(MetadataMalformed):
        extract("README.md", None, [text])


def test_front_matter_longer_than_the_bound_is_refused():
    text = b"---\n" + b"tags: [a]\n" * (MAX_CARD_BYTES // 10 + 10)
    with pytest.raises(MetadataRefused):
        extract("README.md", None, chunked(text, 65536))


def test_a_json_model_card_gives_the_card_fields():
    card = {"license": "mit", "language": "fr", "tags": ["a", "b", "a"], "base_model": ["x/y", "z/w"]}
    got = extract("card.json", "application/json", [json.dumps(card).encode()])
    assert got == Extracted(format="model-card", license="mit", languages=("fr",), tags=("a", "b"),
                            base_models=("x/y", "z/w"))
    wrapped = extract("info.json", None, [json.dumps({"id": "x/y", "cardData": card}).encode()])
    assert wrapped == got


def test_json_that_is_not_a_card_has_nothing_to_say():
    for text in (b'{"architectures": ["LlamaForCausalLM"]}', b"[1, 2]", b"{broken", b""):
        assert extract("config.json", None, [text]) == Extracted()


def test_a_yaml_card_file_gives_the_card_fields():
    assert extract("card.yaml", None, [b"license: mit\ntags: [x]\n"]).tags == ("x",)


# ---- dispatch


def test_unknown_formats_give_an_empty_result():
    for name, data in (("photo.png", b"\x89PNG\r\n\x1a\n" + bytes(100)), ("notes.txt", b"hello"), ("empty", b"")):
        assert extract(name, None, [data]) == Extracted()


def test_magic_bytes_win_over_the_name():
    assert extract("README.md", "text/markdown", [llama(GGUFWriter()).header()]).format == "gguf"


def test_the_result_encodes_as_json_with_only_what_was_found():
    got = extract("README.md", None, [b"---\nlicense: mit\n---\n"])
    assert msgspec.json.decode(msgspec.json.encode(got)) == {"format": "model-card", "license": "mit"}
