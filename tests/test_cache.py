"""nodecache.cache: what is cached, for how long, and how a cached answer is replayed.

Upstream replies and client queries are built with dnslib; replayed answers are parsed with
dnslib. Time is a fake clock (a float in a closure), so nothing here sleeps or measures time.
"""

from __future__ import annotations

import gc
import sys
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from dnslib import NS, QTYPE, RR

from nodecache import wire
from nodecache.cache import INDEX_SLOT_BYTES, Entry, Kind, MemoryBudget, ZoneCache, classify, lifetime, slot_size
from nodecache.config import DEFAULT_CAPACITY, CachePolicy
from tests.dnsmsg import a, cname, full_rcode, opt, opt_of, parse, query, question_bytes, records, reply, soa, ttls_of

NAME = "www.example.com."
ZONE = "example.com."
T0 = 1000.0


@dataclass
class FakeClock:
    """A clock the test moves by hand: `now()` reads it, `advance(s)` moves it."""

    now: Callable[[], float]
    advance: Callable[[float], None]


def make_clock(start: float = T0) -> FakeClock:
    """A fake monotonic clock: a mutable float captured by two closures."""
    t = [start]

    def now() -> float:
        return t[0]

    def advance(seconds: float) -> None:
        t[0] += seconds

    return FakeClock(now, advance)


@pytest.fixture
def clock() -> FakeClock:
    """A fresh fake clock at T0."""
    return make_clock()


def key_for(name: str = NAME, qtype: str = "A", **kw: object) -> bytes:
    """The cache key of a client query, as the listener computes it."""
    return wire.scan_query(query(name, qtype, **kw)).key  # type: ignore[arg-type]


def scanned(msg: bytes, name: str = NAME, qtype: str = "A") -> wire.ReplyScan:
    """An upstream reply taken apart, as the forwarder does before storing it."""
    q = wire.scan_query(query(name, qtype))
    return wire.scan_reply(msg, q.lname, q.key[len(q.lname) : len(q.lname) + 4])


def positive(ttl: int = 60, name: str = NAME) -> wire.ReplyScan:
    """A NOERROR answer with one A record."""
    return scanned(reply(name, answers=[a(name, ttl)]), name)


def nxdomain(soa_ttl: int = 60, minimum: int = 60, name: str = NAME) -> wire.ReplyScan:
    """An NXDOMAIN with an SOA in the authority section."""
    return scanned(reply(name, rcode=wire.NXDOMAIN, authority=[soa(ZONE, soa_ttl, minimum)]), name)


def servfail(name: str = NAME) -> wire.ReplyScan:
    """A bare SERVFAIL."""
    return scanned(reply(name, rcode=wire.SERVFAIL), name)


def stored_keys(cache: ZoneCache) -> list[bytes]:
    """Every key the cache holds."""
    return [k for k, _ in cache.entries()]


def replay(entry: Entry, client: bytes, now: float, limit: int | None = None) -> bytes:
    """`entry` replayed to the raw query `client`, with the client's own size limit by default."""
    q = wire.scan_query(client)
    return entry.reply(client, q.qend, q.edns, q.payload if limit is None else limit, now)


# ---------------------------------------------------------------------------- classify


CLASSIFY_TABLE = [
    pytest.param(reply(answers=[a(NAME, 60)]), Kind.SUCCESS, id="NOERROR with answer"),
    pytest.param(
        reply(answers=[a(NAME, 60)], authority=[soa(ZONE, 60, 60)]), Kind.SUCCESS, id="NOERROR answer and SOA"
    ),
    pytest.param(
        reply(answers=[cname(NAME, "x.example.com.", 60)]), Kind.SUCCESS, id="NOERROR CNAME only"
    ),
    pytest.param(reply(rcode=3, authority=[soa(ZONE, 60, 60)]), Kind.DENIAL, id="NXDOMAIN with SOA"),
    pytest.param(reply(authority=[soa(ZONE, 60, 60)]), Kind.DENIAL, id="NODATA with SOA"),
    pytest.param(
        reply(rcode=3, answers=[cname(NAME, "gone.example.com.", 60)], authority=[soa(ZONE, 60, 60)]),
        Kind.DENIAL,
        id="NXDOMAIN after CNAME with SOA",
    ),
    pytest.param(
        reply(answers=[cname(NAME, "web.example.com.", 60)], authority=[soa(ZONE, 60, 60)]),
        Kind.DENIAL,
        id="CNAME then NODATA with SOA",
    ),
    pytest.param(
        reply(
            answers=[cname(NAME, "a.example.com.", 60), cname("a.example.com.", "b.example.com.", 60)],
            authority=[soa(ZONE, 60, 60)],
        ),
        Kind.DENIAL,
        id="CNAME chain then NODATA with SOA",
    ),
    pytest.param(
        reply(answers=[cname(NAME, "web.example.com.", 60), a("web.example.com.", 60)], authority=[soa(ZONE, 60, 60)]),
        Kind.SUCCESS,
        id="CNAME then the asked type, SOA too",
    ),
    pytest.param(reply(rcode=3), None, id="NXDOMAIN without SOA"),
    pytest.param(reply(), None, id="NODATA without SOA"),
    pytest.param(
        reply(authority=[RR(ZONE, QTYPE.NS, rdata=NS("ns1.example.com."), ttl=60)]), None, id="NODATA NS only"
    ),
    pytest.param(reply(rcode=3, additional=[soa(ZONE, 60, 60)]), None, id="NXDOMAIN SOA in additional"),
    pytest.param(reply(rcode=wire.REFUSED), None, id="REFUSED"),
    pytest.param(reply(rcode=wire.REFUSED, authority=[soa(ZONE, 60, 60)]), None, id="REFUSED with SOA"),
    pytest.param(reply(rcode=wire.FORMERR), None, id="FORMERR"),
    pytest.param(reply(rcode=wire.NOTIMP), None, id="NOTIMP"),
    pytest.param(reply(rcode=6), None, id="YXDOMAIN"),
    pytest.param(reply(rcode=0, additional=[opt(ext_rcode=1)]), None, id="BADVERS"),
    pytest.param(reply(rcode=wire.SERVFAIL), Kind.SERVFAIL, id="SERVFAIL"),
    pytest.param(reply(rcode=wire.SERVFAIL, authority=[soa(ZONE, 60, 60)]), Kind.SERVFAIL, id="SERVFAIL with SOA"),
    pytest.param(reply(answers=[a(NAME, 60)], tc=True), None, id="TC with answer"),
    pytest.param(reply(rcode=3, authority=[soa(ZONE, 60, 60)], tc=True), None, id="TC NXDOMAIN"),
    pytest.param(reply(tc=True), None, id="TC empty"),
]


