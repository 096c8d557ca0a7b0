"""The answer cache: what is cacheable, for how long, and how a hit is rendered.

Design notes:
- Each zone has two bounded LRU caches (an OrderedDict each), success and denial, as
  CoreDNS does, so a flood of NXDOMAINs cannot push out good answers.
- Expiry is checked on read, not by the container: an entry must outlive its
  TTL by the serve-stale window (RFC 8767), so a TTL cache that drops entries
  at expiry is the wrong tool. A periodic `purge` drops what is past the
  window; the LRU bound keeps memory fixed in between.
- An entry keeps the upstream reply as bytes with the TTL offsets found once
  on the miss, so a hit is a few slices and a join (see `Entry.reply`). It
  keeps one body, re-rendered at most once a second, and shares its headers
  and packed TTLs with like entries: about 400 bytes with a 100-byte answer.
- A hit is counted on the entry's `tally`: a list of four ints (UDP/TCP over
  IPv4/IPv6) shared by every entry of the same zone, kind, rcode and qtype.
  One list add records requests, hits and responses by all the labels the
  metrics need, and the counts outlive the entries (see `ZoneCache.tally`).
- RFC 8020 (NXDOMAIN cut): a cached plain NXDOMAIN (no answer records) also
  answers every other type of its name and every name below it. The denial
  LRU keeps an index from (name, class, DO/CD byte) to the key of such an
  entry; the index holds only keys already in the LRU and loses a name when
  its entry leaves the LRU, so it is bounded by the denial capacity. It is
  read on a miss only (`ZoneCache.nxdomain_above`), never on a hit.
- A repeated hit is replayed from the `ReplyMemo` (query bytes after the ID to
  reply bytes after the ID), which every removal from an LRU empties.
"""

from __future__ import annotations

import enum
import sys
import types
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Final

from nodecache import wire
from nodecache.config import CachePolicy
from nodecache.counters import counted_rcode, counted_type

# How a query arrived, as an index into a tally: bit 0 set for TCP, bit 1 for IPv6.
VIA_UDP4, VIA_TCP4, VIA_UDP6, VIA_TCP6 = 0, 1, 2, 3
VIAS: Final = 4

Tally = list[int]

MAX_CUTS: Final = 4  # truncation points an entry remembers (one per client size limit seen)
# What one key costs the LRU beyond the key and the entry themselves: its slot
# in the OrderedDict's table and its link node, amortised over the table's
# growth. Measured with tracemalloc on CPython 3.11: 75 bytes a key from 5,000
# to 10,000 keys (85 at 2,000), so the figure is exact for a full default cache.
LRU_SLOT_BYTES: Final = 75
INDEX_SLOT_BYTES: Final = 30  # a plain dict's slot (the NXDOMAIN index), likewise at 9,984 keys (30 to 59 as it grows)
# Values entries share instead of each keeping a copy: the packed TTL maps (one
# per record layout and TTLs, keyed by themselves) and the shapes, the header
# variants with the OPT record (one per flags and counts, keyed by what they are
# made of). Bounded: past it, new values are kept per entry and charged to it.
# Nothing ever leaves the table, so whether a value is shared never changes
# while an entry holds it. The table itself is at most a few hundred KiB.
MAX_SHARED: Final = 4096
# Entries a purge looks at before the agent's loop runs queries again (`ZoneCache.purge_steps`):
# about 0.1 ms of work at a time instead of one walk over the whole cache.
PURGE_STEP: Final = 1000
_shared: Final[dict[object, object]] = {}
# Sizes as sys.getsizeof gives them, computed once: `slot_size` runs twice a miss (store, eviction).
_FLOAT_BYTES: Final = sys.getsizeof(0.0)
_BYTES_HEAD: Final = sys.getsizeof(b"")  # a bytes object is this plus its length
# What sys.getsizeof adds to a garbage-collected type's basic size: measured on a list, so an entry's
# size is known from its class alone (a compiled class cannot be instantiated without its arguments).
_GC_HEAD: Final = sys.getsizeof([]) - list.__basicsize__
_KEY_BYTES: Final = _BYTES_HEAD + LRU_SLOT_BYTES  # what a key costs beyond its length, with its slot in the LRU


class Kind(enum.Enum):
    """What an entry says; decides its cache and its lifetime."""

    SUCCESS = "success"
    DENIAL = "denial"  # NXDOMAIN or NODATA, with an SOA (RFC 2308)
    SERVFAIL = "servfail"

    # Members are singletons: hash them by identity, in C. Enum's own __hash__ is a Python function, and a
    # kind is hashed on every store (in the key of its shape and of its tally).
    __hash__ = object.__hash__


