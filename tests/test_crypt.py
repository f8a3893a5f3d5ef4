"""The sealed-object format (FORMAT.md 10.3): round trips at every segment boundary, sizes
derivable from the stored size alone, and every kind of tampering refused."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weightvault.errors import CorruptData, WeightvaultError
from weightvault.format import crypt

S = crypt.SEGMENT
DK, SALT = crypt.new_data_key(), crypt.new_salt()


@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, S - 1, S, S + 1, 2 * S, 2 * S + 17])
def test_round_trip_and_size(n):
    data = os.urandom(n)
    sealed = crypt.seal_bytes(DK, SALT, "chunk", 7, data)
    assert len(sealed) == crypt.sealed_size(n)
    assert crypt.plain_size(len(sealed)) == n
    assert crypt.open_bytes(DK, SALT, "chunk", 7, sealed, n) == data


def test_streamed_pieces_equal_one_shot_layout():
    data = os.urandom(3 * S + 5)
    e = crypt.Encryptor(DK, SALT, "chunk", 0)
    out = b"".join(e.feed(data[i : i + 777_777]) for i in range(0, len(data), 777_777))
    out += e.finish()
    assert crypt.open_bytes(DK, SALT, "chunk", 0, out, len(data)) == data


@given(st.integers(min_value=0, max_value=10 * S))
def test_plain_size_inverts_sealed_size(n):
    assert crypt.plain_size(crypt.sealed_size(n)) == n


@given(st.integers(min_value=0, max_value=10 * S))
def test_plain_size_refuses_impossible_sizes(stored):
    n = crypt.plain_size(stored)
    assert n is None or crypt.sealed_size(n) == stored


@pytest.mark.parametrize("how", ["flip", "truncate", "extend", "drop-last-segment", "magic",
                                 "wrong-key", "wrong-index", "wrong-label"])  # fmt: skip
def test_tampering_is_refused(how):
    data = os.urandom(2 * S + 100)
    sealed = bytearray(crypt.seal_bytes(DK, SALT, "chunk", 3, data))
    dk, label, index = DK, "chunk", 3
    if how == "flip":
        sealed[len(sealed) // 2] ^= 0x80
    elif how == "truncate":
        del sealed[-1]
    elif how == "extend":
        sealed += b"\0"
    elif how == "drop-last-segment":
        del sealed[crypt.HEADER + 2 * (S + crypt.TAG) :]
    elif how == "magic":
        sealed[0] ^= 1
    elif how == "wrong-key":
        dk = crypt.new_data_key()
    elif how == "wrong-index":
        index = 4
    else:
        label = "private"
    with pytest.raises(CorruptData):
        crypt.open_bytes(dk, SALT, label, index, bytes(sealed), len(data) + 10)


@settings(max_examples=200)
@given(st.binary(max_size=4096))
def test_hostile_bytes_never_escape_as_other_errors(blob):
    try:
        crypt.open_bytes(DK, SALT, "chunk", 0, blob, 1 << 20)
    except WeightvaultError:
        pass


def test_key_check():
    kc = {"salt": SALT, "key_check": crypt.key_check(DK, SALT)}
    assert crypt.key_opens(DK, kc)
    assert not crypt.key_opens(crypt.new_data_key(), kc)


def test_shares_split_and_combine():
    shares = crypt.split(DK, 2, 3)
    enc = {"salt": SALT, "key_check": crypt.key_check(DK, SALT),
           "shares": {"threshold": 2, "identifier": shares[0].identifier},
           "envelopes": [{"kind": "share", "share_digest": crypt.share_digest(SALT, s.text)}
                         for s in shares]}  # fmt: skip
    assert crypt.combine([("a", shares[0]), ("c", shares[2])], enc) == DK
    with pytest.raises(crypt.NotEnoughShares, match="1 more share"):
        crypt.combine([("a", shares[0])], enc)
    with pytest.raises(crypt.KeyAccessError, match="same share"):
        crypt.combine([("a", shares[0]), ("a2", shares[0])], enc)
    other = crypt.split(crypt.new_data_key(), 2, 3)[0]
    with pytest.raises(crypt.KeyAccessError, match="another bundle"):
        crypt.combine([("a", shares[0]), ("x", other)], enc)
    # more than K of them: SLIP-39 combines exactly K, the rest are spare
    assert crypt.combine([(w, s) for w, s in zip("abc", shares, strict=True)], enc) == DK
    # another split of the same key (an earlier version's shares, FORMAT.md 10.8): taken,
    # because the key they combine to passes this bundle's key check
    older = crypt.split(DK, 2, 2)
    assert crypt.recover([("o1", older[0]), ("o2", older[1])], enc) == (DK, ["o1", "o2"], False)
    # a quorum of another key's split: the key check refuses it
    x = crypt.split(crypt.new_data_key(), 2, 2)
    with pytest.raises(crypt.KeyAccessError, match="x1, x2: .*another bundle.*key check"):
        crypt.combine([("x1", x[0]), ("x2", x[1])], enc)
    # one of this bundle's and one of another split of the same key: a quorum of neither
    with pytest.raises(crypt.KeyAccessError, match="o1: .*another bundle.*1 of the 2 shares"):
        crypt.combine([("a", shares[0]), ("o1", older[0])], enc)
    # words survive case and spacing changes made while copying them by hand
    again = crypt.parse_share("  " + shares[1].text.upper().replace(" ", "\n  ") + "\n", "paper")
    assert again.text == shares[1].text


def test_a_lineage_chunk_waits_encrypted_on_disk():
    """Version 5 seals a chunk only once its whole plaintext has been through the nonce's
    HMAC: a chunk beyond the spool's memory limit waits in a temporary file, encrypted under a
    key that never leaves memory, and comes back exactly."""
    import os

    from weightvault.format.crypt import Spool

    plain = os.urandom(1 << 20) * 12  # 12 MiB, a recognisable repeat
    s = Spool(8 << 20)
    for i in range(0, len(plain), 3_000_000):
        s.write(plain[i : i + 3_000_000])
    s._file.seek(0)
    on_disk = s._file.read()
    assert len(on_disk) == len(plain) and plain[: 1 << 20] not in on_disk
    assert b"".join(s.pieces(4 << 20)) == plain
    s.close()
    small = Spool(8 << 20)
    small.write(b"abc")
    assert small._file is None and b"".join(small.pieces(2)) == b"abc"