@pytest.mark.parametrize(("msg", "kind"), CLASSIFY_TABLE)
def test_classify(msg: bytes, kind: Kind | None) -> None:
    """Only complete NOERROR answers, SOA-backed denials (RFC 2308) and SERVFAIL are cacheable."""
    assert classify(scanned(msg)) is kind


@pytest.mark.parametrize(("msg", "kind"), CLASSIFY_TABLE)
def test_store_keeps_exactly_the_cacheable(msg: bytes, kind: Kind | None, clock: FakeClock) -> None:
    """What classify rejects is never kept; what it accepts is found again under its key."""
    cache = ZoneCache(CachePolicy(), clock.now)
    cache.store(key_for(), scanned(msg), False, 1232)
    got = cache.get(key_for())
    assert (got.kind if got is not None else None) is kind


# ---------------------------------------------------------------------------- lifetime


POLICY = CachePolicy(success_max_ttl=30, denial_max_ttl=5, servfail_ttl=4)


@pytest.mark.parametrize(
    ("msg", "seconds"),
    [
        pytest.param(reply(answers=[a(NAME, 20)]), 20, id="below the cap"),
        pytest.param(reply(answers=[a(NAME, 300)]), 30, id="capped"),
        pytest.param(reply(answers=[a(NAME, 300), a(NAME, 12, "192.0.2.2")]), 12, id="minimum of answers"),
        pytest.param(
            reply(answers=[cname(NAME, "x.example.com.", 25), a("x.example.com.", 300)]), 25, id="minimum CNAME"
        ),
        pytest.param(
            reply(answers=[a(NAME, 300)], authority=[RR(ZONE, QTYPE.NS, rdata=NS("ns.example.com."), ttl=7)]),
            7,
            id="authority counts",
        ),
        pytest.param(reply(answers=[a(NAME, 300)], additional=[a("ns.example.com.", 3)]), 3, id="additional counts"),
        pytest.param(reply(answers=[a(NAME, 300)], additional=[opt()]), 30, id="OPT ignored"),
        pytest.param(reply(answers=[a(NAME, 0)]), 0, id="TTL 0"),
        pytest.param(reply(answers=[a(NAME, 60), a(NAME, 0, "192.0.2.2")]), 0, id="one TTL 0"),
        pytest.param(reply(answers=[a(NAME, 0x80000000)]), 0, id="TTL top bit"),
        pytest.param(reply(rcode=3, authority=[soa(ZONE, 3600, 300)]), 5, id="denial capped"),
        pytest.param(reply(rcode=3, authority=[soa(ZONE, 3, 300)]), 3, id="denial SOA TTL smaller"),
        pytest.param(reply(rcode=3, authority=[soa(ZONE, 3600, 2)]), 2, id="denial MINIMUM smaller"),
        pytest.param(reply(authority=[soa(ZONE, 4, 1)]), 1, id="NODATA MINIMUM smaller"),
        pytest.param(reply(rcode=3, authority=[soa(ZONE, 3600, 0)]), 0, id="denial MINIMUM 0"),
        pytest.param(reply(rcode=3, authority=[soa(ZONE, 0, 300)]), 0, id="denial SOA TTL 0"),
        pytest.param(
            reply(answers=[cname(NAME, "web.example.com.", 300)], authority=[soa(ZONE, 300, 3)]),
            3,
            id="CNAME then NODATA: SOA MINIMUM, not the CNAME TTL",
        ),
        pytest.param(
            reply(rcode=3, answers=[cname(NAME, "gone.example.com.", 300)], authority=[soa(ZONE, 4, 300)]),
            4,
            id="CNAME then NXDOMAIN: SOA TTL",
        ),
        pytest.param(
            reply(rcode=3, answers=[cname(NAME, "gone.example.com.", 2)], authority=[soa(ZONE, 60, 60)]),
            2,
            id="CNAME then NXDOMAIN: no longer than the CNAME",
        ),
        pytest.param(reply(rcode=2), 4, id="SERVFAIL"),
        pytest.param(reply(rcode=5), 0, id="REFUSED"),
        pytest.param(reply(rcode=3), 0, id="NXDOMAIN without SOA"),
    ],
)
def test_lifetime(msg: bytes, seconds: int) -> None:
    """Success: min record TTL, capped; denial: min(SOA TTL, MINIMUM), capped (RFC 2308 5)."""
    s = scanned(msg)
    assert lifetime(classify(s), s, POLICY) == seconds


@pytest.mark.parametrize(
    ("ttl", "seconds"), [(0, 0), (1, 10), (9, 10), (10, 10), (20, 20), (100, 30)]
)
def test_success_min_ttl_floor(ttl: int, seconds: int) -> None:
    """A minimum TTL lifts short lifetimes but never turns TTL 0 ("do not cache") into caching."""
    s = positive(ttl)
    assert lifetime(Kind.SUCCESS, s, CachePolicy(success_max_ttl=30, success_min_ttl=10)) == seconds


@pytest.mark.parametrize(
    ("msg", "policy", "expires_in"),
    [
        (reply(answers=[a(NAME, 300)]), CachePolicy(success_max_ttl=30), 30),
        (reply(answers=[a(NAME, 17)]), CachePolicy(success_max_ttl=30), 17),
        (reply(rcode=3, authority=[soa(ZONE, 60, 10)]), CachePolicy(denial_max_ttl=30), 10),
        (reply(rcode=3, authority=[soa(ZONE, 60, 10)]), CachePolicy(denial_max_ttl=5), 5),
        (reply(rcode=2), CachePolicy(servfail_ttl=5), 5),
        (reply(rcode=2), CachePolicy(servfail_ttl=1), 1),
    ],
)
def test_entry_expires_after_its_lifetime(
    msg: bytes, policy: CachePolicy, expires_in: int, clock: FakeClock
) -> None:
    """The stored entry is fresh for exactly its lifetime from the moment it was stored."""
    cache = ZoneCache(policy, clock.now)
    cache.store(key_for(), scanned(msg), False, 1232)
    entry = cache.get(key_for())
    assert entry is not None
    assert entry.expires == T0 + expires_in


