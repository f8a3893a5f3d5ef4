"""Typed errors. Each carries the exit code the CLI returns for it; the mapping lives here only.

Exit codes (docs/OPERATIONS.md repeats this table):
  0  success, everything verified
  1  integrity: damage, loss, a digest or size that does not match
  2  usage or input: bad arguments, source, key file, config, unknown bundle
  3  storage: a vault or replica could not be reached or used
  4  trust: a signature is missing, invalid or by a key that is not trusted
  5  conflict: the thing already exists (bundle name sealed, destination not empty)
"""

from __future__ import annotations


class WeightvaultError(Exception):
    exit_code = 1


class InputError(WeightvaultError):
    """The user gave something unusable: a path, a key file, an argument, a source."""

    exit_code = 2


class NotFound(InputError):
    pass


class IntegrityError(WeightvaultError):
    """Stored bytes do not match what the signed manifest promises."""

    exit_code = 1


class CorruptData(IntegrityError):
    """A stored object or document could not be decoded or parsed safely."""


class TrustError(WeightvaultError):
    exit_code = 4


class MissingSignature(TrustError):
    pass


class Conflict(WeightvaultError):
    exit_code = 5


class StorageError(WeightvaultError):
    exit_code = 3


class Interrupted(WeightvaultError):
    exit_code = 130