def classify(scan: wire.ReplyScan) -> Kind | None:
    """Decide whether an upstream reply may be cached; None means never.

    Not cached: truncated replies (the full answer comes over TCP),
    REFUSED/FORMERR/NOTIMP and other rcodes, and negative answers without an
    SOA, which carry no negative TTL. A CNAME chain that ends without the
    asked type, with an SOA, is a negative answer (RFC 2308 5): NODATA for
    the chain's target, however many records the answer section holds.
    """
    if scan.flags & (wire.TC << 8):
        return None
    if scan.rcode == wire.NOERROR:
        if scan.answers and (scan.has_type or scan.soa_ttl is None):
            return Kind.SUCCESS
        return Kind.DENIAL if scan.soa_ttl is not None else None
    if scan.rcode == wire.NXDOMAIN:
        return Kind.DENIAL if scan.soa_ttl is not None else None
    if scan.rcode == wire.SERVFAIL:
        return Kind.SERVFAIL
    return None


def lifetime(kind: Kind | None, scan: wire.ReplyScan, policy: CachePolicy) -> int:
    """Seconds an entry stays fresh; 0 means do not cache.

    A denial lives min(SOA TTL, SOA MINIMUM) (RFC 2308 5), and no longer than
    any CNAME in front of it: the chain may change before the denial would.
    """
    if kind is Kind.SUCCESS:
        ttl = min(scan.ttls) if scan.ttls else 0
        return _clamp(ttl, policy.success_min_ttl, policy.success_max_ttl)
    if kind is Kind.DENIAL:
        assert scan.soa_ttl is not None and scan.soa_minimum is not None
        ttl = min(scan.soa_ttl, scan.soa_minimum, *scan.ttls[: scan.answers])
        return _clamp(ttl, policy.denial_min_ttl, policy.denial_max_ttl)
    if kind is Kind.SERVFAIL:
        return policy.servfail_ttl
    return 0


def cuts_below(scan: wire.ReplyScan) -> bool:
    """Whether this reply proves the queried name, and all below it, do not exist (RFC 8020).

    Only a plain NXDOMAIN: with a CNAME chain in the answer the NXDOMAIN is
    about the chain's target, not the queried name.
    """
    return scan.rcode == wire.NXDOMAIN and scan.answers == 0


def _for_cut(key: bytes, scan: wire.ReplyScan) -> tuple[wire.ReplyScan, bool]:
    """The reply as it is kept, and whether it is a plain NXDOMAIN that answers below its name (RFC 8020).

    Such a reply is replayed after other questions too, so its names must not point into
    this one: it is kept with its names written out. A name that cannot be followed makes
    it an ordinary entry, cached for its own question only.
    """
    if not cuts_below(scan):
        return scan, False
    try:
        return wire.uncompressed(scan, key[:-5], key[-5:-1]), True
    except wire.Malformed:
        return scan, False


def _cut_key(key: bytes) -> bytes:
    """The index key for a cache key: its name, class and flag byte, without the type."""
    return key[:-5] + key[-3:]


def _clamp(ttl: int, low: int, high: int) -> int:
    if ttl <= 0:
        return 0  # TTL 0 means "do not cache" (RFC 1035 3.2.1); no floor lifts it
    return max(low, min(ttl, high))


class Rare:
    """What few entries need, behind one slot of Entry instead of three: made on first use.

    `hits` and `seen` (the ask count and the last ask) with prefetch on
    (prefetch.py); `cuts`, truncation points, for replies larger than a
    client takes (`Entry._truncated`). Not charged to the memory budget (an
    entry's size must not change while it is stored): 64 bytes an entry.
    """

    __slots__ = ("hits", "seen", "cuts")

    def __init__(self) -> None:
        self.hits = 0
        self.seen = 0.0
        self.cuts: dict[int, tuple[int, tuple[bytes, bytes]]] | None = None  # made on the first cut