@pytest.mark.parametrize(
    ("msg", "policy"),
    [
        (reply(answers=[a(NAME, 0)]), CachePolicy()),
        (reply(answers=[a(NAME, 0)]), CachePolicy(success_min_ttl=10)),
        (reply(rcode=3, authority=[soa(ZONE, 60, 0)]), CachePolicy(denial_min_ttl=10)),
        (reply(answers=[a(NAME, 60)]), CachePolicy(success_max_ttl=0)),
        (reply(rcode=3, authority=[soa(ZONE, 60, 60)]), CachePolicy(denial_max_ttl=0)),
        (reply(rcode=2), CachePolicy(servfail_ttl=0)),
        (reply(answers=[a(NAME, 60)]), CachePolicy(success_capacity=0)),
        (reply(rcode=3, authority=[soa(ZONE, 60, 60)]), CachePolicy(denial_capacity=0)),
        (reply(rcode=2), CachePolicy(denial_capacity=0)),
    ],
)
def test_not_stored(msg: bytes, policy: CachePolicy, clock: FakeClock) -> None:
    """TTL 0, a zero cap or a zero capacity means nothing is kept."""
    cache = ZoneCache(policy, clock.now)
    cache.store(key_for(), scanned(msg), False, 1232)
    assert cache.get(key_for()) is None
    assert stored_keys(cache) == []


# ---------------------------------------------------------------------------- store rules


class TestStoreRules:
    """Which entry wins when a key is stored twice."""

    def test_servfail_never_hides_a_valid_answer(self, clock: FakeClock) -> None:
        """A SERVFAIL while the success entry is fresh leaves the success entry in charge."""
        cache = ZoneCache(CachePolicy(), clock.now)
        cache.store(key_for(), positive(30), False, 1232)
        clock.advance(10)
        cache.store(key_for(), servfail(), False, 1232)
        entry = cache.get(key_for())
        assert entry is not None and entry.kind is Kind.SUCCESS
        assert parse(replay(entry, query(), clock.now())).header.rcode == wire.NOERROR
        assert [e.kind for _, e in cache.entries()] == [Kind.SUCCESS]  # the SERVFAIL was not kept

    def test_servfail_does_not_replace_a_servable_stale_answer(self, clock: FakeClock) -> None:
        """RFC 8767: an upstream failure is when the stale answer is served, so the SERVFAIL is not kept."""
        cache = ZoneCache(CachePolicy(stale_window=3600), clock.now)
        cache.store(key_for(), positive(30), False, 1232)
        clock.advance(31)
        cache.store(key_for(), servfail(), False, 1232)
        entry = cache.get(key_for())
        assert entry is not None and entry.kind is Kind.SUCCESS
        assert [e.kind for _, e in cache.entries()] == [Kind.SUCCESS]

    def test_servfail_answers_once_the_stale_window_is_over(self, clock: FakeClock) -> None:
        cache = ZoneCache(CachePolicy(stale_window=60), clock.now)
        cache.store(key_for(), positive(30), False, 1232)
        clock.advance(91)  # expired and past its stale window
        cache.store(key_for(), servfail(), False, 1232)
        entry = cache.get(key_for())
        assert entry is not None and entry.kind is Kind.SERVFAIL
        assert entry.expires == T0 + 91 + CachePolicy().servfail_ttl

    def test_expired_servfail_does_not_hide_a_servable_stale_answer(self, clock: FakeClock) -> None:
        """get() docs: only a *fresh* newer denial/SERVFAIL answers instead of the stale success."""
        cache = ZoneCache(CachePolicy(servfail_ttl=5, stale_window=3600), clock.now)
        cache.store(key_for(), positive(30), False, 1232)
        clock.advance(31)  # success expired, still within its stale window
        cache.store(key_for(), servfail(), False, 1232)
        clock.advance(10)  # the SERVFAIL (5 s, no stale window) has expired as well
        entry = cache.get(key_for())
        assert entry is not None
        assert entry.kind is Kind.SUCCESS
        assert clock.now() < entry.stale_until

    def test_nxdomain_replaces_success(self, clock: FakeClock) -> None:
        """The name went away: the NXDOMAIN answers and the old success entry is gone."""
        cache = ZoneCache(CachePolicy(stale_window=3600), clock.now)
        cache.store(key_for(), positive(30), False, 1232)
        clock.advance(1)
        cache.store(key_for(), nxdomain(), False, 1232)
        entry = cache.get(key_for())
        assert entry is not None and entry.kind is Kind.DENIAL
        assert [e.kind for _, e in cache.entries()] == [Kind.DENIAL]
        clock.advance(600)  # long after the denial expired, the old answer does not come back
        later = cache.get(key_for())
        assert later is None or later.kind is Kind.DENIAL

    def test_nxdomain_drops_success_even_without_denial_caching(self, clock: FakeClock) -> None:
        """Negative caching off: the NXDOMAIN is not kept, but the answer it contradicts must go."""
        cache = ZoneCache(CachePolicy(denial_capacity=0, stale_window=3600), clock.now)
        cache.store(key_for(), positive(30), False, 1232)
        clock.advance(31)  # expired: this is the miss whose upstream reply says NXDOMAIN
        cache.store(key_for(), nxdomain(), False, 1232)
        assert cache.get(key_for()) is None

    def test_success_replaces_denial(self, clock: FakeClock) -> None:
        """The name appeared: the new answer is served and the denial is dropped."""
        cache = ZoneCache(CachePolicy(), clock.now)
        cache.store(key_for(), nxdomain(), False, 1232)
        clock.advance(1)
        cache.store(key_for(), positive(30), False, 1232)
        entry = cache.get(key_for())
        assert entry is not None and entry.kind is Kind.SUCCESS
        assert [e.kind for _, e in cache.entries()] == [Kind.SUCCESS]

    def test_success_replaces_servfail(self, clock: FakeClock) -> None:
        """A good answer after a SERVFAIL wins at once."""
        cache = ZoneCache(CachePolicy(), clock.now)
        cache.store(key_for(), servfail(), False, 1232)
        cache.store(key_for(), positive(30), False, 1232)
        entry = cache.get(key_for())
        assert entry is not None and entry.kind is Kind.SUCCESS

    def test_newer_success_replaces_older(self, clock: FakeClock) -> None:
        """A refreshed answer restarts the lifetime."""
        cache = ZoneCache(CachePolicy(), clock.now)
        cache.store(key_for(), positive(30), False, 1232)
        clock.advance(20)
        cache.store(key_for(), positive(30), False, 1232)
        entry = cache.get(key_for())
        assert entry is not None and entry.expires == T0 + 20 + 30
        assert len(stored_keys(cache)) == 1

    def test_keys_are_independent(self, clock: FakeClock) -> None:
        """DO, CD, type and name each have their own entry."""
        cache = ZoneCache(CachePolicy(), clock.now)
        cache.store(key_for(), positive(30), False, 1232)
        for other in (
            key_for(edns=1232, do=True),
            key_for(cd=True),
            key_for(qtype="AAAA"),
            key_for("web.example.com."),
        ):
            assert cache.get(other) is None
        assert cache.get(key_for("WWW.example.COM.")) is not None


