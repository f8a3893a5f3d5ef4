"""The fsplit codec (docs/FORMAT.md (Appendix A)): exact round trips, strict and bounded decoding,
and the compression ratios it exists for."""

from __future__ import annotations

import io
import json
import os
import struct
import threading
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from weightvault.errors import CorruptData
from weightvault.format import fsplit

DTYPES = sorted(fsplit.DTYPES)
BLOCK_MAX = fsplit.BLOCK_MAX
HEADER = {2: 7 + 2 * 5, 4: 7 + 4 * 5}  # prefix + one (method, length) per stream
UINT = {2: np.dtype("<u2"), 4: np.dtype("<u4")}


# --- helpers -------------------------------------------------------------------------------


def encode(dtype: str, data: bytes, block: int = BLOCK_MAX) -> bytes:
    return b"".join(
        fsplit.encode_block(dtype, data[i : i + block]) for i in range(0, len(data), block)
    )


def decode(dtype: str, stored: bytes, length: int, read_size: int | None = None) -> bytes:
    src = io.BytesIO(stored)
    if read_size is None:
        read = src.read
    else:

        def read(n: int) -> bytes:
            return src.read(min(n, read_size))

    return b"".join(fsplit.iter_decode(fsplit.codec_name(dtype), read, length))


def roundtrip(dtype: str, data: bytes, block: int = BLOCK_MAX) -> bytes:
    stored = encode(dtype, data, block)
    assert decode(dtype, stored, len(data)) == data
    return stored


def normal_bytes(dtype: str, n: int, seed: int = 0, scale: float = 0.02) -> bytes:
    x = np.random.default_rng(seed).normal(0.0, scale, n)
    if dtype == "F32":
        return x.astype("<f4").tobytes()
    if dtype == "F16":
        return x.astype("<f2").tobytes()
    u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype("<u2").tobytes()  # round to even


def special_patterns(dtype: str) -> list[int]:
    """Bit patterns of NaNs (several payloads, both signs, quiet and signalling), infinities,
    zeros, subnormals, the largest and smallest normals."""
    if dtype == "F32":
        exp_bits, mant_bits = 8, 23
    elif dtype == "BF16":
        exp_bits, mant_bits = 8, 7
    else:
        exp_bits, mant_bits = 5, 10
    sign = 1 << (exp_bits + mant_bits)
    exp_all = ((1 << exp_bits) - 1) << mant_bits
    mant_all = (1 << mant_bits) - 1
    quiet = 1 << (mant_bits - 1)
    base = [
        0,  # +0
        exp_all,  # +inf
        exp_all | quiet,  # canonical quiet NaN
        exp_all | 1,  # signalling NaN, smallest payload
        exp_all | mant_all,  # NaN, all payload bits
        exp_all | quiet | 0x5,  # quiet NaN with a payload
        exp_all | (0x2A & mant_all) | 1,
        1,  # smallest subnormal
        mant_all,  # largest subnormal
        quiet,  # a middle subnormal
        1 << mant_bits,  # smallest normal
        (exp_all - (1 << mant_bits)) | mant_all,  # largest finite
        ((1 << (exp_bits - 1)) - 1) << mant_bits,  # 1.0
    ]
    return sorted({p | s for p in base for s in (0, sign)})


# --- API -----------------------------------------------------------------------------------


def test_api_constants():
    assert fsplit.DTYPES == {"BF16": 2, "F16": 2, "F32": 4}
    assert fsplit.BLOCK_MAX == 4 * 1024 * 1024
    assert [fsplit.codec_name(d) for d in ("BF16", "F16", "F32")] == [
        "fsplit-bf16",
        "fsplit-f16",
        "fsplit-f32",
    ]


@pytest.mark.parametrize("bad", ["F64", "I8", "bf16", "", "BOOL"])
def test_unknown_dtype_is_a_usage_error(bad):
    with pytest.raises(ValueError):
        fsplit.codec_name(bad)
    with pytest.raises(ValueError):
        fsplit.encode_block(bad, b"\0\0\0\0")


