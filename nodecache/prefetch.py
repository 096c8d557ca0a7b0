"""Prefetch (CoreDNS `cache { prefetch AMOUNT [DURATION [PERCENTAGE%]] }`): refresh popular answers early.

An entry asked AMOUNT times, with no gap of DURATION or more between two
asks, is refreshed in the background once at most PERCENTAGE of its TTL is
left (whole seconds, rounded up, as CoreDNS counts them). The check runs on
a hit, as in CoreDNS.

Almost no cost when off: a zone with prefetch gets an `asked` hook on its
ZoneCache (`arm`), which `ZoneCache.get` calls with every entry it finds;
zones without prefetch pay one test of that hook per lookup. (It used to
replace `get` on the instance, which a compiled ZoneCache does not allow.)
With prefetch on, a hit adds a call, a clock read, a counter and two
comparisons, and an asked entry carries a `Rare` (64 bytes, not charged to
the memory budget).

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
    """Whether `cache` already counts asks (a reload keeps unchanged zones armed)."""
    return cache.asked is not None


def arm(cache: ZoneCache, start: Start) -> None:
    """Give `cache` an `asked` hook that counts asks of fresh entries and starts refreshes (policy permitting)."""
    policy = cache.policy
    if not policy.prefetch_amount or armed(cache):
        return
    clock = cache.clock
    amount = policy.prefetch_amount
    gap = policy.prefetch_duration
    percentage = policy.prefetch_percentage

    def asked(key: bytes, entry: Entry) -> None:
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

    cache.asked = asked


def threshold(ttl: int, percentage: int) -> int:
    """Seconds left at which an entry of `ttl` seconds is prefetched: PERCENTAGE of it, rounded up (CoreDNS)."""
    return -(-ttl * percentage // 100)
