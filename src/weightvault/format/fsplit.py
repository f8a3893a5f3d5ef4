"""fsplit: a lossless, dtype-aware codec for the bytes of float tensors ("exponent split").

Each element's bits are redistributed over ``itemsize`` byte streams so that the highly
predictable exponent lands in a stream of its own, which zstd (tuned to do little more than
Huffman-code its literals) shrinks to about a third; the near-random sign and mantissa bits go
into the other streams, each kept raw unless zstd makes it smaller.

The normative format is docs/FORMAT.md (Appendix A); this module is its reference implementation.
Stored form of a chunk: the concatenation of encoded blocks, each holding at most
``BLOCK_MAX`` plaintext bytes.

Block layout (all integers little-endian)::

    0   u8   magic 0xF5
    1   u8   format version, 1
    2   u8   layout: 1 bf16, 2 f16, 3 f32
    3   u32  L, plaintext length of the block, 0 <= L <= BLOCK_MAX
    7   S x (u8 method, u32 stored length)     S = item size (2 or 4), method 0 raw / 1 zstd
    ..  the S stream payloads, in order
    ..  the tail: the last L mod S plaintext bytes, verbatim

Thread safety: every function may be called from several threads at once; zstd contexts and
work buffers are kept per thread (8.5-14.5 MiB for each thread that has encoded or decoded), and
numpy and zstandard release the GIL while they work, so encoders in threads scale with cores.
Input needs no alignment (an odd offset into a larger buffer works, a little slower).
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable, Iterator

import numpy as np
import zstandard

from weightvault.errors import CorruptData

BLOCK_MAX = 4 * 1024 * 1024
DTYPES: dict[str, int] = {"BF16": 2, "F16": 2, "F32": 4}

MAGIC = 0xF5
VERSION = 1
METHOD_RAW = 0
METHOD_ZSTD = 1

_LAYOUT = {"BF16": 1, "F16": 2, "F32": 3}
_CODECS = {"BF16": "fsplit-bf16", "F16": "fsplit-f16", "F32": "fsplit-f32"}
_DTYPE_OF_CODEC = {codec: dtype for dtype, codec in _CODECS.items()}

_PREFIX = struct.Struct("<BBBI")  # magic, version, layout, plaintext length
_DESC = {size: struct.Struct("<" + "BI" * size) for size in set(DTYPES.values())}

_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# Decoders accept any zstd window up to this; the encoder's frames need at most 4 MiB.
_MAX_WINDOW = 1 << 23

# Entropy-coding-leaning zstd parameters: the "fast" strategy with a tiny hash table and
# a long minimum match finds almost no matches, so the literals are Huffman-coded per
# 128 KiB zstd block. On exponent streams this beats zstd -3 both in size (0.326 vs 0.405
# of input on bf16 normal(0, 0.02)) and in speed (about 750 vs 130 MB/s). The parameters
# only affect encoding; any conforming zstd frame decodes.
_ENCODE_PARAMS = zstandard.ZstdCompressionParameters(
    window_log=21,
    chain_log=6,
    hash_log=6,
    search_log=1,
    min_match=7,
    target_length=0,
    strategy=zstandard.STRATEGY_FAST,
    write_content_size=True,
    write_checksum=True,  # XXH64 of the stream: a flipped bit in a zstd stream is caught
)
# Better still, through libzstd's own API (python-zstandard's cffi backend reaches it; its C
# backend cannot): maximal acceleration, so the match finder skips ahead almost at once, with
# literal compression forced on (zstd turns it off for accelerated "fast" by default). That is
# Huffman coding and little else: on the same exponent streams 0.325 of input at about
# 950 MB/s, against 0.326 at 620-700 MB/s with _ENCODE_PARAMS. Same library, same frame format.
# Only for the exponent stream: the low mantissa byte of real fp32 weights (MiniLM) holds
# repeats that only the unaccelerated match finder sees (0.13 % of the input more without it).
_ACCELERATION = 1 << 16


class _CffiCompressor:
    """One libzstd compression context per thread and kind of stream (the exponent stream's
    accelerated one, or the plain _ENCODE_PARAMS one for the others). `compress` writes into
    a buffer of its own per slot and returns a view of it, valid until that slot is used
    again: no copy of the frame. The buffer is one byte shorter than the stream, so a frame
    that would not be kept ends in libzstd's dstSize_tooSmall instead of being built whole."""

    def __init__(self, accelerate: bool) -> None:
        from zstandard import backend_cffi as zc  # noqa: PLC0415 - optional backend

        self.ffi, self.lib = ffi, lib = zc.ffi, zc.lib
        self.cctx = ffi.gc(lib.ZSTD_createCCtx(), lib.ZSTD_freeCCtx)
        params = [
            (lib.ZSTD_c_windowLog, 21),
            (lib.ZSTD_c_hashLog, 6),
            (lib.ZSTD_c_chainLog, 6),
            (lib.ZSTD_c_searchLog, 1),
            (lib.ZSTD_c_minMatch, 7),
            (lib.ZSTD_c_strategy, lib.ZSTD_fast),
            (lib.ZSTD_c_contentSizeFlag, 1),
            (lib.ZSTD_c_checksumFlag, 1),
        ]
        if accelerate:
            params += [(lib.ZSTD_c_targetLength, _ACCELERATION),
                       (lib.ZSTD_c_literalCompressionMode, lib.ZSTD_ps_enable)]  # fmt: skip
        for param, value in params:
            if lib.ZSTD_isError(lib.ZSTD_CCtx_setParameter(self.cctx, param, value)):
                raise RuntimeError("libzstd refused a compression parameter")
        self.too_small = lib.ZSTD_error_dstSize_tooSmall
        self.out: dict[int, object] = {}

    def compress(self, data, slot: int = 0) -> memoryview | None:
        """The zstd frame of `data` if it is shorter than `data`, else None."""
        ffi, lib = self.ffi, self.lib
        cap = len(data) - 1
        if cap <= 0:
            return None
        out = self.out.get(slot)
        if out is None:
            out = self.out[slot] = ffi.new("char[]", BLOCK_MAX // 2)  # a stream's largest size
        n = lib.ZSTD_compress2(self.cctx, out, cap, ffi.from_buffer(data), len(data))
        if lib.ZSTD_isError(n):
            if lib.ZSTD_getErrorCode(n) == self.too_small:
                return None
            raise RuntimeError(ffi.string(lib.ZSTD_getErrorName(n)).decode())
        return memoryview(ffi.buffer(out, n))


class _PlainCompressor:
    """The fallback without cffi (or with a libzstd lacking a parameter): python-zstandard's
    own API with _ENCODE_PARAMS, for every stream."""

    def __init__(self) -> None:
        self.cctx = zstandard.ZstdCompressor(compression_params=_ENCODE_PARAMS)

    def compress(self, data, slot: int = 0) -> bytes | None:
        packed = self.cctx.compress(data)
        return packed if len(packed) < len(data) else None


def _new_compressor(accelerate: bool):
    try:
        return _CffiCompressor(accelerate)
    except Exception:  # noqa: BLE001 - no cffi, or a libzstd without the parameter
        return _PlainCompressor()


_local = threading.local()

_U8 = np.dtype(np.uint8)
_U16 = np.dtype("<u2")
_U32 = np.dtype("<u4")


def codec_name(dtype: str) -> str:
    """The codec name recorded for a chunk of ``dtype`` elements (``fsplit-bf16`` ...)."""
    try:
        return _CODECS[dtype]
    except KeyError:
        raise ValueError(f"fsplit does not handle dtype {dtype!r}") from None


def _compressor():
    """This thread's compressor for the streams other than the exponent's."""
    c = getattr(_local, "cctx", None)
    if c is None:
        c = _local.cctx = _new_compressor(accelerate=False)
    return c


def _exponent_compressor():
    c = getattr(_local, "ectx", None)
    if c is None:
        c = _local.ectx = _new_compressor(accelerate=True)
    return c


def _decompressor() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "dctx", None)
    if d is None:
        d = _local.dctx = zstandard.ZstdDecompressor(max_window_size=_MAX_WINDOW)
    return d


