"""Chunk bytes <-> stored bytes.

Codecs (named per chunk in the manifest; docs/FORMAT.md section 5 defines each byte for byte):
  raw          stored bytes are the plaintext
  zstd         one Zstandard frame (RFC 8878) holding the plaintext
  fsplit-*     float exponent split, see fsplit.py and docs/FORMAT.md section 5.3

Decoding is pull-based and bounded by the declared plaintext length, so a hostile object can
neither make us allocate more than a few pieces nor produce more bytes than the manifest says.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import zstandard

from .errors import CorruptData, InputError

PIECE = 4 << 20  # unit of streaming: reads, codec blocks, hash updates
MAX_WINDOW = 1 << 27
# A codec must beat the next simpler one by this fraction to be chosen (its cost is CPU).
MARGIN = 0.01

Reader = Callable[[int], bytes]


def _fsplit():
    from . import fsplit

    return fsplit


def codec_names() -> set[str]:
    f = _fsplit()
    return {"raw", "zstd"} | {f.codec_name(d) for d in f.DTYPES}


def check_level(level: int) -> int:
    if not 1 <= level <= 22:
        raise InputError(f"zstd level {level} is out of range 1..22")
    return level


class ChunkEncoder:
    """Encodes one chunk fed as pieces of at most PIECE bytes. The codec is chosen on the first
    piece (weights are statistically uniform within a tensor, so one piece predicts the rest)."""

    def __init__(self, length: int, dtype: str | None, level: int = 3, mode: str = "auto"):
        self.length, self.dtype, self.level, self.mode = length, dtype, level, mode
        self.codec: str | None = None
        self._z = None

    def _choose(self, first: bytes) -> bytes:
        fs = _fsplit()
        float_ok = self.dtype in fs.DTYPES and self.mode in ("auto", "fsplit")
        if self.mode == "raw":
            self.codec = "raw"
            return first
        zsize = len(zstandard.ZstdCompressor(level=self.level).compress(first))
        if float_ok:
            trial = fs.encode_block(self.dtype, first)
            if self.mode == "fsplit" or len(trial) < zsize * (1 - MARGIN):
                self.codec = fs.codec_name(self.dtype)
                return trial
        if self.mode == "auto" and zsize >= len(first) * (1 - MARGIN):
            self.codec = "raw"
            return first
        self.codec = "zstd"
        cctx = zstandard.ZstdCompressor(
            level=self.level, write_content_size=True, write_checksum=True
        )
        self._z = cctx.compressobj(size=self.length)
        return self._z.compress(first)

    def feed(self, piece: bytes | memoryview) -> bytes:
        if self.codec is None:
            return self._choose(bytes(piece))
        if self.codec == "raw":
            return piece
        if self._z is not None:
            return self._z.compress(piece)
        return _fsplit().encode_block(self.dtype, piece)

    def finish(self) -> bytes:
        if self.codec is None:  # empty chunk
            self.codec = "raw"
        if self._z is not None:
            return self._z.flush()
        return b""


def iter_decode(codec: str, read: Reader, length: int) -> Iterator[bytes]:
    """Yield the plaintext, exactly `length` bytes, or raise CorruptData."""
    if codec == "raw":
        yield from _iter_raw(read, length)
    elif codec == "zstd":
        yield from _iter_zstd(read, length)
    elif codec.startswith("fsplit-"):
        fs = _fsplit()
        if codec not in {fs.codec_name(d) for d in fs.DTYPES}:
            raise CorruptData(f"unknown codec {codec!r}")
        yield from fs.iter_decode(codec, read, length)
    else:
        raise CorruptData(f"unknown codec {codec!r}")


def _iter_raw(read: Reader, length: int) -> Iterator[bytes]:
    left = length
    while left:
        data = read(min(PIECE, left))
        if not data:
            raise CorruptData(f"stored data ends {left} bytes early")
        left -= len(data)
        yield data
    if read(1):
        raise CorruptData("stored data is longer than declared")


class _Src:
    """A reader that first replays bytes already taken (the frame header we inspected)."""

    def __init__(self, head: bytes, read: Reader):
        self.head, self._read = head, read

    def read(self, n: int) -> bytes:
        if self.head:
            out, self.head = self.head[:n], self.head[n:]
            return out
        return self._read(n)


def _iter_zstd(read: Reader, length: int) -> Iterator[bytes]:
    head = read(18)  # the largest possible frame header
    try:
        params = zstandard.get_frame_parameters(head)
    except zstandard.ZstdError as e:
        raise CorruptData(f"not a zstd frame ({e})") from None
    if params.content_size != length:
        declared = (
            "no" if params.content_size == zstandard.CONTENTSIZE_UNKNOWN else params.content_size
        )
        raise CorruptData(f"zstd frame declares {declared} content bytes, expected {length}")
    if params.dict_id:
        raise CorruptData("zstd frame needs a dictionary")
    dctx = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW)
    left = length
    src = _Src(head, read)
    try:
        with dctx.stream_reader(src, read_size=1 << 20, read_across_frames=False) as zr:
            while left:
                data = zr.read(min(PIECE, left))
                if not data:
                    raise CorruptData(f"zstd frame ends {left} bytes before the declared length")
                left -= len(data)
                yield data
            if zr.read(1):
                raise CorruptData("zstd frame decodes to more than the declared length")
        if src.read(1):
            raise CorruptData("bytes follow the zstd frame")
    except zstandard.ZstdError as e:
        raise CorruptData(f"zstd: {e}") from None
