"""s3pull: keep local directories in step with S3 by pulling change notifications from SQS."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("s3pull")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+source"

__all__ = ["__version__"]