class TestCapacity:
    """The LRU bound: fixed memory, evictions counted, denials kept apart from answers."""

    def test_bound_and_evictions(self, clock: FakeClock) -> None:
        """Storing more keys than fit keeps only the most recent and counts each eviction."""
        cache = ZoneCache(CachePolicy(success_capacity=3), clock.now)
        names = [f"n{i}.example.com." for i in range(10)]
        for n in names:
            cache.store(key_for(n), positive(60, n), False, 1232)
        assert sorted(stored_keys(cache)) == sorted(key_for(n) for n in names[-3:])
        assert cache.evictions == 7

    def test_least_recently_used_goes_first(self, clock: FakeClock) -> None:
        """A key read recently survives; the one not read is evicted."""
        cache = ZoneCache(CachePolicy(success_capacity=2), clock.now)
        cache.store(key_for("a.example.com."), positive(60, "a.example.com."), False, 1232)
        cache.store(key_for("b.example.com."), positive(60, "b.example.com."), False, 1232)
        assert cache.get(key_for("a.example.com.")) is not None
        cache.store(key_for("c.example.com."), positive(60, "c.example.com."), False, 1232)
        assert cache.get(key_for("a.example.com.")) is not None
        assert cache.get(key_for("b.example.com.")) is None
        assert cache.evictions == 1

    def test_replacing_a_key_is_not_an_eviction(self, clock: FakeClock) -> None:
        """Storing the same key again does not evict anything."""
        cache = ZoneCache(CachePolicy(success_capacity=1), clock.now)
        for _ in range(5):
            cache.store(key_for(), positive(60), False, 1232)
        assert cache.evictions == 0 and len(stored_keys(cache)) == 1

    def test_denials_do_not_push_out_answers(self, clock: FakeClock) -> None:
        """A flood of NXDOMAINs fills the denial cache only."""
        cache = ZoneCache(CachePolicy(success_capacity=2, denial_capacity=2), clock.now)
        good = ["a.example.com.", "b.example.com."]
        for n in good:
            cache.store(key_for(n), positive(60, n), False, 1232)
        for i in range(20):
            n = f"nx{i}.example.com."
            cache.store(key_for(n), nxdomain(name=n), False, 1232)
        assert all(cache.get(key_for(n)) is not None for n in good)
        assert len(stored_keys(cache)) == 4
        assert cache.evictions == 18


class TestPurgeAndFlush:
    """Dropping old entries and operator flushes."""

    def test_purge_drops_what_is_past_expiry_plus_stale_window(self, clock: FakeClock) -> None:
        """Entries stay until expiry + stale window; purge reports how many it dropped."""
        cache = ZoneCache(CachePolicy(stale_window=100, servfail_ttl=5), clock.now)
        cache.store(key_for("short.example.com."), positive(10, "short.example.com."), False, 1232)
        cache.store(key_for("long.example.com."), positive(30, "long.example.com."), False, 1232)
        cache.store(key_for("nx.example.com."), nxdomain(20, 20, "nx.example.com."), False, 1232)
        cache.store(key_for("sf.example.com."), servfail("sf.example.com."), False, 1232)
        clock.advance(50)  # everything expired; SERVFAIL has no stale window
        assert cache.purge() == 1
        assert cache.get(key_for("sf.example.com.")) is None
        clock.advance(60)  # 110 s: short (10+100) is gone; long (130) and nx (120) stay
        assert cache.purge() == 1
        assert cache.get(key_for("short.example.com.")) is None
        assert cache.get(key_for("long.example.com.")) is not None
        clock.advance(20)  # 130 s
        assert cache.purge() == 2
        assert stored_keys(cache) == []
        assert cache.purge() == 0

    def test_purge_without_stale_window(self, clock: FakeClock) -> None:
        """With no stale window an entry is purged as soon as it expires, not before."""
        cache = ZoneCache(CachePolicy(stale_window=0), clock.now)
        cache.store(key_for(), positive(10), False, 1232)
        clock.advance(9.5)
        assert cache.purge() == 0 and cache.get(key_for()) is not None
        clock.advance(0.5)
        assert cache.purge() == 1 and cache.get(key_for()) is None

    def test_purge_in_steps_judges_each_entry_when_its_step_comes(self, clock: FakeClock) -> None:
        """Between steps queries run: an entry stored again meanwhile is kept, one stored after the walk began is not
        looked at, and the steps drop together what one purge would."""
        cache = ZoneCache(CachePolicy(stale_window=0), clock.now)
        names = [f"n{i}.example.com." for i in range(7)]
        for n in names:
            cache.store(key_for(n), positive(10, n), False, 1232)
        clock.advance(11)  # all seven expired
        steps = cache.purge_steps(3)
        assert next(steps) == 3  # n0..n2
        cache.store(key_for(names[4]), positive(60, names[4]), False, 1232)  # n4 answered again, fresh
        cache.store(key_for("late.example.com."), positive(1, "late.example.com."), False, 1232)
        clock.advance(2)  # the late entry expires too, but came after the walk began
        assert list(steps) == [2, 1]  # n3, n5 | n6 (the denial LRU is empty: no step)
        assert sorted(stored_keys(cache)) == sorted([key_for(names[4]), key_for("late.example.com.")])
        assert cache.purge() == 1  # the next sweep finds the late one

    def test_flush_all(self, clock: FakeClock) -> None:
        """flush() empties both caches and says how many entries went, without counting evictions."""
        cache = ZoneCache(CachePolicy(), clock.now)
        for i in range(3):
            n = f"ok{i}.example.com."
            cache.store(key_for(n), positive(60, n), False, 1232)
        for i in range(2):
            n = f"nx{i}.example.com."
            cache.store(key_for(n), nxdomain(name=n), False, 1232)
        assert cache.flush() == 5
        assert stored_keys(cache) == []
        assert cache.flush() == 0
        assert cache.evictions == 0

    def test_flush_matching(self, clock: FakeClock) -> None:
        """flush(match) removes only the keys it accepts, in both caches."""
        cache = ZoneCache(CachePolicy(), clock.now)
        names = ["a.svc.example.com.", "b.svc.example.com.", "www.example.com.", "gone.svc.example.com."]
        for n in names[:3]:
            cache.store(key_for(n), positive(60, n), False, 1232)
        cache.store(key_for(names[3]), nxdomain(name=names[3]), False, 1232)
        suffix = question_bytes("svc.example.com.")[:-4]
        removed = cache.flush(lambda k: suffix in k)
        assert removed == 3
        assert stored_keys(cache) == [key_for("www.example.com.")]
        assert cache.evictions == 0


# ---------------------------------------------------------------------------- Entry.reply


def cached(msg: bytes, clock: FakeClock, policy: CachePolicy | None = None, do: bool = False, name: str = NAME) -> Entry:
    """The entry a ZoneCache makes for the upstream reply `msg` at the clock's time."""
    cache = ZoneCache(policy or CachePolicy(success_max_ttl=3600), clock.now)
    key = key_for(name, edns=1232, do=do) if do else key_for(name)
    return cache.store(key, scanned(msg, name), do, 1232)