class Entry:
    """One cached reply, ready to be replayed to any client with the same key.

    Memory (see docs/performance.md): one body per entry, the one last
    rendered, with its TTLs lowered by `_at` seconds; the original TTLs and
    where they sit are kept packed (`_ttls`, 6 bytes a record), so a body of
    any second is rendered from them, once per second per entry at most. The
    four header variants, the OPT record and the kind (`_shape`) and the
    packed TTLs are shared with every entry that has the same ones (`_share`).
    Eight slots: with the GC header that is 96 bytes, pymalloc's next size
    class below the 128 that eleven took; rarely used fields are in `Rare`.
    """

    __slots__ = (
        "expires",
        "tally",
        "_life",
        "_shape",
        "_body",
        "_ttls",
        "_at",
        "_rare",
    )

    def __init__(
        self,
        scan: wire.ReplyScan,
        kind: Kind | None,
        do: bool,
        payload: int,
        now: float,
        ttl: int,
        stale: int,
        ttl_cap: int,
        tally: Tally | None = None,
    ) -> None:
        self.expires = now + ttl
        self._life = ttl  # so `stored` is `expires - _life`: one float per entry, not two
        # The zone's shared tally when the entry is to be stored (`ZoneCache.store` looks it up first).
        self.tally: Tally = [0] * VIAS if tally is None else tally
        # Served TTLs never exceed what the cache itself keeps: a client must
        # not hold a record longer than we would.
        ttls = scan.ttls
        if not ttls or (max(ttls) <= ttl_cap and 0 not in ttls):
            # The common case: no TTL above the cap, none read as 0 (a zero, or the top bit set, which the
            # body still has): the body already says what a client may be told, and is kept as it came.
            packed = wire.pack_ttls(scan.ttl_offsets, ttls)
            body = scan.body
        else:
            packed = wire.pack_ttls(scan.ttl_offsets, [t if t < ttl_cap else ttl_cap for t in ttls])
            body = wire.with_packed_ttls(scan.body, packed, 0)
        shared = _shared.get(packed)
        if shared is not None:
            packed = shared  # type: ignore[assignment]
        elif len(_shared) < MAX_SHARED:
            _shared[packed] = packed
        self._ttls = packed
        self._body = body
        self._at = 0
        flags2 = wire.RA | (scan.flags & (wire.CD | 0x0F))
        if do:
            flags2 |= scan.flags & wire.AD
        # What the shape is made from is its key in the shared table: a miss finds its entry's shape
        # with one lookup instead of building five bytes objects. The kind rides along (the headers
        # already differ by it, so sharing it splits no shape).
        made_of = (flags2, scan.answers, scan.authority, scan.additional, payload, do, scan.rcode >> 4, stale, kind)
        shape = _shared.get(made_of)
        if shape is None:
            own = len(_shared) >= MAX_SHARED
            shape = Shape(flags2, scan.answers, scan.authority, scan.additional, payload, do, scan.rcode >> 4, stale, kind, own)
            if not own:
                _shared[made_of] = shape
        self._shape: Shape = shape  # type: ignore[assignment]
        self._rare: Rare | None = None

    @property
    def kind(self) -> Kind | None:
        """What the entry says (success, denial, SERVFAIL; None: not cacheable, as a probe's)."""
        return self._shape.kind

    @property
    def rare(self) -> Rare:
        """The entry's rarely needed fields, made on the first use (see `Rare`)."""
        rare = self._rare
        if rare is None:
            rare = self._rare = Rare()
        return rare

    @property
    def stored(self) -> float:
        """When the entry was made (the clock's seconds)."""
        return self.expires - self._life

    @property
    def rcode(self) -> int:
        """The reply's rcode, extended bits included."""
        shape = self._shape
        return shape.plain[1] & 0x0F | shape.opt[5] << 4

    @property
    def stale_until(self) -> float:
        """Until when the entry may be served stale (RFC 8767): its expiry plus the stale window."""
        return self.expires + self._shape.stale

    @property
    def size(self) -> int:
        """Bytes the entry holds (see `footprint`)."""
        return footprint(self)

    def replay_until(self) -> float:
        """Until when the reply `reply` last made stays right byte for byte (ReplyMemo).

        The TTLs drop at the next whole second of the entry's age, and the entry is fresh until `expires`.
        """
        next_second = self.expires - self._life + self._at + 1
        return next_second if next_second < self.expires else self.expires

    def reply(self, data: bytes, qend: int, edns: int, limit: int, now: float) -> bytes:
        """This answer for the query `data`: its ID, its exact question, our TTLs.

        `limit` is the largest reply the client can take (65535 over TCP).
        A larger reply carries as many whole records as fit (`_truncated`).
        """
        elapsed = int(now - self.expires + self._life)
        if elapsed != self._at:
            self._body = wire.with_packed_ttls(self._body, self._ttls, elapsed)
            self._at = elapsed
        shape = self._shape
        if edns:
            out = data[:2] + (shape.edns_rd if data[2] & 1 else shape.edns) + data[12:qend] + self._body + shape.opt
        else:
            out = data[:2] + (shape.rd if data[2] & 1 else shape.plain) + data[12:qend] + self._body
        if len(out) > limit:
            out = self._truncated(data, qend, edns, limit, self._body)
        return out

    def stale_reply(self, data: bytes, qend: int, edns: int, limit: int, stale_ttl: int) -> bytes:
        """The answer past its expiry, every TTL set to `stale_ttl` (RFC 8767 4)."""
        body = wire.with_packed_ttls(self._body, self._ttls, 0, stale_ttl)
        shape = self._shape
        head = (shape.edns_rd if data[2] & 1 else shape.edns) if edns else (shape.rd if data[2] & 1 else shape.plain)
        out = data[:2] + head + data[12:qend] + body + (shape.opt if edns else b"")
        if len(out) > limit:
            out = self._truncated(data, qend, edns, limit, body)
        return out

    def _truncated(self, data: bytes, qend: int, edns: int, limit: int, body: bytes) -> bytes:
        """The reply cut to the whole records that fit in `limit`, in order (RFC 2181 9).

        The client's OPT is kept (its 11 bytes are reserved). TC is set when an
        answer or authority record had to go; dropping only additional records
        leaves it clear. Name compression points backwards only, so a cut at a
        record boundary leaves every kept name readable. The cut depends only
        on the room left after the question (every client of an entry asks a
        name of the same length) and on the OPT, so it is found once, on the
        first oversize reply, and remembered for a few limits.
        """
        room = limit - qend - (wire.OPT_LEN if edns else 0)
        key = room << 1 | edns
        rare = self.rare
        cuts = rare.cuts
        if cuts is None:
            cuts = rare.cuts = {}
        cut = cuts.get(key)
        if cut is None:
            if len(cuts) >= MAX_CUTS:
                cuts.clear()
            cut = cuts[key] = self._cut(room, edns)
        end, heads = cut
        return data[:2] + heads[data[2] & 1] + data[12:qend] + body[:end] + (self._shape.opt if edns else b"")

    def _cut(self, room: int, edns: int) -> tuple[int, tuple[bytes, bytes]]:
        """Where to cut the body for `room` bytes, and the two headers (RD clear, set) saying so."""
        h = self._shape.plain
        an, ns, ar = h[4] << 8 | h[5], h[6] << 8 | h[7], h[8] << 8 | h[9]
        end = kept = 0
        while kept < an + ns + ar:
            after = wire.record_end(self._body, end)
            if after > room:
                break
            end = after
            kept += 1
        k_an = min(kept, an)
        k_ns = min(kept - k_an, ns)
        k_ar = kept - k_an - k_ns + edns
        flags1 = wire.QR | (wire.TC if kept < an + ns else 0)
        counts = (0, 1, k_an >> 8, k_an & 0xFF, k_ns >> 8, k_ns & 0xFF, k_ar >> 8, k_ar & 0xFF)
        return end, (bytes((flags1, h[1], *counts)), bytes((flags1 | wire.RD, h[1], *counts)))


