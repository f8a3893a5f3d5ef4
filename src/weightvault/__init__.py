"""weightvault: sealed, signed, replicated and audited bundles of retired model weights."""

__version__ = "0.1.0"
FORMAT_VERSION = 1


def __getattr__(name: str):
    # Lazy, so `import weightvault` (and the CLI's start-up) stays light.
    if name == "open_bundle":
        from weightvault.access import open_bundle

        return open_bundle
    raise AttributeError(f"module 'weightvault' has no attribute {name!r}")
