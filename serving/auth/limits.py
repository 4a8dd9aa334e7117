"""Per-client request rate limits: a token bucket per client, so one misbehaving
integration cannot starve the others.

Each client has a rate (requests per second, refilled continuously) and a burst (the
bucket's size: requests it may send at once after a quiet spell). A request takes one
token; with none left it is refused and told when the next token arrives (the guard's 429
with ``Retry-After``). Buckets live in one worker process: with ``--workers N`` a client
may send up to N times its rate in total (docs/security.md).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class RateLimit:
    """``per_s``: sustained requests per second; ``burst``: bucket size (at least 1)."""

    per_s: float
    burst: int

    @classmethod
    def of(cls, per_s: float | None, burst: int | None) -> "RateLimit | None":
        """A limit from a client's settings (None: unlimited). The burst defaults to one
        second's worth of requests (at least 1)."""
        if per_s is None:
            return None
        return cls(per_s=per_s, burst=burst if burst is not None else max(1, math.ceil(per_s)))


class RateLimiter:
    """Token buckets by client name; thread-safe. ``take`` returns 0.0 (allowed) or the
    seconds until a request would be allowed."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._buckets: dict[str, tuple[float, float, RateLimit]] = {}  # name -> (tokens, at, limit)
        self._lock = threading.Lock()

    def take(self, client: str, limit: RateLimit | None) -> float:
        if limit is None:
            return 0.0
        now = self._clock()
        with self._lock:
            tokens, at, old = self._buckets.get(client, (float(limit.burst), now, limit))
            if old != limit:  # the registry changed the client's limit: start from its new bucket
                tokens = min(tokens, float(limit.burst))
            tokens = min(float(limit.burst), tokens + (now - at) * limit.per_s)
            if tokens >= 1.0:
                self._buckets[client] = (tokens - 1.0, now, limit)
                return 0.0
            self._buckets[client] = (tokens, now, limit)
            return (1.0 - tokens) / limit.per_s
