"""weightvault: sealed, signed, replicated and audited bundles of retired model weights."""

__version__ = "0.1.0"
FORMAT_VERSION = 1