class Shape:
    """An entry's shared part, one object for every entry made alike (`_shared`).

    Four header variants, by the client's RD bit and whether it sent an OPT; the OPT record
    (whose extended rcode and the header's make the rcode); the stale window, for
    `stale_until`; the kind; and what an entry holding it is charged for it (`slot_size`):
    0 when shared, the whole shape when the entry has its own.
    A class, not a tuple: compiled, a tuple attribute would be stored unpacked inside every
    entry (64 bytes more each) and packed again on every read.
    """

    __slots__ = ("plain", "rd", "edns", "edns_rd", "opt", "stale", "kind", "charge")

    def __init__(
        self,
        flags2: int,
        an: int,
        ns: int,
        ar: int,
        payload: int,
        do: bool,
        ext_rcode: int,
        stale: int,
        kind: Kind | None,
        own: bool,
    ) -> None:
        flags1 = wire.QR  # AA off: a cached answer is not authoritative (as CoreDNS)
        counts = (0, 1, an >> 8, an & 0xFF, ns >> 8, ns & 0xFF)
        h = [bytes((flags1 | (i & 1), flags2, *counts, (ar + (i >> 1)) >> 8, (ar + (i >> 1)) & 0xFF)) for i in range(4)]
        self.plain, self.rd, self.edns, self.edns_rd = h
        self.opt = wire.opt_record(payload, do, ext_rcode)
        self.stale = stale
        self.kind = kind
        self.charge = _OWN_SHAPE_BYTES if own else 0


# What a shape of its own costs its entry: the object, its four headers and its OPT record.
_OWN_SHAPE_BYTES: Final = Shape.__basicsize__ + _GC_HEAD + 4 * (_BYTES_HEAD + wire.HEADER_LEN - 2) + _BYTES_HEAD + wire.OPT_LEN


class KeptTtlEntry(Entry):
    """An entry of a zone with `keepttl` (CoreDNS): replayed with its TTLs as stored, never counted down.

    A subclass, so zones without keepttl run `Entry.reply` unchanged and pay nothing for it.
    """

    __slots__ = ()

    def reply(self, data: bytes, qend: int, edns: int, limit: int, now: float) -> bytes:
        """This answer for the query `data`, with the TTLs it was stored with (see `Entry.reply`).

        Replayed as at the moment it was stored: no second has elapsed, so the body is never re-rendered.
        """
        return Entry.reply(self, data, qend, edns, limit, self.stored)

    def replay_until(self) -> float:
        """Its TTLs never drop: a reply stays right while the entry is fresh."""
        return self.expires


# What every entry holds whatever its reply: the object (Entry and KeptTtlEntry alike: same slots), its
# body's bytes header and its expiry: a float object in a slot, or the number itself in a compiled Entry.
_EXPIRY_BYTES: Final = _FLOAT_BYTES if isinstance(vars(Entry)["expires"], types.MemberDescriptorType) else 0
_ENTRY_BYTES: Final = Entry.__basicsize__ + _GC_HEAD + _BYTES_HEAD + _EXPIRY_BYTES