def test_unknown_codec_is_a_usage_error_at_call_time():
    with pytest.raises(ValueError):
        fsplit.iter_decode("zstd", io.BytesIO(b"").read, 0)
    with pytest.raises(ValueError):
        fsplit.iter_decode("fsplit-bf16", io.BytesIO(b"").read, -1)


def test_block_over_max_is_refused():
    with pytest.raises(ValueError):
        fsplit.encode_block("BF16", bytes(BLOCK_MAX + 1))


def test_accepts_buffers_of_any_kind():
    data = normal_bytes("F32", 1000)
    ref = fsplit.encode_block("F32", data)
    assert fsplit.encode_block("F32", bytearray(data)) == ref
    assert fsplit.encode_block("F32", memoryview(data)) == ref
    assert fsplit.encode_block("F32", np.frombuffer(data, "<f4")) == ref
    assert fsplit.encode_block("F32", memoryview(b"xyz" + data)[3:]) == ref  # unaligned


# --- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.binary(max_size=4096))
@settings(max_examples=150, deadline=None)
def test_roundtrip_random_bytes(dtype, data):
    stored = roundtrip(dtype, data)
    size = fsplit.DTYPES[dtype]
    assert len(stored) <= HEADER[size] + len(data)  # never more than the header over raw


@pytest.mark.parametrize("dtype", ["BF16", "F16"])
def test_roundtrip_every_16_bit_pattern(dtype):
    data = np.arange(1 << 16, dtype="<u2").tobytes()
    roundtrip(dtype, data)
    rng = np.random.default_rng(1)
    roundtrip(dtype, rng.permutation(np.arange(1 << 16, dtype="<u2")).tobytes())


def test_roundtrip_f32_every_exponent_sign_and_edge_mantissas():
    exps = np.arange(256, dtype=np.uint32) << 23
    mants = np.array([0, 1, 2, 0x3FFFFF, 0x400000, 0x400001, 0x7FFFFE, 0x7FFFFF], np.uint32)
    signs = np.array([0, 1 << 31], np.uint32)
    pats = (signs[:, None, None] | exps[None, :, None] | mants[None, None, :]).ravel()
    roundtrip("F32", pats.astype("<u4").tobytes())
    rnd = np.random.default_rng(2).integers(0, 1 << 32, 300_000, dtype=np.uint64)
    roundtrip("F32", rnd.astype("<u4").tobytes())


@pytest.mark.parametrize("dtype", DTYPES)
@given(
    picks=st.lists(st.integers(min_value=0, max_value=10**6), min_size=1, max_size=600),
    tail=st.binary(max_size=3),
)
@settings(max_examples=60, deadline=None)
def test_roundtrip_specials_mixed_with_weights(dtype, picks, tail):
    size = fsplit.DTYPES[dtype]
    specials = special_patterns(dtype)
    weights = np.frombuffer(normal_bytes(dtype, 64, seed=3), UINT[size])
    pats = [specials[p % len(specials)] if p % 3 else int(weights[p % 64]) for p in picks]
    data = np.array(pats, dtype=np.uint64).astype(UINT[size]).tobytes() + tail[: size - 1]
    roundtrip(dtype, data)


@pytest.mark.parametrize("dtype", DTYPES)
def test_roundtrip_specials_exact_bits(dtype):
    size = fsplit.DTYPES[dtype]
    pats = np.array(special_patterns(dtype) * 50, dtype=np.uint64).astype(UINT[size])
    data = pats.tobytes()
    stored = roundtrip(dtype, data)
    out = np.frombuffer(decode(dtype, stored, len(data)), UINT[size])
    assert (out == pats).all()  # bit-exact, NaN payloads and -0.0 included


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 2, 3, 1000, 100_003])
def test_roundtrip_all_zero_and_constant(dtype, n):
    size = fsplit.DTYPES[dtype]
    zero = bytes(n * size)
    stored = roundtrip(dtype, zero)
    if n >= 1000:
        assert len(stored) < n * size / 20
    const = (b"\x3c\xbf\x12\x9a"[:size]) * n
    roundtrip(dtype, const)
    roundtrip(dtype, const + b"\x77")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", [0.02, 1.0, 1e-6])