# --- the split and its inverse ---------------------------------------------------------
#
# 16-bit element w (bf16: s eeeeeeee mmmmmmm, f16: s eeeee mmmmmmmmmm):
#   stream 0 = bits 14..7 of w       (bf16: the exponent; f16: exponent + top 3 mantissa bits)
#   stream 1 = bit 15 << 7 | bits 6..0
# 32-bit element w (f32: s eeeeeeee m*23):
#   streams 0 and 1 = the 16-bit split of the upper half (w >> 16): exponent; sign + mant 22..16
#   stream 2 = bits 15..8, stream 3 = bits 7..0


# Elements per pass of the split and join loops. One pass over a whole 4 MiB block runs each
# numpy operation over 4-8 MiB operands, out of the core's L2 cache (and, with several
# threads, out of the shared L3 too); passes of 256 KiB of input keep them in L2. The split of
# a bf16 block takes 1.2-1.5 ms so, against 2.1-2.5 ms in whole-block passes (when the split
# was about a sixth of seal's CPU time).
_STEP_BYTES = 256 << 10


class _Scratch:
    """Per-thread work buffers, reused block after block: the streams and the joined output
    (BLOCK_MAX each) and two pass-sized temporaries.

    Fresh memory is costly: with numpy temporaries, glibc's heap trimming made every decoded
    block page-fault in about 8 MiB, halving decode speed. Writing into these buffers with
    same-type in-place operations (mixed-type ufuncs are about 3x slower) avoids that.
    """

    def __init__(self) -> None:
        self.a = np.empty(BLOCK_MAX, dtype=_U8)
        self.streams = np.empty(BLOCK_MAX, dtype=_U8)
        self._t = np.empty(_STEP_BYTES, dtype=_U8)
        self._u = np.empty(_STEP_BYTES, dtype=_U8)

    def temps(self, dt: np.dtype) -> tuple[np.ndarray, np.ndarray]:
        return self._t.view(dt), self._u.view(dt)