class TestEntryReply:
    """A cached answer as the client sees it."""

    def test_client_id_and_exact_question(self, clock: FakeClock) -> None:
        """The client's ID and its question bytes, 0x20 case and all, whatever upstream wrote."""
        entry = cached(reply(NAME, qid=1, answers=[a(NAME, 60)]), clock)
        client = query("wWw.ExAmPle.CoM.", qid=0xCAFE)
        out = replay(entry, client, clock.now())
        rec = parse(out)
        qlen = len(question_bytes("wWw.ExAmPle.CoM."))
        assert rec.header.id == 0xCAFE
        assert out[12 : 12 + qlen] == client[12 : 12 + qlen]
        assert str(rec.q.qname) == "wWw.ExAmPle.CoM."
        assert [(rr.rtype, str(rr.rdata)) for rr in rec.rr] == [(QTYPE.A, "192.0.2.1")]

    @pytest.mark.parametrize("rd", [False, True])
    @pytest.mark.parametrize("upstream_aa", [False, True])
    @pytest.mark.parametrize("upstream_ra", [False, True])
    def test_flags(self, rd: bool, upstream_aa: bool, upstream_ra: bool, clock: FakeClock) -> None:
        """QR and RA set, AA cleared (a cache is not authoritative), RD copied from the query."""
        entry = cached(reply(answers=[a(NAME, 60)], aa=upstream_aa, ra=upstream_ra), clock)
        h = parse(replay(entry, query(rd=rd), clock.now())).header
        assert (h.qr, h.aa, h.ra, h.rd, h.tc, h.opcode) == (1, 0, 1, int(rd), 0, 0)

    @pytest.mark.parametrize(
        ("elapsed", "ttls"),
        [
            (0, [30, 10]),
            (0.999, [30, 10]),
            (1, [29, 9]),
            (5.5, [25, 5]),
            (9.99, [21, 1]),
            (10, [20, 0]),
            (11, [19, 0]),
            (29, [1, 0]),
            (30, [0, 0]),
            (3000, [0, 0]),
        ],
    )
    def test_ttls_count_down_per_record(self, elapsed: float, ttls: list[int], clock: FakeClock) -> None:
        """Each RRset keeps its own TTL minus the whole seconds elapsed, never below 0."""
        entry = cached(reply(answers=[cname(NAME, "web.example.com.", 30), a("web.example.com.", 10)]), clock)
        clock.advance(elapsed)
        assert ttls_of(parse(replay(entry, query(), clock.now()))) == ttls

    def test_ttls_in_every_section(self, clock: FakeClock) -> None:
        """Authority and additional TTLs count down too."""
        msg = reply(
            answers=[a(NAME, 40)],
            authority=[RR(ZONE, QTYPE.NS, rdata=NS("ns1.example.com."), ttl=50)],
            additional=[a("ns1.example.com.", 60, "192.0.2.53")],
        )
        entry = cached(msg, clock)
        clock.advance(7)
        assert ttls_of(parse(replay(entry, query(), clock.now()))) == [33, 43, 53]

    def test_replies_at_different_times(self, clock: FakeClock) -> None:
        """Replaying at t1, t2 and t1 again gives each moment's TTLs (no stale rendering reused)."""
        entry = cached(reply(answers=[a(NAME, 60)]), clock)
        seen = []
        for t in (3, 8, 3, 8, 0):
            seen.append(ttls_of(parse(replay(entry, query(), T0 + t)))[0])
        assert seen == [57, 52, 57, 52, 60]

    @pytest.mark.parametrize(("upstream_ttl", "cap", "served"), [(3600, 30, 30), (20, 30, 20), (30, 30, 30)])
    def test_ttl_capped(self, upstream_ttl: int, cap: int, served: int, clock: FakeClock) -> None:
        """A client never gets a TTL longer than the cache keeps the answer."""
        entry = cached(reply(answers=[a(NAME, upstream_ttl)]), clock, CachePolicy(success_max_ttl=cap))
        assert ttls_of(parse(replay(entry, query(), clock.now()))) == [served]
        clock.advance(5)
        assert ttls_of(parse(replay(entry, query(), clock.now()))) == [served - 5]

    def test_denial_ttl_capped(self, clock: FakeClock) -> None:
        """An NXDOMAIN's SOA is served with no more than the negative lifetime."""
        msg = reply(rcode=3, authority=[soa(ZONE, 3600, 300)])
        entry = cached(msg, clock, CachePolicy(denial_max_ttl=5))
        rec = parse(replay(entry, query(), clock.now()))
        assert rec.header.rcode == wire.NXDOMAIN
        assert [(rr.rtype, rr.ttl) for rr in rec.auth] == [(QTYPE.SOA, 5)]
        assert rec.auth[0].rdata.times[-1] == 300  # the SOA data itself is not touched

    def test_ttl_top_bit_served_as_zero(self, clock: FakeClock) -> None:
        """RFC 2181 8: a TTL with the top bit set goes out as 0, not as a huge number."""
        entry = cached(reply(answers=[a(NAME, 60), a(NAME, 0x80000000, "192.0.2.2")]), clock)
        assert ttls_of(parse(replay(entry, query(), clock.now()))) == [60, 0]

    @pytest.mark.parametrize(
        ("edns", "do"), [(None, False), (1232, False), (4096, True), (512, True)]
    )
    def test_opt_iff_client_sent_one(self, edns: int | None, do: bool, clock: FakeClock) -> None:
        """OPT appears exactly when the client used EDNS, with the client's DO bit; the upstream's OPT is not passed on."""
        glue = a("ns1.example.com.", 60)
        msg = reply(answers=[a(NAME, 60)], additional=[glue, opt(4096, do=True)])
        entry = cached(msg, clock, do=do)
        out = replay(entry, query(edns=edns, do=do), clock.now())
        rec = parse(out)
        o = opt_of(rec)
        assert (o is not None) == (edns is not None)
        assert rec.header.ar == 1 + (edns is not None)
        assert [str(rr.rname) for rr in records(rec)] == [NAME, "ns1.example.com."]
        if o is not None:
            assert (o.edns_do, o.edns_ver, str(o.rname)) == (int(do), 0, ".")

    @pytest.mark.parametrize("rcode", [wire.NXDOMAIN, wire.SERVFAIL])
    def test_rcode_kept(self, rcode: int, clock: FakeClock) -> None:
        """Negative and failure entries keep their rcode."""
        entry = cached(reply(rcode=rcode, authority=[soa(ZONE, 60, 60)]), clock)
        assert full_rcode(parse(replay(entry, query(edns=1232), clock.now()))) == rcode

    def test_truncated_when_too_big(self, clock: FakeClock) -> None:
        """Larger than the client's limit: TC=1, as many whole answers as fit, OPT kept for EDNS clients."""
        answers = [a(NAME, 60, f"192.0.2.{i}") for i in range(60)]
        entry = cached(reply(answers=answers), clock)
        big = parse(replay(entry, query(edns=4096), clock.now()))
        assert big.header.tc == 0 and len(big.rr) == 60
        for client, has_opt in ((query(), False), (query(edns=700), True), (query(edns=100), True)):
            out = replay(entry, client, clock.now())
            rec = parse(out)
            limit = wire.scan_query(client).payload
            assert len(out) <= limit < len(out) + 16  # one more A record (16 bytes compressed) would not fit
            assert rec.header.tc == 1
            assert 0 < rec.header.a == len(rec.rr) < 60 and rec.header.auth == 0
            assert [str(rr.rdata) for rr in rec.rr] == [f"192.0.2.{i}" for i in range(len(rec.rr))]
            assert (opt_of(rec) is not None) == has_opt and rec.header.ar == int(has_opt)
            assert str(rec.q.qname) == NAME and rec.header.id == 0x1234

    def test_limit_boundary(self, clock: FakeClock) -> None:
        """A reply of exactly `limit` bytes fits; one byte less and the last record goes, with TC."""
        entry = cached(reply(answers=[a(NAME, 60, f"192.0.2.{i}") for i in range(10)]), clock)
        full = replay(entry, query(), clock.now(), limit=65535)
        assert parse(replay(entry, query(), clock.now(), limit=len(full))).header.tc == 0
        cut = parse(replay(entry, query(), clock.now(), limit=len(full) - 1))
        assert cut.header.tc == 1 and len(cut.rr) == 9

    def test_truncation_keeps_section_order_and_sets_tc_for_authority(self, clock: FakeClock) -> None:
        """Records go in order: answers, then authority; losing an authority record sets TC too."""
        msg = reply(
            rcode=wire.NXDOMAIN,
            answers=[cname(NAME, "gone.example.com.", 60)],
            authority=[soa(ZONE, 60, 60), RR(ZONE, QTYPE.NS, rdata=NS("ns1.example.com."), ttl=60)],
        )
        entry = cached(msg, clock)
        full = replay(entry, query(), clock.now(), limit=65535)
        rec = parse(replay(entry, query(), clock.now(), limit=len(full) - 1))
        assert (rec.header.tc, rec.header.a, rec.header.auth) == (1, 1, 1)
        assert [rr.rtype for rr in rec.rr + rec.auth] == [QTYPE.CNAME, QTYPE.SOA]
        assert rec.header.rcode == wire.NXDOMAIN

    def test_dropping_only_additional_records_leaves_tc_clear(self, clock: FakeClock) -> None:
        """RFC 2181 9: additional data that does not fit is left out without TC."""
        glue = [a(f"ns{i}.example.com.", 60, f"192.0.2.{i}") for i in range(40)]
        msg = reply(answers=[a(NAME, 60)], authority=[RR(ZONE, QTYPE.NS, rdata=NS("ns1.example.com."), ttl=60)],
                    additional=[*glue, opt(4096)])  # fmt: skip
        entry = cached(msg, clock)
        for client in (query(), query(edns=600)):
            out = replay(entry, client, clock.now())
            rec = parse(out)
            assert len(out) <= wire.scan_query(client).payload
            assert rec.header.tc == 0 and (len(rec.rr), len(rec.auth)) == (1, 1)
            kept = [rr for rr in rec.ar if rr.rtype == QTYPE.A]
            assert 0 < len(kept) < 40
            assert [str(rr.rname) for rr in kept] == [f"ns{i}.example.com." for i in range(len(kept))]

    def test_cut_depends_on_the_limit_not_on_the_first_client(self, clock: FakeClock) -> None:
        """Clients with different limits each get their own cut, in any order, again and again."""
        entry = cached(reply(answers=[a(NAME, 60, f"192.0.2.{i}") for i in range(60)]), clock)
        sizes = [512, 700, 1000, 512, 600, 700, 800, 900, 512]
        counts = [len(parse(replay(entry, query(edns=s), clock.now())).rr) for s in sizes]
        again = [len(parse(replay(entry, query(edns=s), clock.now())).rr) for s in sizes]
        assert counts == again
        assert counts[0] < counts[1] < counts[2] and counts[0] == counts[3] == counts[8]

    @pytest.mark.parametrize("stale_ttl", [30, 0, 1])
    def test_stale_reply_sets_every_ttl(self, stale_ttl: int, clock: FakeClock) -> None:
        """RFC 8767 4: a stale answer carries the stale TTL on every record, whatever time it is."""
        msg = reply(
            answers=[cname(NAME, "web.example.com.", 300), a("web.example.com.", 10)],
            authority=[RR(ZONE, QTYPE.NS, rdata=NS("ns1.example.com."), ttl=5)],
        )
        entry = cached(msg, clock, CachePolicy(stale_window=3600))
        clock.advance(500)
        client = query("WWW.example.com.", qid=77, edns=1232)
        q = wire.scan_query(client)
        out = entry.stale_reply(client, q.qend, q.edns, q.payload, stale_ttl)
        rec = parse(out)
        assert ttls_of(rec) == [stale_ttl] * 3
        assert rec.header.id == 77 and out[12 : q.qend] == client[12 : q.qend]
        assert opt_of(rec) is not None and rec.header.rcode == 0

    def test_stale_reply_truncates(self, clock: FakeClock) -> None:
        """A stale answer too big for the client is truncated like a fresh one."""
        entry = cached(reply(answers=[a(NAME, 60, f"192.0.2.{i}") for i in range(60)]), clock)
        client = query()
        q = wire.scan_query(client)
        out = entry.stale_reply(client, q.qend, q.edns, q.payload, 30)
        rec = parse(out)
        assert len(out) <= 512 and rec.header.tc == 1 and 0 < len(rec.rr) < 60
        assert ttls_of(rec) == [30] * len(rec.rr)