def footprint(entry: Entry) -> int:
    """Bytes `entry` holds: itself and every object only it refers to (sys.getsizeof).

    The entry, its body (rendered again each second, always the same
    length), its expiry (a float), and its header shape and packed TTLs when they
    are its own rather than shared (`_shared`). The rest is shared or small:
    kind, tally and stale window belong to the zone; small ints and None are
    the interpreter's. So the size never changes after the entry is made, no
    hit has to account for anything, and the size need not be stored: it is
    computed again when the entry leaves. `Rare` fields (prefetch's counts,
    truncation points), made after the entry is stored, are not counted.
    """
    return slot_size(b"", entry) - _KEY_BYTES


def slot_size(key: bytes, entry: Entry) -> int:
    """Bytes a stored entry costs: the entry (`footprint`), its key, and its slot in the LRU.

    Arithmetic and one lookup, no call: it runs twice a miss once the cache is full (the new
    entry, the evicted one). A shape says itself what it costs an entry (its last item).
    """
    ttls = entry._ttls
    own_ttls = 0 if _shared.get(ttls) is ttls else _BYTES_HEAD + len(ttls)
    return _ENTRY_BYTES + len(entry._body) + own_ttls + entry._shape.charge + _KEY_BYTES + len(key)


class _CountingLRU:
    """A least-recently-used map of key to Entry that counts evictions and the bytes it holds.

    An OrderedDict alone: a read moves the key to the end, the first key is
    the least recently used. Leaner than cachetools' LRUCache (a dict plus
    an OrderedDict, 104 bytes a key against 75) and one call per hit. Bytes
    (`slot_size` of each entry) are kept up to date on every insert and
    removal (misses, evictions, purges, flushes), never on a hit, so reading
    them costs nothing. Every removal goes through `_removed`.
    """

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._data: OrderedDict[bytes, Entry] = OrderedDict()
        self.evictions = 0  # every eviction, for capacity or for memory
        self.memory_evictions = 0  # those made to stay within the MemoryBudget
        self.bytes = 0
        # For the denial LRU: _cut_key(key) -> key of a plain NXDOMAIN (see `cuts_below`).
        self.cut_index: dict[bytes, bytes] | None = None
        self.memo: ReplyMemo | None = None  # forgets its replies whenever an entry leaves or is replaced

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: bytes) -> bool:
        return key in self._data

    def keys(self) -> list[bytes]:
        """The keys, least recently used first (a copy: safe to remove while walking it)."""
        return list(self._data)

    def get(self, key: bytes) -> Entry | None:
        """The entry for `key`, now marked as the most recently used."""
        entry = self._data.get(key)
        if entry is not None:
            self._data.move_to_end(key)
        return entry

    def peek(self, key: bytes) -> Entry | None:
        """The entry for `key` without marking it used."""
        return self._data.get(key)

    def peek_items(self) -> Iterator[tuple[bytes, Entry]]:
        """Every (key, entry) without touching recency: for purges, flushes and stats.

        Marking every entry as just used would make a flood of new names
        evict the hottest names first. The keys are copied first, so the
        caller may remove entries while walking.
        """
        data = self._data
        for key in list(data):
            entry = data.get(key)
            if entry is not None:
                yield key, entry

    def __setitem__(self, key: bytes, entry: Entry) -> None:
        self.put(key, entry, None)

    def put(self, key: bytes, entry: Entry, budget: MemoryBudget | None) -> None:
        """Keep `entry` at `key` as the most recently used, with room made for it first.

        The entry it replaces goes, or else the least recently used one when the cache is at its
        capacity (a capacity eviction); then `budget`, if any, evicts until the new entry's bytes
        fit, so it takes only what is still missing. The one insert path: a miss's store is one call.
        """
        data = self._data
        size = slot_size(key, entry)
        old = data.pop(key, None)
        if old is not None:
            self._removed(key, old)
        elif len(data) >= self.maxsize:
            self._evict()
        if budget is not None:
            budget.make_room(size)
        data[key] = entry
        self.bytes += size

    def _removed(self, key: bytes, entry: Entry) -> int:
        """Account for `entry`, just taken out at `key`; return its bytes. Every removal ends here."""
        size = slot_size(key, entry)
        self.bytes -= size
        if self.memo is not None:
            self.memo.invalidate()
        if self.cut_index:  # evictions too: no index entry outlives its entry
            self.unindex_cut(key)
        return size

    def _evict(self) -> int:
        """Drop the least recently used entry (an eviction, counted); return the bytes freed."""
        key, entry = self._data.popitem(last=False)
        self.evictions += 1
        return self._removed(key, entry)

    def __delitem__(self, key: bytes) -> None:
        self._removed(key, self._data.pop(key))

    def pop(self, key: bytes, default: Entry | None = None) -> Entry | None:
        """Remove and return the entry for `key` (or `default`)."""
        entry = self._data.pop(key, None)
        if entry is None:
            return default
        self._removed(key, entry)
        return entry

    def evict_for_memory(self) -> int:
        """Drop the least recently used entry to free memory; return the bytes freed."""
        self.memory_evictions += 1
        return self._evict()

    def clear(self) -> None:
        self._data.clear()
        self.bytes = 0
        if self.memo is not None:
            self.memo.invalidate()
        if self.cut_index:
            self.cut_index.clear()

    def index_cut(self, key: bytes) -> None:
        """Index the plain NXDOMAIN stored at `key` by its name (RFC 8020), charging the index's bytes."""
        index = self.cut_index
        assert index is not None
        ck = _cut_key(key)
        if ck not in index:
            self.bytes += sys.getsizeof(ck) + INDEX_SLOT_BYTES
        index[ck] = key

    def unindex_cut(self, key: bytes) -> None:
        """Forget the index entry of `key`'s name if it points at `key`."""
        index = self.cut_index
        assert index is not None
        ck = _cut_key(key)
        if index.get(ck) == key:
            del index[ck]
            self.bytes -= sys.getsizeof(ck) + INDEX_SLOT_BYTES


