"""Prefetch (CoreDNS `cache { prefetch AMOUNT [DURATION [PERCENTAGE%]] }`): refresh popular answers early.

An entry asked AMOUNT times, with no gap of DURATION or more between two
asks, is refreshed in the background once at most PERCENTAGE of its TTL is
left (whole seconds, rounded up, as CoreDNS counts them). The check runs on
a hit, as in CoreDNS.

Zero cost when off: a zone with prefetch gets a `get` of its own on its
ZoneCache instance (`arm`), which the hit path calls as it calls the plain
one. Zones without prefetch keep `ZoneCache.get` and do no extra work. With
prefetch on, a hit adds a clock read, a counter and two comparisons, and an
asked entry carries a `Rare` (64 bytes, not charged to the memory budget).

The refresh itself is the resolver's business (`Resolver._prefetch`): it
goes through the miss machinery, so it coalesces with client misses and
obeys the forwarder's budgets, answers nobody, and replaces the entry when
it lands. Starting it resets the entry's count, so a refresh that fails
(the entry stays, fresh or servable stale) is tried again only after
AMOUNT more asks.
"""

from __future__ import annotations

from collections.abc import Callable

from nodecache.cache import Entry, ZoneCache

# start(key, entry): begin a background refresh of `key`, whose cached entry is `entry`.
Start = Callable[[bytes, Entry], None]


def armed(cache: ZoneCache) -> bool:
    """Whether `cache` already has a prefetching `get` (a reload keeps unchanged zones armed)."""
    return "get" in vars(cache)


def arm(cache: ZoneCache, start: Start) -> None:
    """Give `cache` a `get` that counts asks of fresh entries and starts refreshes (policy permitting)."""
    policy = cache.policy
    if not policy.prefetch_amount or armed(cache):
        return
    lookup = cache.get
    clock = cache.clock
    amount = policy.prefetch_amount
    gap = policy.prefetch_duration
    percentage = policy.prefetch_percentage

    def get(key: bytes) -> Entry | None:
        entry = lookup(key)
        if entry is None:
            return None
        now = clock()
        if now < entry.expires:
            asks = entry.rare
            hits = asks.hits
            # CoreDNS's frequency: counted while asks come less than DURATION apart, else back to 1.
            hits = hits + 1 if hits and now - asks.seen < gap else 1
            asks.hits = hits
            asks.seen = now
            if hits >= amount and int(entry.expires - now) <= threshold(round(entry.expires - entry.stored), percentage):
                asks.hits = 0  # the next try needs AMOUNT more asks
                start(key, entry)
        return entry

    cache.get = get  # type: ignore[method-assign]


def threshold(ttl: int, percentage: int) -> int:
    """Seconds left at which an entry of `ttl` seconds is prefetched: PERCENTAGE of it, rounded up (CoreDNS)."""
    return -(-ttl * percentage // 100)