# ---------------------------------------------------------------------------- LRU order


def _walk_purge(cache: ZoneCache) -> None:
    cache.purge()


def _walk_entries(cache: ZoneCache) -> None:
    list(cache.entries())


def _walk_flush_nothing(cache: ZoneCache) -> None:
    assert cache.flush(lambda key: False) == 0


@pytest.mark.parametrize("walk", [_walk_purge, _walk_entries, _walk_flush_nothing], ids=["purge", "entries", "flush"])
def test_read_only_walks_keep_lru_order(walk: Callable[[ZoneCache], None], clock: FakeClock) -> None:
    """A purge, a stats walk or a flush that matches nothing leaves recency alone.

    The hot names were stored first and then read; a flood of unique names
    after the walk must push out the cold names, never the hot ones.
    """
    size, hot_count = 100, 10
    cache = ZoneCache(CachePolicy(success_capacity=size), clock.now)
    names = [f"n{i}.example.com." for i in range(size)]
    for n in names:
        cache.store(key_for(n), positive(60, n), False, 1232)
    hot, cold = names[:hot_count], names[hot_count:]
    for n in hot:
        assert cache.get(key_for(n)) is not None
    walk(cache)
    for i in range(size - hot_count):
        n = f"flood{i}.example.com."
        cache.store(key_for(n), positive(60, n), False, 1232)
    assert all(cache.get(key_for(n)) is not None for n in hot)
    assert not any(cache.get(key_for(n)) is not None for n in cold)