def _scratch() -> _Scratch:
    s = getattr(_local, "scratch", None)
    if s is None:
        s = _local.scratch = _Scratch()
    return s


def _passes(n: int, size: int) -> Iterator[tuple[int, int]]:
    step = _STEP_BYTES // size
    for a in range(0, n, step):
        yield a, min(n, a + step)


def _split(size: int, body: memoryview) -> list[np.ndarray]:
    """Split whole elements into `size` byte streams, one byte per element in each.

    The streams are views of this thread's scratch: use them before the next call.
    """
    n = len(body) // size
    scratch = _scratch()
    out = [scratch.streams[i * n : (i + 1) * n] for i in range(size)]
    dt = _U16 if size == 2 else _U32
    words = np.frombuffer(body, dtype=dt)
    t0, u0 = scratch.temps(dt)
    for a, b in _passes(n, size):
        v, t, u = words[a:b], t0[: b - a], u0[: b - a]
        if size == 2:
            np.right_shift(v, 7, out=t)
            np.copyto(out[0][a:b], t, casting="unsafe")  # bits 14..7
            np.bitwise_and(v, 0x807F, out=t)
        else:
            np.right_shift(v, 23, out=t)
            np.copyto(out[0][a:b], t, casting="unsafe")  # bits 30..23
            np.right_shift(v, 8, out=t)
            np.copyto(out[2][a:b], t, casting="unsafe")  # bits 15..8
            np.copyto(out[3][a:b], v, casting="unsafe")  # bits 7..0
            np.right_shift(v, 16, out=t)
            t &= 0x807F
        np.right_shift(t, 8, out=u)
        t |= u
        np.copyto(out[1][a:b], t, casting="unsafe")  # sign << 7 | the next 7 bits
    return out


def _join(size: int, streams: list[np.ndarray]) -> np.ndarray:
    """Inverse of _split: the elements as little-endian words, in this thread's scratch (the
    first n * size bytes of `_scratch().a`): use them before the next call."""
    n = len(streams[0])
    dt = _U16 if size == 2 else _U32
    scratch = _scratch()
    words = scratch.a[: n * size].view(dt)
    t0, _ = scratch.temps(dt)
    for a, b in _passes(n, size):
        w, t = words[a:b], t0[: b - a]
        np.copyto(w, streams[0][a:b])
        w <<= 7 if size == 2 else 23
        np.copyto(t, streams[1][a:b])
        t *= 257  # b << 8 | b
        t &= 0x807F  # sign at bit 15, 7 bits at 6..0
        if size == 4:
            t <<= 16
        w |= t
        if size == 4:
            np.copyto(t, streams[2][a:b])
            t <<= 8
            w |= t
            np.copyto(t, streams[3][a:b])
            w |= t
    return words


# --- encoding ----------------------------------------------------------------------------


