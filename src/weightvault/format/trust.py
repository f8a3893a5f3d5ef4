"""Trust policy: which keys a reader trusts, and how many of them must sign a bundle.

A policy is the list of trusted public keys (it IS a list, so every caller that takes
`trusted: list[PublicKey]` takes a policy unchanged) plus a threshold K: a manifest is trusted
when at least K distinct trusted keys signed it and no signature by a trusted key fails. A plain
list is the policy "any one of these keys".
"""

from __future__ import annotations

from collections.abc import Iterable

from weightvault.errors import InputError
from weightvault.format.keys import PublicKey, verify_threshold


class TrustPolicy(list):
    def __init__(self, keys: Iterable[PublicKey] = (), threshold: int = 1):
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

    def __add__(self, other):  # policy + [key]: the same rule over one more key
        extra = [k for k in other if all(k.key_id != m.key_id for m in self)]
        return TrustPolicy([*self, *extra], self.threshold)

    def verify(self, payload_type: str, body: bytes, signatures: list,
               what: str) -> list[PublicKey]:  # fmt: skip
        """The trusted signers of `body` (at least `threshold` of them), or TrustError."""
        return verify_threshold(payload_type, body, signatures, self, what, self.threshold)


def as_policy(trusted: list[PublicKey]) -> TrustPolicy:
    return trusted if isinstance(trusted, TrustPolicy) else TrustPolicy(_distinct(trusted))


def _distinct(keys: Iterable[PublicKey]) -> list[PublicKey]:
    seen, out = set(), []
    for k in keys:
        if k.key_id not in seen:
            seen.add(k.key_id)
            out.append(k)
    return out