def test_purge_drops_expired_without_reordering_survivors(clock: FakeClock) -> None:
    """After a purge that removes expired entries, the next eviction is still the least recently used."""
    cache = ZoneCache(CachePolicy(success_capacity=3, stale_window=0), clock.now)
    cache.store(key_for("old.example.com."), positive(60, "old.example.com."), False, 1232)
    cache.store(key_for("gone.example.com."), positive(5, "gone.example.com."), False, 1232)
    cache.store(key_for("new.example.com."), positive(60, "new.example.com."), False, 1232)
    assert cache.get(key_for("old.example.com.")) is not None  # old is now the most recent
    clock.advance(10)
    assert cache.purge() == 1
    for n in ("x.example.com.", "y.example.com."):
        cache.store(key_for(n), positive(60, n), False, 1232)
    assert cache.get(key_for("new.example.com.")) is None  # least recently used: evicted
    assert cache.get(key_for("old.example.com.")) is not None


# ---------------------------------------------------------------------------- byte accounting


def _measured_growth(count: int) -> tuple[ZoneCache, int, int]:
    """Store `count` realistic answers (~100-byte replies, three A records) while tracemalloc watches.

    Returns the cache, the bytes it grew by once stored, and once every entry
    was replayed a second later (each then holds its TTL-lowered body too).
    The clock makes a new float per call, as time.monotonic does.
    """
    t = [T0]

    def now() -> float:
        return t[0] + 0.0

    msgs = []
    for i in range(count):
        name = f"svc{i:05d}.default.svc.cluster.local."
        msgs.append((query(name), reply(name, answers=[a(name, 30, f"192.0.2.{j + 1}") for j in range(3)])))
    assert 90 <= len(msgs[0][1]) <= 110
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        cache = ZoneCache(CachePolicy(success_capacity=count), now)
        for q, msg in msgs:
            qs = wire.scan_query(q)
            cache.store(qs.key, wire.scan_reply(msg, qs.lname, qs.key[len(qs.lname) : len(qs.lname) + 4]), False, 1232)
        gc.collect()
        stored = tracemalloc.get_traced_memory()[0] - base
        t[0] += 1
        for q, _ in msgs:
            qs = wire.scan_query(q)
            entry = cache.get(qs.key)
            assert entry is not None
            entry.reply(q, qs.qend, qs.edns, 1232, now())
        del qs, entry
        gc.collect()
        replayed = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    return cache, stored, replayed


def test_accounted_bytes_match_measured_memory() -> None:
    """The cache's byte total is what tracemalloc sees it take, within 1% for a full default cache.

    Replays after the first second render the body with lowered TTLs in
    place of the old one: memory does not grow with hits, and the total does
    not move on a hit.
    """
    cache, stored, replayed = _measured_growth(DEFAULT_CAPACITY)
    accounted = cache.bytes
    assert replayed <= stored * 1.001  # one body per entry, before and after hits
    assert abs(accounted - stored) <= 0.01 * stored, (accounted, stored)
    assert abs(accounted - replayed) <= 0.01 * replayed, (accounted, replayed)


def _charged(cache: ZoneCache) -> int:
    """What the cache should be charged: every entry's slot and every NXDOMAIN index entry."""
    index = cache.denial.cut_index or {}
    return sum(slot_size(k, e) for k, e in cache.entries()) + sum(
        sys.getsizeof(ck) + INDEX_SLOT_BYTES for ck in index
    )


def test_byte_total_follows_removals(clock: FakeClock) -> None:
    """Evictions, replacements, purges and flushes give back exactly what the entries were charged."""
    cache = ZoneCache(CachePolicy(success_capacity=3, denial_capacity=3), clock.now)
    assert cache.bytes == 0
    cache.store(key_for("a.example.com."), positive(10, "a.example.com."), False, 1232)
    one = cache.bytes
    assert one > len(reply("a.example.com.", answers=[a("a.example.com.", 10)]))
    cache.store(key_for("a.example.com."), positive(10, "a.example.com."), False, 1232)  # replaced
    assert cache.bytes == one
    for n in ("b.example.com.", "c.example.com.", "d.example.com."):  # a is evicted
        cache.store(key_for(n), positive(60, n), False, 1232)
    cache.store(key_for("nx.example.com."), nxdomain(name="nx.example.com."), False, 1232)
    assert cache.bytes == _charged(cache) and cache.denial.cut_index  # the NXDOMAIN's index entry is charged too
    cache.flush(lambda k: k == key_for("b.example.com."))
    assert cache.bytes == _charged(cache)
    clock.advance(3600 + 3600)  # past expiry and the default stale window
    cache.purge()
    assert cache.bytes == 0 and stored_keys(cache) == []


# ---------------------------------------------------------------------------- memory budget


def _fill(cache: ZoneCache, prefix: str, count: int, denial: bool = False) -> list[str]:
    """Store `count` distinct names (answers, or NXDOMAINs with `denial`); return them."""
    names = [f"{prefix}{i}.example.com." for i in range(count)]
    for n in names:
        cache.store(key_for(n), nxdomain(name=n) if denial else positive(60, n), False, 1232)
    return names


def _entry_cost(clock: FakeClock) -> int:
    probe = ZoneCache(CachePolicy(), clock.now)
    _fill(probe, "probe", 1)
    return probe.bytes


def _budgeted(clock: FakeClock, zones: int, limit: int) -> tuple[MemoryBudget, list[ZoneCache]]:
    caches = [ZoneCache(CachePolicy(stale_window=3600), clock.now) for _ in range(zones)]
    budget = MemoryBudget(limit)
    budget.attach(caches)
    return budget, caches


