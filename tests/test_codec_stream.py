"""The decoders as restore drives them (issues 7 and 8): a zstd object is exactly one frame,
checked as the stored bytes stream past; pieces may be reused buffers; the codec choice."""

from __future__ import annotations

import hashlib
import io
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import zstandard

from weightvault.archive.restore import restore
from weightvault.archive.seal import SealOptions, seal
from weightvault.errors import CorruptData, IntegrityError
from weightvault.format import codec, fsplit, keys
from weightvault.storage.opener import open_store

MAGIC = b"\x28\xb5\x2f\xfd"


def skippable(payload: bytes) -> bytes:
    return struct.pack("<II", 0x184D2A50, len(payload)) + payload


class Trickle:
    """A reader returning at most `step` bytes per call (block headers split across reads)."""

    def __init__(self, data: bytes, step: int):
        self.f, self.step = io.BytesIO(data), step

    def read(self, n: int) -> bytes:
        return self.f.read(min(n, self.step))


def decode(name: str, stored: bytes, length: int, step: int = 1 << 30, reuse=False) -> bytes:
    out = bytearray()
    for piece in codec.iter_decode(name, Trickle(stored, step).read, length, reuse=reuse):
        out += piece
    return bytes(out)


PLAIN = os.urandom(3000) + bytes(300_000) + b"tail"
FRAMES = {
    "checksum": zstandard.ZstdCompressor(write_content_size=True, write_checksum=True),
    "level 19": zstandard.ZstdCompressor(level=19, write_content_size=True, write_checksum=True),
}


@pytest.mark.parametrize("kind", sorted(FRAMES))
@pytest.mark.parametrize("step", [1, 2, 3, 7, 1 << 20])
def test_one_frame_decodes_whatever_the_read_sizes(kind: str, step: int) -> None:
    stored = FRAMES[kind].compress(PLAIN)
    assert decode("zstd", stored, len(PLAIN), step) == PLAIN
    assert decode("zstd", stored, len(PLAIN), step, reuse=True) == PLAIN


def test_single_segment_and_streamed_frames() -> None:
    small = b"abc" * 100  # one-shot compress of a small input: a single-segment frame
    stored = FRAMES["checksum"].compress(small)
    assert stored[4] & 0x20
    assert decode("zstd", stored, len(small), 1) == small
    params = zstandard.ZstdCompressionParameters(window_log=17, write_content_size=True,
                                                 write_checksum=True)  # fmt: skip
    cctx = zstandard.ZstdCompressor(compression_params=params)
    cobj = cctx.compressobj(size=len(PLAIN))  # bigger than the window: a window descriptor
    stored = b"".join([cobj.compress(PLAIN[:100_000]),
                       cobj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK),
                       cobj.compress(PLAIN[100_000:]), cobj.flush()])  # fmt: skip
    assert not stored[4] & 0x20
    assert decode("zstd", stored, len(PLAIN), 5) == PLAIN


