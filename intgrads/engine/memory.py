"""Process-wide memory settings for running many attributions in one process (no torch import)."""

from __future__ import annotations


def reuse_freed_memory() -> bool:
    """Let each request reuse the memory of the one before (glibc's malloc; elsewhere a no-op, False).

    By default glibc gives every block over 32 MB its own fresh mapping and returns freed memory at the top of
    the heap to the kernel, so each request faults in ~1 GB of new zeroed pages (about 250,000 page faults for
    a 64-token bert-base request at 50 steps). With ``M_ARENA_MAX`` 1 and ``M_MMAP_MAX`` 0 all blocks come from
    the one main heap (a thread's own arena would hand its freed heaps back to the kernel) and with
    ``M_TRIM_THRESHOLD`` 1 GiB freed memory stays there for the next request: no page faults once warm, and
    less engine time (docs/benchmarks.md, part 2). The peak is unchanged; an idle process keeps its heap at the
    size of its largest request. The TorchServe handler calls it in each worker unless
    ``INTGRADS_REUSE_MEMORY=0``; call it in a notebook for the same effect."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max, m_arena_max = -1, -4, -8
    return all(mallopt(option, value) for option, value in ((m_arena_max, 1), (m_mmap_max, 0),
                                                            (m_trim_threshold, 1 << 30)))


# The same settings for a process about to start, as glibc reads them from its environment before the first
# thread. A process whose engine runs in a thread other than its first (a Ray Serve replica's) needs them there:
# mallopt comes too late for the arenas its threads already have, and a thread's own arena gives every block
# over 64 MB a fresh mapping of its own whatever M_MMAP_MAX says.
REUSE_MEMORY_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


def reuse_memory_wanted(environ) -> bool:
    """Whether a process with ``environ`` reuses freed memory: yes unless it says ``INTGRADS_REUSE_MEMORY=0``."""
    return environ.get("INTGRADS_REUSE_MEMORY", "1") != "0"


def reuse_memory_env(environ) -> dict:
    """The environment for processes that run the engine elsewhere (a Ray replica or worker): :data:`REUSE_MEMORY_ENV`,
    or, when ``environ`` says ``INTGRADS_REUSE_MEMORY=0``, that setting itself (they would call
    :func:`reuse_freed_memory` otherwise)."""
    return dict(REUSE_MEMORY_ENV) if reuse_memory_wanted(environ) else {"INTGRADS_REUSE_MEMORY": "0"}
