"""The garbage collector and the heap around start-up: what start-up builds lives as long
as the process, and what it frees goes back to the kernel once the agent is idle."""

from __future__ import annotations

import gc

__all__ = ["pause_collection", "release_free_memory", "resume_collection"]


def pause_collection() -> None:
    """No garbage collection while a verb imports its modules and builds its clients.

    Those are some 100,000 objects that live as long as the process; collecting while
    they are made walked them about 170 times to find under 2,000 unreachable ones, some
    60 ms of a sync's 400 ms start (measured, bench/README.md). ``resume_collection``
    ends the pause."""
    gc.disable()


def resume_collection() -> None:
    """End ``pause_collection``'s pause, if there is one: what exists now is moved out of
    the collector's reach for good (``gc.freeze``), so no later collection walks it again.
    The few objects start-up left unreachable stay (measured: no change in RSS)."""
    if gc.isenabled():
        return  # no pause: not start-up (a reload, a test), nothing to freeze
    gc.freeze()
    gc.enable()


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
