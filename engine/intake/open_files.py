"""The process's open-file limit, and how much of it MLLP connections may take.

Every connection is a file descriptor; so are the store's database connections (or SQLite
files and WAL), each folder channel's scan, the HTTP server's sockets, the worker pipes. A
listener allowed to fill the limit starves them all (issue #17: 20,000 idle connections made
``/healthz`` time out and folder scans fail). At start the soft limit is raised to the hard
limit when the system allows it (getrlimit/setrlimit, POSIX), and MLLP connections are capped
at that limit minus a headroom kept for the rest.
"""

from __future__ import annotations

import logging

log = logging.getLogger("parcours.limits")


def raise_soft_limit() -> int | None:
    """Raise RLIMIT_NOFILE's soft limit to its hard limit; the soft limit in force after
    (None where the platform has no such limit)."""
    try:
        import resource
    except ImportError:  # not POSIX
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, hard,
                        exc)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def connection_ceiling(configured: int, soft_limit: int | None, headroom: int) -> int:
    """MLLP connections allowed over all channels: the configured number, and never more than
    the open-file limit leaves once the headroom is set aside (at least one)."""
    if soft_limit is None:
        return configured
    return max(1, min(configured, soft_limit - headroom))