def encode_block(dtype: str, block: bytes | bytearray | memoryview) -> bytes:
    """Encode one block of little-endian ``dtype`` elements (at most BLOCK_MAX bytes).

    Any length is accepted: the bytes after the last whole element are carried verbatim.
    The result is self-delimiting; a chunk's stored form is its blocks' encodings in order.
    """
    return b"".join(encode_block_parts(dtype, block))


def encode_block_parts(dtype: str, block: bytes | bytearray | memoryview) -> list:
    """encode_block as the pieces that, concatenated, are the encoded block (header, streams,
    tail), so a writer can skip the copy a join makes. A stream, raw or zstd, is a view of this
    thread's buffers (and the tail a view of `block`): use the parts before the next call."""
    size = DTYPES.get(dtype)
    if size is None:
        raise ValueError(f"fsplit does not handle dtype {dtype!r}")
    mv = memoryview(block).cast("B")
    length = len(mv)
    if length > BLOCK_MAX:
        raise ValueError(f"fsplit block of {length} bytes exceeds BLOCK_MAX ({BLOCK_MAX})")
    n = length // size
    whole = n * size
    fields: list[int] = []
    payloads: list[object] = []
    if n:
        compressors = (_exponent_compressor(), _compressor())
        for i, stream in enumerate(_split(size, mv[:whole])):
            packed = compressors[i > 0].compress(stream, i)
            if packed is not None:
                fields += (METHOD_ZSTD, len(packed))
                payloads.append(packed)
            else:
                fields += (METHOD_RAW, n)
                payloads.append(memoryview(stream))
    else:
        fields = [METHOD_RAW, 0] * size
    head = _PREFIX.pack(MAGIC, VERSION, _LAYOUT[dtype], length) + _DESC[size].pack(*fields)
    parts = [head, *payloads]
    if whole < length:
        parts.append(mv[whole:])
    return parts


# --- decoding ----------------------------------------------------------------------------


def _read_exact(read: Callable[[int], bytes], n: int, what: str) -> bytes:
    if n == 0:
        return b""
    data = read(n)
    if len(data) == n:
        return data if isinstance(data, bytes) else bytes(data)
    if len(data) > n:
        raise CorruptData(f"fsplit: reader returned more bytes than asked for ({what})")
    parts = [data]
    got = len(data)
    while got < n and data:
        data = read(n - got)
        if len(data) > n - got:
            raise CorruptData(f"fsplit: reader returned more bytes than asked for ({what})")
        parts.append(data)
        got += len(data)
    if got != n:
        raise CorruptData(f"fsplit: stored data truncated in {what} ({got} of {n} bytes)")
    return b"".join(parts)


def _unzstd(data: bytes, n: int, what: str) -> bytes:
    """Decode a stored stream that must be exactly one zstd frame of exactly n bytes."""
    if not data.startswith(_ZSTD_MAGIC):
        raise CorruptData(f"fsplit: {what} is not a zstd frame")
    if len(data) > 4 and data[4] & 0x18:
        # Frame_Header_Descriptor's unused and reserved bits must be 0: libzstd ignores the
        # unused one, so without this check a flipped bit there would pass unnoticed
        raise CorruptData(f"fsplit: {what} zstd frame header has unused bits set")
    try:
        params = zstandard.get_frame_parameters(data)
    except zstandard.ZstdError as e:
        raise CorruptData(f"fsplit: {what} has a bad zstd frame header: {e}") from None
    if params.content_size != n:
        raise CorruptData(
            f"fsplit: {what} zstd frame declares {params.content_size} bytes, expected {n}"
        )
    if not params.has_checksum:
        raise CorruptData(f"fsplit: {what} zstd frame has no content checksum")
    if params.dict_id != 0:
        raise CorruptData(f"fsplit: {what} zstd frame needs a dictionary")
    if params.window_size > _MAX_WINDOW:
        raise CorruptData(f"fsplit: {what} zstd frame window too large")
    dobj = _decompressor().decompressobj(write_size=max(n, 1))
    try:
        out = dobj.decompress(data)
    except zstandard.ZstdError as e:
        raise CorruptData(f"fsplit: {what} does not decompress: {e}") from None
    if not dobj.eof:
        raise CorruptData(f"fsplit: {what} zstd frame is truncated")
    if dobj.unused_data:
        raise CorruptData(f"fsplit: {what} has bytes after its zstd frame")
    if len(out) != n:
        raise CorruptData(f"fsplit: {what} decompressed to {len(out)} bytes, expected {n}")
    return out