def test_roundtrip_normal_weights(dtype, scale):
    data = normal_bytes(dtype, 300_001, seed=4, scale=scale)
    stored = roundtrip(dtype, data)
    assert len(stored) < len(data)


@pytest.mark.parametrize("dtype", DTYPES)
def test_multi_block_chunk_with_a_tail(dtype):
    size = fsplit.DTYPES[dtype]
    tail = b"\x01\x02\x03"[: size - 1]
    data = normal_bytes(dtype, (2 * BLOCK_MAX + 12_345) // size, seed=5) + tail
    stored = roundtrip(dtype, data)
    pieces = list(fsplit.iter_decode(fsplit.codec_name(dtype), io.BytesIO(stored).read, len(data)))
    assert [len(p) for p in pieces] == [BLOCK_MAX, BLOCK_MAX, len(data) - 2 * BLOCK_MAX]
    assert all(isinstance(p, bytes) for p in pieces)


@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.binary(max_size=3000), block=st.integers(min_value=1, max_value=700))
@settings(max_examples=60, deadline=None)
def test_any_block_split_decodes(dtype, data, block):
    roundtrip(dtype, data, block)


@pytest.mark.parametrize("dtype", DTYPES)
def test_short_reads_are_fine(dtype):
    data = normal_bytes(dtype, 5000) + b"\x09"
    stored = encode(dtype, data, block=3001)
    assert decode(dtype, stored, len(data), read_size=1) == data
    assert decode(dtype, stored, len(data), read_size=7) == data


def test_empty_chunk():
    for dtype in DTYPES:
        assert decode(dtype, b"", 0) == b""
        assert decode(dtype, fsplit.encode_block(dtype, b""), 0) == b""