@pytest.mark.parametrize(
    "forge, message",
    [
        (lambda b: b + MAGIC, "bytes follow the zstd frame"),
        (lambda b: b + b"\0", "bytes follow the zstd frame"),
        (lambda b: b + skippable(b"hidden"), "bytes follow the zstd frame"),
        (lambda b: b + skippable(b""), "bytes follow the zstd frame"),
        (lambda b: b + b, "bytes follow the zstd frame"),
        (lambda b: skippable(b"x") + b, "not a zstd frame at the start"),
        (lambda b: skippable(b"\0" * len(PLAIN)) + b, "not a zstd frame at the start"),
        (lambda b: b[:-2], "zstd frame is truncated"),  # half the checksum
        (lambda b: b[:-4], "zstd frame is truncated"),  # the checksum
        (lambda b: b[:3], "not a zstd frame"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("step", [1, 4, 1 << 20])
def test_anything_but_exactly_one_frame_is_refused(forge, message: str, step: int) -> None:
    stored = forge(FRAMES["checksum"].compress(PLAIN))
    with pytest.raises(CorruptData, match=message):
        decode("zstd", stored, len(PLAIN), step)


def test_reserved_block_type_is_refused() -> None:
    stored = bytearray(FRAMES["checksum"].compress(b"x" * 1000))
    pos = zstandard.frame_header_size(bytes(stored))
    stored[pos] |= 0b110  # block type 3
    with pytest.raises(CorruptData, match="zstd"):
        decode("zstd", bytes(stored), 1000)


def test_chunk_frames_follow_the_fsplit_stream_rules() -> None:
    """FORMAT.md 5.2: one set of frame rules for chunk objects and fsplit streams (only the
    window bound differs): a content checksum, and the header's unused and reserved bits clear."""
    bare = zstandard.ZstdCompressor(write_content_size=True, write_checksum=False)
    with pytest.raises(CorruptData, match="no content checksum"):
        decode("zstd", bare.compress(PLAIN), len(PLAIN))
    for bit in (0x10, 0x08):  # unused (libzstd ignores it), reserved
        stored = bytearray(FRAMES["checksum"].compress(PLAIN))
        stored[4] |= bit
        with pytest.raises(CorruptData, match="zstd"):
            decode("zstd", bytes(stored), len(PLAIN))


def bf16(n: int, seed: int = 0) -> bytes:
    x = np.random.default_rng(seed).standard_normal(n, dtype=np.float32) * 0.02
    return (x.view(np.uint32) >> 16).astype("<u2").tobytes()


@pytest.mark.parametrize("name", ["fsplit-bf16", "zstd", "raw"])
def test_reused_pieces_are_right_when_consumed_in_turn(name: str) -> None:
    plain = bf16(3 * fsplit.BLOCK_MAX // 2 + 7) + b"x"  # odd length: a tail
    if name == "zstd":
        stored = FRAMES["checksum"].compress(plain)
    elif name == "raw":
        stored = plain
    else:
        stored = b"".join(fsplit.encode_block("BF16", plain[i : i + fsplit.BLOCK_MAX])
                          for i in range(0, len(plain), fsplit.BLOCK_MAX))  # fmt: skip
    h = hashlib.sha256()
    for piece in codec.iter_decode(name, io.BytesIO(stored).read, len(plain), reuse=True):
        h.update(piece)
    assert h.digest() == hashlib.sha256(plain).digest()
    # without reuse every piece is its own: they may be kept
    assert b"".join(list(codec.iter_decode(name, io.BytesIO(stored).read, len(plain)))) == plain


def encode(length: int, dtype: str | None, mode: str, data: bytes) -> tuple[str, bytes]:
    enc = codec.ChunkEncoder(length, dtype, 3, mode)
    out = b"".join(enc.feed(data[i : i + codec.PIECE]) for i in range(0, length, codec.PIECE))
    out += enc.finish()
    return enc.codec, out


@pytest.mark.parametrize(
    "data, dtype, mode, want",
    [
        (bf16(3 << 20), "BF16", "auto", "fsplit-bf16"),
        (bf16(3 << 20), "BF16", "zstd", "zstd"),
        (bf16(3 << 20), "BF16", "fsplit", "fsplit-bf16"),
        (bf16(3 << 20), None, "auto", "zstd"),
        (os.urandom(5 << 20), None, "auto", "raw"),
        (os.urandom(5 << 20), "BF16", "auto", "raw"),
        (bf16(5000) * 300, "BF16", "auto", "zstd"),  # repeats: zstd beats fsplit by far
        (b"ab" * 1000, None, "auto", "zstd"),
        (b"", None, "auto", "raw"),
    ],
    ids=["bf16", "bf16-zstd", "bf16-fsplit", "no-dtype", "random", "random-bf16",
         "repeated-bf16", "small", "empty"],
)  # fmt: skip
def test_codec_choice_and_round_trip(data: bytes, dtype, mode: str, want: str) -> None:
    name, stored = encode(len(data), dtype, mode, data)
    assert name == want
    assert decode(name, stored, len(data)) == data


def test_zstd_chunk_compresses_its_first_piece_once() -> None:
    data = bf16(5 << 20)  # two pieces, zstd (no dtype): the trial is the frame's start
    name, stored = encode(len(data), None, "auto", data)
    assert name == "zstd"
    assert zstandard.get_frame_parameters(stored).content_size == len(data)
    alone = len(FRAMES["checksum"].compress(data))
    assert len(stored) <= alone * 1.001


# --- restore: multi-chunk files are proven by what the file holds ------------------------------


@pytest.fixture
def sealed(tmp_path: Path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "big.bin").write_bytes(os.urandom(40_000) + bytes(30_000) + os.urandom(12_345))
    (model / "small.json").write_text('{"a": 1}')
    key = keys.generate(tmp_path / "k")
    store = open_store(str(tmp_path / "vault"), create=True)
    seal(str(model), store, key, SealOptions(name="m", chunk_size=4096))
    return store, key, model, tmp_path


def test_restore_of_many_small_chunks_is_bit_exact(sealed) -> None:
    store, key, model, tmp = sealed
    restore(store, "m", tmp / "out", [key.public], workers=3)
    for name in ("big.bin", "small.json"):
        assert (tmp / "out" / name).read_bytes() == (model / name).read_bytes()


def test_restore_names_the_damaged_object_of_a_multi_chunk_file(sealed) -> None:
    store, key, _model, tmp = sealed
    doc = store.local_path("bundles/m/data/weightvault.json").read_text()
    import json

    chunk = json.loads(doc)["files"][0]["chunks"][3]
    assert chunk["codec"] == "raw"
    obj = store.local_path(f"bundles/m/data/objects/{chunk['object']}")
    data = bytearray(obj.read_bytes())
    data[100] ^= 1
    obj.write_bytes(bytes(data))  # its name no longer matches: restore does not look
    with pytest.raises(IntegrityError, match=chunk["object"]):
        restore(store, "m", tmp / "out", [key.public])
    assert not (tmp / "out").exists()