# ReplyMemo's bounds: queries remembered per way of arrival (VIA_*), and the longest reply it keeps.
# About 300 bytes a typical query (key, reply, tuple, dict slot); at most ~4 MiB with every bound full.
REPLY_MEMO_LIMIT: Final = 1024
REPLY_MEMO_MAX_REPLY: Final = 512
# What ReplyMemo maps a query to: the reply after its ID, until when it is right, the hit counters.
Replay = tuple[bytes, float, Tally]


class ReplyMemo:
    """Replies of recent hits by the query's bytes after its ID, so a repeated query skips scan and lookup.

    A query's bytes after the ID (flags, question as the client cased it,
    OPT with payload and DO) and how it came (its tally index, TCP or UDP
    size limit) decide its whole reply but the ID. So while the entry stays
    in its cache, fresh, and its TTLs do not drop, the same query bytes get
    the same reply bytes: `Resolver.answer` looks them up first. A replay
    is right until `Entry.replay_until` (the next whole second of the
    entry's age, or its expiry). The whole memo is forgotten whenever an
    entry leaves or is replaced in any cache it watches (evictions, flushes,
    purges, a store over a key, a success replacing a denial) and on a
    reload, so a replay never outlives its entry. Bounded at `limit`
    queries per way of arrival: a full map starts over. Both resets are
    counted for the stats.
    """

    def __init__(self, limit: int = REPLY_MEMO_LIMIT) -> None:
        self.limit = limit
        self.by_via: tuple[dict[bytes, Replay], ...] = tuple({} for _ in range(VIAS))
        self.invalidated = 0  # times it was forgotten because an entry left or was replaced
        self.overflowed = 0  # times one way's map was full and started over

    def __len__(self) -> int:
        return sum(len(m) for m in self.by_via)

    def keep(self, via: int, data: bytes, reply: bytes, until: float, tally: Tally) -> None:
        """Remember `reply` (to the query `data`, which came `via`) until `until`; long replies are not kept."""
        if len(reply) > REPLY_MEMO_MAX_REPLY:
            return
        m = self.by_via[via]
        if len(m) >= self.limit:
            m.clear()
            self.overflowed += 1
        m[data[2:]] = (reply[2:], until, tally)

    def invalidate(self) -> None:
        """Forget every reply: an entry left a cache or was replaced."""
        cleared = False
        for m in self.by_via:
            if m:
                m.clear()
                cleared = True
        self.invalidated += cleared


