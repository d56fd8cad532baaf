"""Memory the agent freed, handed back to the kernel once it has nothing else to do."""

from __future__ import annotations

import gc
import logging

__all__ = ["release_free_memory"]

log = logging.getLogger(__name__)


def release_free_memory() -> None:
    """Collect garbage, then return free heap pages to the kernel (glibc ``malloc_trim``).

    Start-up frees megabytes (botocore's models while clients are built, the first full
    listing) that glibc keeps mapped for reuse; an idle agent would carry them for its
    whole life. Elsewhere than glibc (musl has no ``malloc_trim``) only the collection runs.
    """
    gc.collect()
    import ctypes  # 1-2 ms and 0.4 MB, for what frees 2 MB or more

    try:
        trim = ctypes.CDLL(None).malloc_trim
    except AttributeError:
        return
    trim(0)
