"""Per-user rate limit of the chat endpoint: a token bucket per user, in this process.

Buckets live in a bounded LRU, so a flood of distinct user ids costs bounded memory (an evicted
bucket is simply full again). Several server processes each apply the limit on their own.
"""

from __future__ import annotations

from collections import OrderedDict

from ..clock import Clock


class RateLimiter:
    def __init__(
        self, per_minute: float, burst: int, clock: Clock, max_users: int = 100_000
    ) -> None:
        self.rate = per_minute / 60.0  # tokens per second
        self.burst = float(burst)
        self.clock = clock
        self.max_users = max_users
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def take(self, who: str) -> float:
        """Spend one token for `who`. Returns 0 when allowed, else seconds until allowed."""
        if not self.enabled:
            return 0.0
        now = self.clock.monotonic()
        tokens, last = self._buckets.pop(who, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            self._buckets[who] = (tokens - 1.0, now)
            wait = 0.0
        else:
            self._buckets[who] = (tokens, now)
            wait = (1.0 - tokens) / self.rate
        if len(self._buckets) > self.max_users:
            self._buckets.popitem(last=False)
        return wait
