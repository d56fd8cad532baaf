"""s3pull: keep local directories in step with S3 by pulling change notifications from SQS."""

from __future__ import annotations

__all__ = ["__version__"]

__version__: str


def __getattr__(name: str) -> str:
    # The version is looked up on first use (`--version`, the state published for `fleet`):
    # the lookup imports importlib.metadata and scans sys.path, which every other start
    # would pay for (PEP 562 module __getattr__).
    if name != "__version__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("s3pull")
    except PackageNotFoundError:  # running from a source tree without an install
        found = "0.0.0+source"
    globals()["__version__"] = found
    return found