class ZoneCache:
    """The success and denial caches of one zone."""

    def __init__(self, policy: CachePolicy, clock: Callable[[], float]) -> None:
        self.policy = policy
        self.clock = clock
        self.success = _CountingLRU(max(policy.success_capacity, 1))
        self.denial = _CountingLRU(max(policy.denial_capacity, 1))
        self.denial.cut_index = {}
        # (kind, rcode, qtype) -> hits by how they arrived; see the module notes.
        self.tallies: dict[tuple[Kind, int, int], Tally] = {}
        self.budget: MemoryBudget | None = None  # set by MemoryBudget.attach
        self.memo: ReplyMemo | None = None  # set by `watch`: the resolver's memo of hit replies
        # Set by prefetch.arm: told of every entry `get` finds. None (prefetch off) costs a hit one test.
        self.asked: Callable[[bytes, Entry], None] | None = None

    def watch(self, memo: ReplyMemo | None) -> None:
        """Have `memo` forgotten whenever an entry leaves or is replaced here (None: no memo, as with prefetch)."""
        self.memo = self.success.memo = self.denial.memo = memo

    def tally(self, kind: Kind, rcode: int, qtype: int) -> Tally:
        """The shared hit counters for entries of this kind, rcode and qtype.

        Unlisted types and rcodes share one tally each (counters.counted_*), so
        a client inventing types cannot grow the table. A listed rcode and type
        are their own keys: found in one lookup (every store looks).
        """
        found = self.tallies.get((kind, rcode, qtype))
        if found is None:
            tkey = (kind, counted_rcode(rcode), counted_type(qtype))
            found = self.tallies.get(tkey)
            if found is None:
                found = self.tallies[tkey] = [0] * VIAS
        return found

    @property
    def hits(self) -> int:
        return sum(sum(t) for t in self.tallies.values())

    def get(self, key: bytes) -> Entry | None:
        """The entry for `key`, fresh or stale; callers compare the clock. Told to `asked` (prefetch)."""
        entry = self.success.get(key)
        if entry is None:
            entry = self.denial.get(key)
        elif entry.expires <= self.clock():
            # A fresh denial or SERVFAIL stored since then answers instead;
            # the stale success entry stays for serve-stale.
            newer: Entry | None = self.denial.get(key)
            if newer is not None and newer.stored > entry.stored and newer.expires > self.clock():
                entry = newer
        if entry is not None and self.asked is not None:
            self.asked(key, entry)
        return entry

    def store(self, key: bytes, scan: wire.ReplyScan, do: bool, payload: int) -> Entry:
        """Make the entry for an upstream reply and keep it if the rules allow."""
        cut = False
        if scan.rcode == wire.NXDOMAIN:  # only a plain NXDOMAIN can cut (`_for_cut`): answers skip two calls
            scan, cut = _for_cut(key, scan)
        kind = classify(scan)
        now = self.clock()
        p = self.policy
        ttl = lifetime(kind, scan, p)
        cap = p.success_max_ttl if kind is Kind.SUCCESS else ttl
        make = KeptTtlEntry if p.keepttl else Entry
        stale = p.stale_window if kind is not Kind.SERVFAIL else 0
        if ttl <= 0 or kind is None:
            return make(scan, kind, do, payload, now, ttl, stale, cap)
        entry = make(scan, kind, do, payload, now, ttl, stale, cap, self.tally(kind, scan.rcode, key[-5] << 8 | key[-4]))
        return self._keep(key, entry, cut, now)

    def _keep(self, key: bytes, entry: Entry, cut: bool, now: float) -> Entry:
        """Put a new entry in its cache (success or denial), with the NXDOMAIN cut index; `store` and `restore`."""
        p = self.policy
        kind = entry._shape.kind
        if kind is Kind.SUCCESS:
            self.denial.pop(key)
            if p.success_capacity > 0:
                self.success.put(key, entry, self.budget)
            return entry
        if kind is Kind.DENIAL:
            self.success.pop(key)  # the name is gone: the old answer must not be served stale
        elif self._worth_keeping(key, now):
            return entry  # never hide a good answer, fresh or still servable stale, behind a failure
        if p.denial_capacity > 0:
            self.denial.put(key, entry, self.budget)
            if cut:
                self.denial.index_cut(key)
            else:  # a failure may have replaced the NXDOMAIN that was indexed
                self.denial.unindex_cut(key)
        return entry

    def restore(self, key: bytes, msg: bytes, fresh: float, stale: float, payload: int) -> Entry | None:
        """Keep a handed-over answer (handover.py): `msg` as a client saw it, `fresh` and `stale` seconds left.

        Rebuilt as `store` builds an upstream's answer, under this zone's rules: never fresher than
        its own caps allow, never longer stale than its window. Served TTLs never exceed the fresh
        time left. Returns None when this zone would not keep it (not an answer or denial, nothing
        left); raises wire.Malformed when `msg` does not answer `key`.
        """
        scan, cut = _for_cut(key, scan=wire.scan_reply(msg, key[:-5], key[-5:-1]))
        kind = classify(scan)
        if kind is not Kind.SUCCESS and kind is not Kind.DENIAL:
            return None
        p = self.policy
        fresh = min(fresh, lifetime(kind, scan, p))
        stale = min(stale, p.stale_window)
        if fresh <= 0 and stale <= 0:
            return None
        if (p.success_capacity if kind is Kind.SUCCESS else p.denial_capacity) <= 0:
            return None
        now = self.clock()
        make = KeptTtlEntry if p.keepttl else Entry
        fresh, stale = max(fresh, 0.0), max(stale, 0.0)
        tally = self.tally(kind, scan.rcode, key[-5] << 8 | key[-4])
        do = bool(key[-1] & wire.KEY_DO)
        entry = make(scan, kind, do, payload, now, int(fresh), int(stale), max(1, int(fresh)), tally)
        entry.expires = now + fresh  # to the millisecond: what expired in transit is never fresh here
        return self._keep(key, entry, cut, now)

    def nxdomain_above(self, key: bytes, apex_len: int) -> Entry | None:
        """A fresh plain NXDOMAIN for the name of `key` or a name above it, below the apex (RFC 8020).

        `key` is a cache key (lowercased wire name, type, class, flag byte);
        `apex_len` is the wire length of the zone's apex, which is never cut:
        only names strictly below it are looked up. The entry must have been
        cached with the same class and DO/CD flags as the query. Miss path only.
        """
        index = self.denial.cut_index
        if not index:
            return None
        tail = key[-3:]
        name_end = len(key) - 5
        now = self.clock()
        i = 0
        while name_end - i > apex_len:
            found = index.get(key[i:name_end] + tail)
            if found is not None:
                entry = self.denial.peek(found)
                if entry is not None and now < entry.expires:
                    return entry
            i += key[i] + 1
        return None

    def _worth_keeping(self, key: bytes, now: float) -> bool:
        """An answer or denial for `key` that is fresh, or may still be served stale (RFC 8767)."""
        for lru in (self.success, self.denial):
            current = lru.peek(key)
            if current is not None and current.kind is not Kind.SERVFAIL and current.stale_until > now:
                return True
        return False

    def purge(self) -> int:
        """Drop entries past their stale window; return how many."""
        return sum(self.purge_steps(PURGE_STEP))

    def purge_steps(self, step: int) -> Iterator[int]:
        """Drop entries past their stale window, `step` entries looked at a time: how many each step dropped.

        The caller may run queries between steps (the agent's purge sweep yields to its loop):
        walking 80,000 entries at once stalled every query for 30-60 ms. Keys stored after the
        walk began are not looked at; each entry is judged when its step comes, so one stored
        again in between is judged as it is then.
        """
        for lru in (self.success, self.denial):
            keys = lru.keys()
            for start in range(0, len(keys), step):
                now = self.clock()
                dropped = 0
                for key in keys[start : start + step]:
                    entry = lru.peek(key)
                    if entry is not None and entry.stale_until <= now:
                        del lru[key]
                        dropped += 1
                yield dropped

    def flush(self, match: Callable[[bytes], bool] | None = None) -> int:
        """Remove every entry (or those whose key `match` accepts); return how many."""
        removed = 0
        for lru in (self.success, self.denial):
            if match is None:
                removed += len(lru)
                lru.clear()
                continue
            for key in [k for k in lru.keys() if match(k)]:
                del lru[key]
                removed += 1
        return removed

    def entries(self) -> Iterator[tuple[bytes, Entry]]:
        """Every (key, entry), success first; for stats and tests."""
        yield from self.success.peek_items()
        yield from self.denial.peek_items()

    @property
    def evictions(self) -> int:
        """Every eviction, capacity and memory alike (coredns_cache_evictions_total)."""
        return self.success.evictions + self.denial.evictions

    @property
    def memory_evictions(self) -> int:
        """Evictions made to keep every zone's caches within the memory budget."""
        return self.success.memory_evictions + self.denial.memory_evictions

    @property
    def bytes(self) -> int:
        """Memory held by the entries, their keys and their LRU slots (see `footprint`)."""
        return self.success.bytes + self.denial.bytes