class TestKeepTtl:
    """CoreDNS's `keepttl`: a zone's answers are replayed with the TTLs they were stored with."""

    KEEP = CachePolicy(success_max_ttl=3600, denial_max_ttl=3600, keepttl=True)

    @pytest.mark.parametrize("elapsed", [0, 1, 7.5, 29])
    def test_ttls_stay_as_stored(self, elapsed: float, clock: FakeClock) -> None:
        entry = cached(reply(answers=[cname(NAME, "web.example.com.", 30), a("web.example.com.", 10)]), clock, self.KEEP)
        clock.advance(elapsed)
        assert ttls_of(parse(replay(entry, query(), clock.now()))) == [30, 10]

    def test_the_cap_still_applies(self, clock: FakeClock) -> None:
        """keepttl keeps what the cache stored: a 3600 s record cached for at most 30 s is served with 30."""
        policy = CachePolicy(success_max_ttl=30, keepttl=True)
        entry = cached(reply(answers=[a(NAME, 3600)]), clock, policy)
        clock.advance(12)
        assert ttls_of(parse(replay(entry, query(), clock.now()))) == [30]

    def test_a_denial_keeps_its_soa_ttl(self, clock: FakeClock) -> None:
        msg = reply(rcode=wire.NXDOMAIN, authority=[soa(ZONE, 60, 60)])
        entry = cached(msg, clock, self.KEEP)
        clock.advance(20)
        assert ttls_of(parse(replay(entry, query(), clock.now()))) == [60]

    def test_truncated_replies_keep_the_ttls_too(self, clock: FakeClock) -> None:
        many = [a(NAME, 40, f"192.0.2.{i}") for i in range(1, 60)]
        entry = cached(reply(answers=many), clock, self.KEEP)
        clock.advance(5)
        out = parse(replay(entry, query(), clock.now(), limit=512))
        assert out.header.tc and out.rr and {r.ttl for r in out.rr} == {40}

    def test_a_kept_ttl_entry_is_charged_as_a_plain_one(self, clock: FakeClock) -> None:
        """The subclass adds no slot, so the byte accounting (one size for every entry object) holds for it."""
        msg = reply(answers=[a(NAME, 40)])
        assert sys.getsizeof(cached(msg, clock, self.KEEP)) == sys.getsizeof(cached(msg, clock))

    def test_without_keepttl_the_zone_keeps_the_plain_entry(self, clock: FakeClock) -> None:
        """Off costs nothing: the entries are plain Entry objects, whose TTLs count down."""
        entry = cached(reply(answers=[a(NAME, 40)]), clock)
        clock.advance(5)
        assert type(entry) is Entry
        assert ttls_of(parse(replay(entry, query(), clock.now()))) == [35]


class TestMemoryBudget:
    """--cache-memory: one byte budget over every zone, enforced on store with the true accounting."""

    def test_total_stays_within_the_budget(self, clock: FakeClock) -> None:
        """A flood of new names never takes the total past the limit; the newest names stay, evictions counted."""
        limit = 20 * _entry_cost(clock)
        budget, (cache,) = _budgeted(clock, 1, limit)
        names = []
        for i in range(100):
            names += _fill(cache, f"flood{i}-", 1)
            assert budget.used <= limit
        assert budget.used > limit - 2 * _entry_cost(clock)  # it fills up to the budget, not far below
        kept = len(cache.success)
        assert 15 <= kept <= 20
        assert all(cache.get(key_for(n)) is not None for n in names[-kept:])
        assert cache.memory_evictions == 100 - kept
        assert cache.evictions == cache.memory_evictions  # counted in the total too; no capacity eviction

    def test_capacity_evictions_are_not_memory_evictions(self, clock: FakeClock) -> None:
        """With room in the budget, the entry capacity still bounds a cache and is counted apart."""
        cache = ZoneCache(CachePolicy(success_capacity=5), clock.now)
        budget = MemoryBudget(100 * _entry_cost(clock))
        budget.attach([cache])
        _fill(cache, "n", 12)
        assert len(cache.success) == 5
        assert (cache.evictions, cache.memory_evictions) == (7, 0)

    def test_denials_go_first_across_zones(self, clock: FakeClock) -> None:
        """Answers stored past the budget push out every denial, in any zone, before any answer."""
        cost = _entry_cost(clock)
        budget, (a_zone, b_zone) = _budgeted(clock, 2, 30 * cost)
        good = _fill(a_zone, "good", 10)
        _fill(b_zone, "nx", 15, denial=True)
        _fill(b_zone, "more", 10)  # needs ~5 entries' room: taken from the denials
        assert all(a_zone.get(key_for(n)) is not None for n in good)
        assert len(b_zone.denial) < 15 and len(b_zone.success) == 10
        assert b_zone.denial.memory_evictions > 0 and a_zone.memory_evictions == 0
        assert b_zone.success.memory_evictions == 0

    def test_the_fullest_cache_gives(self, clock: FakeClock) -> None:
        """Once denials are gone, the success cache holding the most bytes gives, not the one storing."""
        cost = _entry_cost(clock)
        budget, (big, small) = _budgeted(clock, 2, 30 * cost)
        _fill(big, "big", 25)
        few = _fill(small, "small", 3)
        _fill(small, "late", 5)
        assert all(small.get(key_for(n)) is not None for n in few)
        assert small.memory_evictions == 0 and big.memory_evictions > 0
        assert budget.used <= 30 * cost

    def test_zero_is_no_budget(self, clock: FakeClock) -> None:
        """Limit 0: only the entry capacities bound the caches."""
        budget, (cache,) = _budgeted(clock, 1, 0)
        _fill(cache, "n", 200)
        assert len(cache.success) == 200 and cache.memory_evictions == 0 and budget.used == cache.bytes

    def test_reattach_with_a_lower_limit_shrinks_at_once(self, clock: FakeClock) -> None:
        """A reload that lowers the budget evicts down to it immediately; caches it no longer lists are let go."""
        cost = _entry_cost(clock)
        budget, (kept, dropped) = _budgeted(clock, 2, 100 * cost)
        _fill(kept, "k", 40)
        _fill(dropped, "d", 40)
        budget.attach([kept], 10 * cost)
        assert budget.used == kept.bytes <= 10 * cost
        assert dropped.budget is None and len(dropped.success) == 40
        _fill(dropped, "after", 5)  # an in-flight miss landing in a retired zone evicts nothing elsewhere
        assert budget.used <= 10 * cost

    def test_replacing_an_entry_does_not_evict_another(self, clock: FakeClock) -> None:
        """Storing a key again frees its old entry first; a full budget evicts nothing for it."""
        cost = _entry_cost(clock)
        budget, (cache,) = _budgeted(clock, 1, 5 * cost)
        names = _fill(cache, "n", 5)
        cache.store(key_for(names[0]), positive(60, names[0]), False, 1232)
        assert cache.memory_evictions == 0 and len(cache.success) == 5