def test_threads_share_nothing():
    datas = {d: normal_bytes(d, 700_001 // fsplit.DTYPES[d], seed=6) for d in DTYPES}
    expect = {d: encode(d, datas[d], block=1 << 20) for d in DTYPES}

    def work(i: int) -> bool:
        d = DTYPES[i % len(DTYPES)]
        stored = encode(d, datas[d], block=1 << 20)
        return stored == expect[d] and decode(d, stored, len(datas[d])) == datas[d]

    with ThreadPoolExecutor(4) as ex:
        assert all(ex.map(work, range(24)))


def test_deterministic_output():
    data = normal_bytes("BF16", 100_000)
    assert fsplit.encode_block("BF16", data) == fsplit.encode_block("BF16", data)


# --- the layout, byte for byte ---------------------------------------------------------------

# The worked example of docs/FORMAT.md (Appendix A): bf16 [1.0, -2.0, 0.15625, +inf].
EXAMPLE_PLAIN = bytes.fromhex("803f00c0203e807f")
EXAMPLE_STORED = bytes.fromhex(
    " ".join(["f5 01 01 08000000", "00 04000000", "00 04000000", "7f 80 7c ff", "00 80 20 00"])
)


def test_worked_example_from_the_spec():
    assert fsplit.encode_block("BF16", EXAMPLE_PLAIN) == EXAMPLE_STORED
    assert decode("BF16", EXAMPLE_STORED, 8) == EXAMPLE_PLAIN


def test_layout_of_streams_matches_the_spec():
    # f16 -1.5 = 0xBE00: stream 0 = bits 14..7 = 0x7C, stream 1 = sign<<7 | bits 6..0 = 0x80
    assert fsplit.encode_block("F16", b"\x00\xbe")[-2:] == b"\x7c\x80"
    # f32 0xC0490FDB (-pi): exp 0x80; sign<<7 | bits 22..16 = 0x80|0x49; 0x0F; 0xDB; tail 0xAA
    stored = fsplit.encode_block("F32", struct.pack("<I", 0xC0490FDB) + b"\xaa")
    assert stored[:7] == bytes.fromhex("f5010305000000")
    assert stored[7:27] == bytes.fromhex("0001000000" * 4)
    assert stored[27:] == bytes([0x80, 0xC9, 0x0F, 0xDB, 0xAA])


EXAMPLE_ZSTD = bytes.fromhex(
    "f5 01 01 80 00 00 00 01 15 00 00 00 01 15 00 00 00"
    " 28 b5 2f fd 24 40 45 00 00 10 7f 7f 01 00 93 00 16 a8 f3 dc cc"
    " 28 b5 2f fd 24 40 45 00 00 10 00 00 01 00 93 00 16 19 2a b8 47"
)


def test_zstd_example_from_the_spec_decodes():
    assert decode("BF16", EXAMPLE_ZSTD, 128) == b"\x80\x3f" * 64


SPEC = Path(__file__).resolve().parents[1] / "docs" / "FORMAT.md"


def test_the_decoder_printed_in_the_spec_agrees():
    text = SPEC.read_text(encoding="utf-8").split("## Appendix A.", 1)[1]
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    ns: dict = {}
    exec(compile(code, str(SPEC), "exec"), ns)
    spec_decode, corrupt = ns["decode"], ns["Corrupt"]
    assert spec_decode("fsplit-bf16", EXAMPLE_STORED, 8) == EXAMPLE_PLAIN
    assert spec_decode("fsplit-bf16", EXAMPLE_ZSTD, 128) == b"\x80\x3f" * 64
    for dtype in DTYPES:
        size = fsplit.DTYPES[dtype]
        for data in (b"", b"\x01", normal_bytes(dtype, 70_001, seed=10) + b"\x02" * (size - 1)):
            stored = encode(dtype, data, block=100_000)
            assert spec_decode(fsplit.codec_name(dtype), stored, len(data)) == data
        data, stored = small_stream(dtype)
        for bad in (stored[:-1], stored + b"\0", b"\xf4" + stored[1:]):
            with pytest.raises((corrupt, zstandard.ZstdError)):
                spec_decode(fsplit.codec_name(dtype), bad, len(data))


def hand_block(layout: int, length: int, streams: list[tuple[int, bytes]], tail=b"") -> bytes:
    out = struct.pack("<BBBI", 0xF5, 1, layout, length)
    for method, payload in streams:
        out += struct.pack("<BI", method, len(payload))
    return out + b"".join(p for _, p in streams) + tail


def zframe(data: bytes, **kw) -> bytes:
    kw.setdefault("write_checksum", True)
    return zstandard.ZstdCompressor(level=3, **kw).compress(data)


def test_decodes_any_conforming_zstd_frame():
    # a hand-made block whose exponent stream was compressed by another zstd setting
    exps = bytes([0x7C] * 500 + [0x7B] * 500)
    signmant = bytes(range(200)) * 5
    block = hand_block(1, 2000, [(1, zframe(exps)), (0, signmant)])
    w = (np.frombuffer(exps, np.uint8).astype(np.uint16) << 7) | (
        (np.frombuffer(signmant, np.uint8).astype(np.uint16) & 0x80) << 8
    )
    w |= np.frombuffer(signmant, np.uint8) & 0x7F
    assert decode("BF16", block, 2000) == w.astype("<u2").tobytes()


# --- strict decoding -------------------------------------------------------------------------


def small_stream(dtype: str) -> tuple[bytes, bytes]:
    """Two blocks, each with a zstd stream, a raw stream and (the last) a tail."""
    size = fsplit.DTYPES[dtype]
    data = normal_bytes(dtype, 600, seed=7) + b"\x05\x06\x07"[: size - 1]
    stored = encode(dtype, data, block=size * 300)
    return data, stored


@pytest.mark.parametrize("dtype", DTYPES)
def test_small_stream_uses_both_methods(dtype):
    _, stored = small_stream(dtype)
    size = fsplit.DTYPES[dtype]
    methods = stored[7 : HEADER[size] : 5]
    assert methods[0] == 1 and 0 in methods


@pytest.mark.parametrize("dtype", DTYPES)
def test_truncation_at_every_position_is_refused(dtype):
    data, stored = small_stream(dtype)
    for cut in range(len(stored)):
        with pytest.raises(CorruptData):
            decode(dtype, stored[:cut], len(data))


@pytest.mark.parametrize("dtype", DTYPES)
@given(junk=st.binary(min_size=1, max_size=64))
@settings(max_examples=50, deadline=None)
def test_trailing_garbage_is_refused(dtype, junk):
    data, stored = small_stream(dtype)
    with pytest.raises(CorruptData):
        decode(dtype, stored + junk, len(data))


@pytest.mark.parametrize("dtype", DTYPES)
def test_trailing_blocks_are_refused(dtype):
    data, stored = small_stream(dtype)
    for extra in (fsplit.encode_block(dtype, b""), fsplit.encode_block(dtype, b"\0" * 8)):
        with pytest.raises(CorruptData):
            decode(dtype, stored + extra, len(data))
    with pytest.raises(CorruptData):  # an empty block is only for an empty chunk
        decode(dtype, fsplit.encode_block(dtype, b"") + stored, len(data))
    with pytest.raises(CorruptData):
        decode(dtype, fsplit.encode_block(dtype, b"") * 2, 0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_length_mismatch_is_refused(dtype):
    data, stored = small_stream(dtype)
    for wrong in (0, 1, len(data) - 1, len(data) + 1, 2 * len(data), 1 << 62):
        with pytest.raises(CorruptData):
            decode(dtype, stored, wrong)


def test_wrong_codec_is_refused():
    data, stored = small_stream("BF16")
    with pytest.raises(CorruptData):
        decode("F16", stored, len(data))
    with pytest.raises(CorruptData):
        decode("F32", stored, len(data))


class GuardedReader:
    """A reader over bytes that records the largest request made of it."""

    def __init__(self, data: bytes) -> None:
        self.src = io.BytesIO(data)
        self.largest = 0

    def read(self, n: int) -> bytes:
        self.largest = max(self.largest, n)
        return self.src.read(n)


def assert_refused_cheaply(dtype: str, stored: bytes, length: int) -> None:
    reader = GuardedReader(stored)
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(CorruptData):
            b"".join(fsplit.iter_decode(fsplit.codec_name(dtype), reader.read, length))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 2.0
    assert reader.largest <= BLOCK_MAX
    assert peak < 3 * BLOCK_MAX


HOSTILE_SIZES = [BLOCK_MAX + 1, 1 << 31, (1 << 32) - 1]


@pytest.mark.parametrize("claim", HOSTILE_SIZES)
def test_hostile_block_length_fails_fast(claim):
    block = struct.pack("<BBBI", 0xF5, 1, 3, claim) + struct.pack("<BI", 0, claim // 4) * 4
    assert_refused_cheaply("F32", block + b"\0" * 64, 1 << 60)


@pytest.mark.parametrize("method", [0, 1])
@pytest.mark.parametrize("claim", HOSTILE_SIZES)
def test_hostile_stream_length_fails_fast(method, claim):
    block = struct.pack("<BBBI", 0xF5, 1, 1, 8) + struct.pack("<BI", method, claim) * 2
    assert_refused_cheaply("BF16", block + b"\0" * 64, 8)


def frame_claiming(content_size: int, window_log: int | None = None) -> bytes:
    """A zstd frame header that declares content_size bytes (8-byte FCS), then an empty raw
    last block and a fake checksum."""
    if window_log is None:
        fhd = 0b11100100  # FCS 8 bytes, single segment, checksum
        hdr = bytes([fhd]) + struct.pack("<Q", content_size)
    else:
        fhd = 0b11000100  # FCS 8 bytes, window descriptor, checksum
        hdr = bytes([fhd, (window_log - 10) << 3]) + struct.pack("<Q", content_size)
    return b"\x28\xb5\x2f\xfd" + hdr + b"\x01\x00\x00" + b"\0\0\0\0"


@pytest.mark.parametrize(
    "frame",
    [
        frame_claiming(1 << 60),
        frame_claiming((1 << 32) - 1),
        frame_claiming(BLOCK_MAX),
        frame_claiming(2000, window_log=31),
        frame_claiming(2000, window_log=24),
    ],
)
def test_hostile_zstd_frame_fails_fast(frame):
    n = 2000
    block = hand_block(1, 2 * n, [(1, frame + b"\0" * (n - len(frame) - 1)), (0, bytes(n))])
    assert_refused_cheaply("BF16", block, 2 * n)


def test_zstd_stream_rules():
    n = 2000
    exps = bytes([0x7C] * n)
    ok = zframe(exps)

    def refused(payload: bytes) -> None:
        block = hand_block(1, 2 * n, [(1, payload), (0, bytes(n))])
        with pytest.raises(CorruptData):
            decode("BF16", block, 2 * n)

    decode("BF16", hand_block(1, 2 * n, [(1, ok), (0, bytes(n))]), 2 * n)
    refused(ok + b"\0")  # bytes after the frame
    refused(ok + ok)  # two frames
    refused(ok + b"\x28\xb5\x2f\xfd")  # a bare magic number after the frame (issue 8)
    refused(ok + b"\x50\x2a\x4d\x18" + struct.pack("<I", 4) + b"abcd")  # skippable after
    refused(ok[:-1])  # truncated frame
    refused(zframe(exps, write_checksum=False))  # checksum is required
    refused(zframe(exps, write_content_size=False))  # content size is required
    refused(zframe(exps[:-1]))  # wrong content size
    refused(b"\x50\x2a\x4d\x18" + struct.pack("<I", 4) + b"abcd" + ok)  # skippable frame
    refused(b"not zstd at all")
    refused(zframe(b"\0" * (n * 3)))  # too long for the stream
    d = zstandard.train_dictionary(4096, [bytes([i % 7 + 100] * 300 + [i]) for i in range(200)])
    refused(zstandard.ZstdCompressor(dict_data=d, write_checksum=True).compress(exps))
    # the stored length of a zstd stream must be at most the stream's length
    big = zframe(np.random.default_rng(8).integers(0, 256, 64, dtype=np.uint8).tobytes())
    assert len(big) > 64
    block = hand_block(1, 128, [(1, big), (0, bytes(64))])
    with pytest.raises(CorruptData):
        decode("BF16", block, 128)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b"\xf4" + b[1:],  # magic
        lambda b: b[:1] + b"\x02" + b[2:],  # version
        lambda b: b[:2] + b"\x00" + b[3:],  # layout
        lambda b: b[:7] + b"\x02" + b[8:],  # unknown method
        lambda b: b[:12] + b"\x01" + b[13:],  # zstd method over a raw stream
    ],
)
def test_header_fields_are_checked(mutate):
    block = fsplit.encode_block("BF16", bytes(range(256)))  # both streams raw
    assert block[7] == 0 and block[12] == 0
    decode("BF16", block, 256)
    with pytest.raises(CorruptData):
        decode("BF16", mutate(block), 256)


def raw_regions(dtype: str, stored: bytes) -> set[int]:
    """Byte offsets of raw stream payloads and tails: the only places where a flipped bit may
    decode without error (the caller's digest catches those)."""
    size = fsplit.DTYPES[dtype]
    out: set[int] = set()
    pos = 0
    while pos < len(stored):
        (length,) = struct.unpack_from("<I", stored, pos + 3)
        fields = struct.unpack_from("<" + "BI" * size, stored, pos + 7)
        pos += HEADER[size]
        for method, slen in zip(fields[0::2], fields[1::2], strict=True):
            if method == 0:
                out.update(range(pos, pos + slen))
            pos += slen
        tail = length % size
        out.update(range(pos, pos + tail))
        pos += tail
    return out


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_bit_flip_is_caught_or_in_a_raw_stream(dtype):
    """A flipped bit raises CorruptData, or lands in a raw stream or tail (wrong bytes that the
    caller's digest catches), or changes nothing at all (zstd's format has a few bits that do
    not affect the output, e.g. padding in a Huffman table description)."""
    data, stored = small_stream(dtype)
    raw = raw_regions(dtype, stored)
    assert raw and len(raw) < len(stored)
    wrong_in_raw = 0
    for pos in range(len(stored)):
        for bit in range(8):
            bad = bytearray(stored)
            bad[pos] ^= 1 << bit
            try:
                out = decode(dtype, bytes(bad), len(data))
            except CorruptData:
                assert pos not in raw
                continue
            assert len(out) == len(data)
            if pos in raw:
                assert out != data
                wrong_in_raw += 1
            else:
                assert out == data, f"flip at byte {pos} bit {bit} decoded to wrong bytes"
    assert wrong_in_raw == 8 * len(raw)


@pytest.mark.parametrize("dtype", DTYPES)
@given(junk=st.binary(min_size=1, max_size=200), prefix=st.booleans())
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_garbage_raises_only_corrupt_data(dtype, junk, prefix):
    stored = (b"\xf5\x01" + bytes([fsplit._LAYOUT[dtype]]) + junk) if prefix else junk
    with pytest.raises(CorruptData):
        decode(dtype, stored, 1 << 20)


# --- ratios --------------------------------------------------------------------------------


def test_bf16_normal_ratio():
    data = normal_bytes("BF16", 4 << 20, seed=9)  # 8 MiB
    stored = encode("BF16", data)
    assert len(stored) <= 0.68 * len(data), len(stored) / len(data)
    assert decode("BF16", stored, len(data)) == data


def _minilm() -> Path | None:
    cands = []
    if env := os.environ.get("WEIGHTVAULT_TEST_MODEL_DIR"):
        cands.append(Path(env) / "model.safetensors")
    cands.append(
        Path.home() / ".cache" / "weightvault-test" / "all-MiniLM-L6-v2" / "model.safetensors"
    )
    return next((p for p in cands if p.is_file()), None)


def test_minilm_fp32_ratio():
    path = _minilm()
    if path is None:
        pytest.skip(
            "no MiniLM weights: set WEIGHTVAULT_TEST_MODEL_DIR or run tests/support/model.py"
        )
    raw = path.read_bytes()
    (hlen,) = struct.unpack_from("<Q", raw)
    header = json.loads(raw[8 : 8 + hlen])
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} >= {"F32"}
    data = raw[8 + hlen :]
    stored = encode("F32", data)
    assert len(stored) <= 0.83 * len(data), len(stored) / len(data)
    assert decode("F32", stored, len(data)) == data


def test_encoder_and_decoder_keep_no_state_between_threads():
    # A generator left half-way in one thread must not disturb decoding in another.
    data = normal_bytes("F32", 3 * BLOCK_MAX // 4 // 2)
    stored = encode("F32", data, block=1 << 20)
    it = fsplit.iter_decode("fsplit-f32", io.BytesIO(stored).read, len(data))
    first = next(it)
    other: list[bytes] = []
    t = threading.Thread(target=lambda: other.append(decode("F32", stored, len(data))))
    t.start()
    t.join()
    assert other == [data]
    assert first + b"".join(it) == data


# --- the two exponent-stream encoders ------------------------------------------------------


def test_exponent_stream_is_huffman_coded_through_libzstd():
    """The installed zstandard reaches libzstd's literal-compression switch (its cffi backend):
    the fast path, not the fallback, is what seals run here."""
    assert isinstance(fsplit._new_compressor(accelerate=True), fsplit._CffiCompressor)
    assert isinstance(fsplit._new_compressor(accelerate=False), fsplit._CffiCompressor)


def test_both_exponent_encoders_round_trip_and_compress_alike(monkeypatch):
    """Without cffi (or with a libzstd lacking the switch) the exponent stream falls back to
    python-zstandard's own parameters: other bytes, same format, about the same size."""
    data = normal_bytes("BF16", 1 << 20, seed=3)
    fast = roundtrip("BF16", data)

    def unavailable():
        raise ImportError("no cffi")

    monkeypatch.setattr(fsplit, "_CffiCompressor", unavailable)
    with ThreadPoolExecutor(1) as pool:  # a fresh thread: no cached per-thread compressor
        assert isinstance(pool.submit(fsplit._exponent_compressor).result(),
                          fsplit._PlainCompressor)  # fmt: skip
        slow = pool.submit(encode, "BF16", data).result()
    assert slow != fast
    assert decode("BF16", slow, len(data)) == data
    assert abs(len(slow) - len(fast)) < 0.01 * len(data)
    assert len(fast) < 0.7 * len(data)