class MemoryBudget:
    """One byte budget over the caches of every zone (`--cache-memory`); limit 0: none.

    A store that would take the total past the limit first evicts least
    recently used entries. From which cache: the denial cache holding the
    most bytes, across all zones; a success cache only once every denial
    cache is empty, again the one holding the most. Negative answers are
    short-lived and cheap to ask again, and a flood of made-up names makes
    only denials, so the flood cannot push good answers out while denials
    remain. Taking from the largest cache, not the storing zone's, leaves
    the small zones (the reverse zones, usually) their few entries and
    shrinks whichever zone grew.

    Bytes are the caches' own running totals (`slot_size`), so `used` is a
    sum over the zones, and a store with room to spare costs just that.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.caches: list[ZoneCache] = []

    def attach(self, caches: list[ZoneCache], limit: int | None = None) -> None:
        """Govern exactly `caches` (a reload's new set of zones), then enforce the (new) limit at once."""
        for cache in self.caches:
            cache.budget = None
        self.caches = list(caches)
        for cache in self.caches:
            cache.budget = self
        if limit is not None:
            self.limit = limit
        self.make_room(0)

    @property
    def used(self) -> int:
        """Bytes held by every governed cache (read on every store: a plain loop, no list or generator)."""
        used = 0
        for c in self.caches:
            used += c.success.bytes + c.denial.bytes
        return used

    def make_room(self, size: int) -> None:
        """Evict until `size` more bytes fit within the limit (or nothing is left to evict)."""
        if not self.limit:
            return
        used = self.used
        while used + size > self.limit:
            victim = self._victim()
            if victim is None:
                return
            used -= victim.evict_for_memory()

    def _victim(self) -> _CountingLRU | None:
        """The cache to evict from: the fullest denial cache, else the fullest success cache."""
        for side in ("denial", "success"):
            best: _CountingLRU | None = None
            for cache in self.caches:
                lru: _CountingLRU = getattr(cache, side)
                if len(lru) and (best is None or lru.bytes > best.bytes):
                    best = lru
            if best is not None:
                return best
        return None