def _decode_one(
    read: Callable[[int], bytes],
    size: int,
    layout: int,
    first: bytes,
    remaining: int,
    reuse: bool = False,
) -> bytes | memoryview:
    prefix = first + _read_exact(read, _PREFIX.size - len(first), "block header")
    magic, version, got_layout, length = _PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise CorruptData(f"fsplit: bad block magic 0x{magic:02x}")
    if version != VERSION:
        raise CorruptData(f"fsplit: unsupported block version {version}")
    if got_layout != layout:
        raise CorruptData(f"fsplit: block layout {got_layout} does not match codec ({layout})")
    if length > BLOCK_MAX:
        raise CorruptData(f"fsplit: block claims {length} bytes, over BLOCK_MAX")
    if length > remaining:
        raise CorruptData("fsplit: stored data decodes to more bytes than expected")
    desc = _DESC[size]
    fields = desc.unpack(_read_exact(read, desc.size, "block header"))
    n = length // size
    methods = fields[0::2]
    stored = fields[1::2]
    for i, (method, slen) in enumerate(zip(methods, stored, strict=True)):
        if method == METHOD_RAW:
            if slen != n:
                raise CorruptData(f"fsplit: raw stream {i} holds {slen} bytes, expected {n}")
        elif method == METHOD_ZSTD:
            if not 0 < slen <= n:
                raise CorruptData(f"fsplit: zstd stream {i} length {slen} out of range")
        else:
            raise CorruptData(f"fsplit: unknown stream method {method}")
    streams = []
    for i, (method, slen) in enumerate(zip(methods, stored, strict=True)):
        data = _read_exact(read, slen, f"stream {i}")
        if method == METHOD_ZSTD:
            data = _unzstd(data, n, f"stream {i}")
        streams.append(np.frombuffer(data, dtype=_U8))
    tail = _read_exact(read, length - n * size, "block tail")
    if not n:
        return tail
    _join(size, streams)
    out = _scratch().a
    if tail:
        out[n * size : length] = np.frombuffer(tail, dtype=_U8)
    # a copy into fresh memory costs more than the join itself: skip it when the caller can
    return memoryview(out[:length]) if reuse else out[:length].tobytes()


def iter_decode(
    codec: str, read: Callable[[int], bytes], length: int, *, reuse: bool = False
) -> Iterator[bytes | memoryview]:
    """Decode a chunk stored as fsplit blocks; yield its plaintext, exactly ``length`` bytes.

    ``read(n)`` returns up to n stored bytes, fewer only at the end of the stored data.
    Raises CorruptData if the stored bytes are malformed, truncated, too long, carry trailing
    bytes or decode to a length other than ``length``: the error can come after some pieces
    were yielded, so a caller must not trust what it got until the iterator is exhausted.
    Memory stays within a few BLOCK_MAX whatever the stored bytes claim.

    With ``reuse=True`` each piece is a view of this thread's scratch buffer, overwritten when
    the next piece is decoded (by any decoder on the thread): consume it (write, hash or copy
    it) before asking for the next. Without, every piece is a bytes object of its own.
    """
    dtype = _DTYPE_OF_CODEC.get(codec)
    if dtype is None:
        raise ValueError(f"not an fsplit codec: {codec!r}")
    if length < 0:
        raise ValueError("length must be >= 0")
    return _iter_blocks(read, DTYPES[dtype], _LAYOUT[dtype], length, reuse)


def _iter_blocks(
    read: Callable[[int], bytes], size: int, layout: int, length: int, reuse: bool
) -> Iterator[bytes | memoryview]:
    produced = 0
    blocks = 0
    while True:
        first = read(1)
        if not first:
            break
        if len(first) != 1:
            raise CorruptData("fsplit: reader returned more bytes than asked for")
        piece = _decode_one(read, size, layout, bytes(first), length - produced, reuse)
        blocks += 1
        if not piece and (length or blocks > 1):
            raise CorruptData("fsplit: empty block where none may be (only an empty chunk has one)")
        produced += len(piece)
        if piece:
            yield piece
    if produced != length:
        raise CorruptData(f"fsplit: stored data decodes to {produced} bytes, expected {length}")
