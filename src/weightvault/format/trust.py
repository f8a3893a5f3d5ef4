"""Trust policy: which keys a reader trusts, how many of them must sign a bundle, and what the
preservation log says about them since (rotations and revocations, format/keystatement.py).

A policy is the list of trusted public keys (it IS a list, so every caller that takes
`trusted: list[PublicKey]` takes a policy unchanged) plus a threshold K: a manifest is trusted
when signatures by at least K distinct trusted keys verify and no signature by a trusted key
fails. A plain list is the policy "any one of these keys, as they are".

With a key history (KeyHistory, built from the log's entries in order), each trusted key is a
*slot*: a rotation hands the slot to a successor from that log position on, a revocation ends
a key's trust for what it signed from `since` on. A bundle's position is its `sealed` entry in
the same log; a signature counts for its slot only if the key was valid at that position.
Rules (normative text: docs/FORMAT.md section 13):

- a rotation counts if signed by both keys and the old key was valid at the rotation's entry;
- a revocation counts if signed by the revoked key itself or a key that named it (its
  predecessors in its slot), or by keys of `threshold` distinct slots valid at its entry; it
  also voids rotations the revoked key signed at or after `since`;
- a key that was ever rotated away or revoked counts only for bundles the log shows sealed in
  its window: a bundle missing from the log is judged by keys whose status never changed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from weightvault.errors import CorruptData, InputError, TrustError
from weightvault.format.keys import PublicKey, verify_threshold


@dataclass
class Window:
    """When one key may sign for its slot, in log positions."""

    key: PublicKey
    slot: str  # key id of the trusted key this one descends from
    start: int = -1  # the rotation entry that made it valid (-1: trusted from the start)
    end: int | None = None  # the rotation entry that handed its slot on
    end_time: str | None = None
    successor: str | None = None
    via: object | None = None  # the rotation Statement that made it valid
    revoked: tuple[str, int, object] | None = None  # (since, entry, Statement)

    def valid_at(self, index: int, time: str) -> bool:
        return (self.start < index and (self.end is None or index < self.end)
                and not (self.revoked and time >= self.revoked[0]))  # fmt: skip


class KeyHistory:
    """The trusted keys' history as one log tells it: entries are (index, statement dict) in log
    order; `sealed` entries give bundles their position, `key` entries carry a key statement
    ({"statement": S, "signatures": [...]} members)."""

    def __init__(self, roots: Iterable[PublicKey], threshold: int,
                 entries: Iterable[tuple[int, dict]], where: str = "preservation log"):  # fmt: skip
        from weightvault.format import keystatement

        self.windows: dict[str, Window] = {k.key_id: Window(k, k.key_id) for k in roots}
        self.threshold = threshold
        self.sealed: dict[str, tuple[int, str]] = {}  # bundle id -> (entry, time)
        self.refused: dict[str, str] = {}  # key id -> why no rotation made it a successor
        self.notes: list[str] = []  # statements that had no effect, and why
        self.statements = 0
        for i, e in entries:
            kind = e.get("kind")
            if kind == "sealed":
                self.sealed.setdefault(e["bundle"], (i, e["time"]))
                continue
            if kind != "key":
                continue
            self.statements += 1
            what = f"{where} entry {i}"
            try:
                st = keystatement.parse({"statement": e.get("statement"),
                                         "signatures": e.get("signatures")}, what)  # fmt: skip
            except TrustError as err:  # a rotation missing a signature: its successor is refused
                succ = ((e.get("statement") or {}).get("successor") or {}).get("keyid")
                if succ:
                    self.refused.setdefault(succ, str(err))
                self.notes.append(str(err))
                continue
            except CorruptData as err:
                self.notes.append(str(err))
                continue
            (self._rotate if st.kind == "rotate" else self._revoke)(st, i, e["time"])

    # -- building
    def _rotate(self, st, i: int, t: str) -> None:
        old, new = st.key.key_id, st.successor.key_id
        w = self.windows.get(old)
        if w is None:
            self.notes.append(f"{st.describe()}: not about a key this reader trusts; ignored")
            return
        if not w.valid_at(i, t):
            why = f"{st.describe()}: made by key {old[:16]} when it was no longer trusted"
            self.refused.setdefault(new, why)
            self.notes.append(why)
            return
        if new in self.windows:
            self.notes.append(f"{st.describe()}: key {new[:16]} is already trusted; ignored")
            return
        w.end, w.end_time, w.successor = i, t, new
        self.windows[new] = Window(st.successor, w.slot, i, via=st)

    def _revoke(self, st, i: int, t: str) -> None:
        target = st.key.key_id
        w = self.windows.get(target)
        if w is None:
            self.notes.append(f"{st.describe()}: not about a key this reader trusts; ignored")
            return
        if not any(st.signed_by(k) for k in self.lineage(target)):
            slots = {v.slot for k, v in self.windows.items()
                     if v.valid_at(i, t) and st.signed_by(v.key)}  # fmt: skip
            if len(slots) < self.threshold:
                signers = ", ".join(s["keyid"][:16] for s in st.signatures)
                self.notes.append(f"{st.describe()}: signed by {signers}, not by the key, a key "
                                  f"that named it, nor {self.threshold} trusted key(s); ignored")  # fmt: skip
                return
        if w.revoked is None or st.since < w.revoked[0]:
            w.revoked = (st.since, i, st)
        # what the revoked key vouched for after `since` is void: its rotations
        if w.successor and w.end_time is not None and w.end_time >= st.since:
            self._void(w.successor, f"succeeded {target[:16]} by a rotation made after that "
                                    f"key's revocation ({st.describe()})")  # fmt: skip
            w.end = w.end_time = w.successor = None

    def lineage(self, key_id: str) -> list[PublicKey]:
        """The key and the keys that named it, back to its slot's trusted key: who may revoke
        it alone (whoever vouched for a successor can withdraw it)."""
        out, w = [], self.windows.get(key_id)
        while w is not None:
            out.append(w.key)
            w = self.windows.get(w.via.key.key_id) if w.via is not None else None
        return out

    def _void(self, key_id: str, why: str) -> None:
        w = self.windows.pop(key_id, None)
        if w is None:
            return
        self.refused[key_id] = why
        if w.successor:
            self._void(w.successor, why)

    # -- judging
    def judge(self, signers: list[PublicKey], bundle: str | None, what: str) -> list[PublicKey]:
        """The signers that count (one per slot), at least `threshold` of them, else TrustError
        naming the rotation or revocation that refused the first signer that did not count."""
        pos = self.sealed.get(bundle) if bundle else None
        counted: dict[str, PublicKey] = {}
        refusals = []
        for k in signers:
            w = self.windows[k.key_id]
            why = self._why_not(w, pos, bundle)
            if why:
                refusals.append(f"signed by key {k.key_id[:16]}, {why}")
            else:
                counted.setdefault(w.slot, k)
        if len(counted) >= self.threshold:
            return list(counted.values())
        if refusals:
            raise TrustError(f"{what}: {refusals[0]}")
        raise TrustError(f"{what}: signed by {len(counted)} of the {self.threshold} trusted keys "
                         "the policy requires")  # fmt: skip

    def _why_not(self, w: Window, pos: tuple[int, str] | None, bundle: str | None) -> str | None:
        changed = w.start >= 0 or w.end is not None or w.revoked is not None
        if not changed:
            return None
        if pos is None:
            status = (f"revoked since {w.revoked[0]} ({w.revoked[2].what})" if w.revoked
                      else f"succeeded by {w.successor[:16]}" if w.end is not None
                      else f"trusted only as successor of a key ({w.via.what})")  # fmt: skip
            return (f"{status}; the log has no sealed entry for bundle {(bundle or '?')[:16]} "
                    "proving when it was signed")  # fmt: skip
        index, time = pos
        if w.revoked and (time >= w.revoked[0] or index > w.revoked[1]):
            return (f"revoked since {w.revoked[0]} ({w.revoked[2].what}); the log shows this "
                    f"bundle sealed at {time} (entry {index})")  # fmt: skip
        if index <= w.start:
            return (f"trusted only from entry {w.start} (rotation, {w.via.what}); the log shows "
                    f"this bundle sealed before, at entry {index}")  # fmt: skip
        if w.end is not None and index > w.end:
            return (f"succeeded by {w.successor[:16]} at entry {w.end}; the log shows this "
                    f"bundle sealed after, at entry {index}")  # fmt: skip
        return None


class TrustPolicy(list):
    def __init__(self, keys: Iterable[PublicKey] = (), threshold: int = 1,
                 history: list[tuple[int, dict]] | Callable[[], list | None] | None = None):  # fmt: skip
        super().__init__(keys)
        ids = [k.key_id for k in self]
        if len(set(ids)) != len(ids):
            dup = next(k for k in self if ids.count(k.key_id) > 1)
            raise InputError(f"{dup.source or dup.key_id[:16]}: the same trusted key is given "
                             "twice (a threshold counts distinct keys)")  # fmt: skip
        if not 1 <= threshold <= max(1, len(self)):
            raise InputError(f"threshold {threshold} cannot be met by {len(self)} trusted "
                             f"key{'s' if len(self) != 1 else ''}")  # fmt: skip
        self.threshold = threshold
        # the preservation log's entries in order, or a function that reads them when a bundle
        # is first judged (None: no log to consult)
        self.log_entries = history
        self._history: KeyHistory | None = None

    @property
    def history(self) -> KeyHistory | None:
        if callable(self.log_entries):
            self.log_entries = self.log_entries()
        if self._history is None and self.log_entries is not None:
            self._history = KeyHistory(self, self.threshold, self.log_entries)
        return self._history

    def __add__(self, other):  # policy + [key]: the same rule over one more key
        extra = [k for k in other if all(k.key_id != m.key_id for m in self)]
        return TrustPolicy([*self, *extra], self.threshold, self.log_entries)

    def verify(self, payload_type: str, body: bytes, signatures: list, what: str,
               subject: str | None = None) -> list[PublicKey]:  # fmt: skip
        """The trusted signers of `body` (at least `threshold` of them), or TrustError.
        `subject` is the bundle id, to find its position in the log's history."""
        h = self.history
        if h is None or len(h.windows) == len(self) and not h.statements:
            return verify_threshold(payload_type, body, signatures, self, what, self.threshold)
        for s in signatures:  # a successor whose rotation was refused: say why, not "unknown"
            kid = s.get("keyid") if isinstance(s, dict) else None
            if kid in h.refused and kid not in h.windows:
                others = [x for x in signatures if x is not s]
                try:
                    return self.verify(payload_type, body, others, what, subject)
                except TrustError:
                    raise TrustError(f"{what}: signed by key {kid[:16]}, which is not trusted: "
                                     f"{h.refused[kid]}") from None  # fmt: skip
        keys = [w.key for w in h.windows.values()]
        good = verify_threshold(payload_type, body, signatures, keys, what, 1)
        return h.judge(good, subject, what)


def as_policy(trusted: list[PublicKey]) -> TrustPolicy:
    return trusted if isinstance(trusted, TrustPolicy) else TrustPolicy(_distinct(trusted))


def _distinct(keys: Iterable[PublicKey]) -> list[PublicKey]:
    seen, out = set(), []
    for k in keys:
        if k.key_id not in seen:
            seen.add(k.key_id)
            out.append(k)
    return out
