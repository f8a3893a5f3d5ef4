"""Chunk bytes <-> stored bytes.

Codecs (named per chunk in the manifest; docs/FORMAT.md section 5 defines each byte for byte):
  raw          stored bytes are the plaintext
  zstd         one Zstandard frame (RFC 8878) holding the plaintext
  fsplit-*     float exponent split, see fsplit.py and docs/FORMAT.md section 5.3

Decoding is pull-based and bounded by the declared plaintext length, so a hostile object can
neither make us allocate more than a few pieces nor produce more bytes than the manifest says.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import zstandard

from weightvault.errors import CorruptData, InputError

PIECE = 4 << 20  # unit of streaming: reads, codec blocks, hash updates
MAX_WINDOW = 1 << 27
# A codec must beat the next simpler one by this fraction to be chosen (its cost is CPU).
MARGIN = 0.01

Reader = Callable[[int], bytes]


def _fsplit():
    from weightvault.format import fsplit

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
        if float_ok:
            trial = fs.encode_block(self.dtype, first)  # kept as the first block if it wins
            if self.mode == "fsplit" or len(trial) < _zstd_size_estimate(first, self.level) * (
                1 - MARGIN
            ):
                self.codec = fs.codec_name(self.dtype)
                return trial
        self.codec = "zstd"
        cctx = zstandard.ZstdCompressor(
            level=self.level, write_content_size=True, write_checksum=True
        )
        self._z = cctx.compressobj(size=self.length)
        # the trial is the real frame's start, so when zstd is kept nothing is redone: the
        # whole frame for a one-piece chunk, else flushed to a block boundary (its size is
        # then exactly what zstd made of the piece)
        out = self._z.compress(first)
        checksum = 0
        if len(first) >= self.length:
            out += self._z.flush()
            self._z, checksum = None, 4
        elif self.mode == "auto":
            out += self._z.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
        if self.mode == "auto" and len(out) - checksum >= len(first) * (1 - MARGIN):
            self.codec, self._z = "raw", None
            return first
        return out

    def feed(self, piece: bytes | memoryview) -> bytes:
        return b"".join(self.feed_parts(piece))

    def feed_parts(self, piece: bytes | memoryview) -> list:
        """What feed returns, as buffers to be written in order (views that are valid until
        the next call: an fsplit raw stream lives in per-thread scratch)."""
        if self.codec is None:
            return [self._choose(bytes(piece))]
        if self.codec == "raw":
            return [piece]
        if self._z is not None:
            return [self._z.compress(piece)]
        return _fsplit().encode_block_parts(self.dtype, piece)

    def finish(self) -> bytes:
        if self.codec is None:  # empty chunk
            self.codec = "raw"
        if self._z is not None:
            return self._z.flush()
        return b""


SAMPLE, SAMPLES = 256 << 10, 4


def _zstd_size_estimate(piece: bytes, level: int) -> float:
    """What zstd would make of `piece`, from SAMPLES slices of SAMPLE bytes spread over it:
    the fsplit-vs-zstd trial costs a quarter of compressing the whole piece, and its zstd side
    is thrown away whenever fsplit wins (on float weights, nearly always, by 10 % or more)."""
    if len(piece) <= SAMPLE * SAMPLES:
        return len(zstandard.ZstdCompressor(level=level).compress(piece))
    step = (len(piece) - SAMPLE) // (SAMPLES - 1)
    mv = memoryview(piece)
    sample = b"".join(mv[i * step : i * step + SAMPLE] for i in range(SAMPLES))
    return len(zstandard.ZstdCompressor(level=level).compress(sample)) * len(piece) / len(sample)


def iter_decode(
    codec: str, read: Reader, length: int, *, reuse: bool = False
) -> Iterator[bytes | memoryview]:
    """Yield the plaintext, exactly `length` bytes, or raise CorruptData.

    `reuse=True`: pieces may be views of a per-thread buffer that the next piece (of any
    decoder on this thread) overwrites, which spares a copy into fresh memory per piece; the
    caller must consume each piece (write, hash or copy it) before asking for the next."""
    if codec == "raw":
        yield from _iter_raw(read, length)
    elif codec == "zstd":
        yield from _iter_zstd(read, length, reuse)
    elif codec.startswith("fsplit-"):
        fs = _fsplit()
        if codec not in {fs.codec_name(d) for d in fs.DTYPES}:
            raise CorruptData(f"unknown codec {codec!r}")
        yield from fs.iter_decode(codec, read, length, reuse=reuse)
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


ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class _OneFrame:
    """The stored bytes of a zstd object, handed to the decompressor while their structure is
    walked (RFC 8878 3.1.1: frame header, then block headers, then the optional checksum), so
    that the object must be exactly one frame: libzstd stops at the frame's end without looking
    at what follows, and skips skippable frames. Raises CorruptData as soon as a byte follows
    the frame. Cheap: one 3-byte header per block of up to 128 KiB. `head` (bytes already
    taken from `read`) is replayed first."""

    def __init__(self, head: bytes, read: Reader):
        self.head, self._read = head, read
        fhd = head[4]
        did, fcs = (0, 1, 2, 4)[fhd & 3], (0, 2, 4, 8)[fhd >> 6]
        single = fhd >> 5 & 1
        self._skip = 5 + (1 - single) + did + (fcs or single)  # the frame header
        self._checksum = 4 if fhd & 4 else 0
        self._partial = b""  # a block header split across reads
        self._last = False  # the last block's header was seen
        self.ended = False  # True once every byte of the frame has passed

    def read(self, n: int) -> bytes:
        if self.head:
            data, self.head = self.head[:n], self.head[n:]
        else:
            data = self._read(n)
        if data:
            self._walk(data)
        return data

    def _walk(self, data: bytes) -> None:
        pos, end = 0, len(data)
        while pos < end:
            if self._skip:
                k = min(self._skip, end - pos)
                pos += k
                self._skip -= k
                continue
            if self._last:
                raise CorruptData("bytes follow the zstd frame, which must be the whole object")
            need = 3 - len(self._partial)
            self._partial += data[pos : pos + need]
            pos += need
            if len(self._partial) < 3:
                return
            h = int.from_bytes(self._partial, "little")
            self._partial = b""
            kind = h >> 1 & 3
            if kind == 3:
                raise CorruptData("zstd frame has a block of the reserved type")
            self._skip = 1 if kind == 1 else h >> 3
            if h & 1:
                self._last = True
                self._skip += self._checksum
        self.ended = self._last and not self._skip


_local = threading.local()


def _piece_buffer() -> memoryview:
    buf = getattr(_local, "piece", None)
    if buf is None:
        buf = _local.piece = memoryview(bytearray(PIECE))
    return buf


def _iter_zstd(read: Reader, length: int, reuse: bool = False) -> Iterator[bytes | memoryview]:
    head = read(18)  # the largest possible frame header (a reader may return it in parts)
    while 0 < len(head) < 18 and (more := read(18 - len(head))):
        head += more
    if head[:4] != ZSTD_MAGIC or len(head) < 6:
        raise CorruptData(
            "not a zstd frame at the start of the object (skippable frames are not allowed)"
        )
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
    # the frame rules are the ones fsplit streams follow (FORMAT.md 5.2): every writer since
    # format version 1 sets the checksum, and libzstd ignores the unused bit, so a flip there
    # would otherwise pass unnoticed
    if head[4] & 0x18:
        raise CorruptData("zstd frame header has its unused or reserved bit set")
    if not params.has_checksum:
        raise CorruptData("zstd frame has no content checksum")
    dctx = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW)
    left = length
    src = _OneFrame(head, read)
    try:
        with dctx.stream_reader(src, read_size=1 << 20, read_across_frames=False) as zr:
            buf = _piece_buffer() if reuse else None
            while left:
                if buf is not None:
                    data = buf[: zr.readinto(buf[: min(PIECE, left)])]
                else:
                    data = zr.read(min(PIECE, left))
                if not data:
                    raise CorruptData(f"zstd frame ends {left} bytes before the declared length")
                left -= len(data)
                yield data
            if zr.read(1):
                raise CorruptData("zstd frame decodes to more than the declared length")
        if src.read(1) or not src.ended:  # a byte more raises in src; fewer: checksum cut
            raise CorruptData("zstd frame is truncated")
    except zstandard.ZstdError as e:
        raise CorruptData(f"zstd: {e}") from None
