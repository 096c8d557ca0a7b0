"""The cache dump: a live agent's answers with their remaining lifetimes, for a new agent or a file.

Used at a rollout (the new agent asks the live one over the control socket before
it serves, see server.py) and by `nodecache dump FILE` / `nodecache load FILE`.

Format, version 1: a header, then a zlib stream of records.
    header:  MAGIC, version (1 byte), wall-clock time of the dump (float64, seconds since the epoch)
    record:  zone (1-byte length + wire name), key (2-byte length + cache key),
             reply (2-byte length + the answer as a client would get it now, ID 0),
             fresh and stale milliseconds left (4 bytes each)
Lifetimes are what is left at dump time; the loader takes off the time since then by
the wall clock, because monotonic clocks of two processes need not agree. So an
answer that expired in transit is loaded stale or not at all, never fresh.

A dump holds at most `limit` bytes of records; the rest are left out and counted.
Loading checks everything before keeping anything: a corrupt or foreign dump
raises HandoverError and changes nothing. Answers of zones the loading agent
does not have are skipped and counted; the memory budget applies as on a miss.
"""

from __future__ import annotations

import struct
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from nodecache import wire
from nodecache.cache import Kind, ZoneCache
from nodecache.errors import HandoverError
from nodecache.names import name_to_wire

MAGIC = b"NCCACHE"
VERSION = 1
_HEADER = struct.Struct("!7sBd")
_LIFETIMES = struct.Struct("!II")
_LEN16 = struct.Struct("!H")
MS = 1000.0
MAX_LIFETIME_MS = 0xFFFFFFFF
# The question a stored answer is replayed to when dumped: ID 0, RD clear, one question, no OPT.
_DUMP_HEADER = b"\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00"
TCP_LIMIT = 65535  # a dumped reply is never truncated


@dataclass
class Counts:
    """What one dump or load did, for the operator (`nodecache stats`, the CLI, the log)."""

    dumped: int = 0
    left_out: int = 0  # over the size limit
    loaded: int = 0
    expired: int = 0  # nothing left after the time in transit
    no_zone: int = 0  # a zone the loading agent does not have
    not_kept: int = 0  # the loading zone's rules do not keep it (caching off, not an answer)
    failed: int = 0  # startup handovers that brought nothing (no live agent, hung, bad dump)
    bytes: int = 0

    def add(self, other: Counts) -> None:
        for name, value in vars(other).items():
            setattr(self, name, getattr(self, name) + value)


@dataclass(frozen=True)
class Record:
    zone: bytes  # wire name of the zone it was cached in
    key: bytes
    reply: bytes
    fresh: float  # seconds left at dump time
    stale: float  # seconds of serve-stale after that


@dataclass
class Dump:
    dumped_at: float  # wall clock
    records: list[Record] = field(default_factory=list)


def dump(zones: Iterable[tuple[str, ZoneCache]], limit: int, now: float, wall: float | None = None) -> tuple[bytes, Counts]:
    """Every fresh or stale-servable answer and denial of `zones`, as dump bytes of at most about `limit`."""
    counts = Counts()
    body = bytearray()
    for name, cache in zones:
        zwire = name_to_wire(name)
        for key, entry in cache.entries():
            if entry.kind is not Kind.SUCCESS and entry.kind is not Kind.DENIAL or entry.stale_until <= now:
                continue
            question = key[:-1]
            reply = entry.reply(_DUMP_HEADER + question, 12 + len(question), 0, TCP_LIMIT, min(now, entry.expires))
            fresh = max(entry.expires - now, 0.0)
            stale = entry.stale_until - max(entry.expires, now)
            record = (bytes((len(zwire),)) + zwire + _LEN16.pack(len(key)) + key + _LEN16.pack(len(reply)) + reply
                      + _LIFETIMES.pack(_ms(fresh), _ms(stale)))  # fmt: skip
            if len(body) + len(record) > limit:
                counts.left_out += 1
                continue
            body += record
            counts.dumped += 1
    data = _HEADER.pack(MAGIC, VERSION, time.time() if wall is None else wall) + zlib.compress(bytes(body), 1)
    counts.bytes = len(data)
    return data, counts


def _ms(seconds: float) -> int:
    return min(int(seconds * MS), MAX_LIFETIME_MS)


def parse(data: bytes, max_size: int) -> Dump:
    """The records of a dump, every one checked for shape; HandoverError when it is not a whole dump of ours."""
    if len(data) < _HEADER.size:
        raise HandoverError("not a nodecache cache dump (too short); give a file written by `nodecache dump`")
    magic, version, dumped_at = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise HandoverError("not a nodecache cache dump (wrong magic); give a file written by `nodecache dump`")
    if version != VERSION:
        raise HandoverError(f"cache dump format version {version} is not the {VERSION} this agent reads; "
                            "dump and load with the same nodecache version")  # fmt: skip
    try:
        z = zlib.decompressobj()
        body = z.decompress(data[_HEADER.size :], max_size + 1)
        if len(body) > max_size or z.unconsumed_tail:
            raise HandoverError(f"cache dump holds more than {max_size} bytes of answers; refusing it whole")
        if not z.eof:
            raise HandoverError("cache dump is cut short; dump again")
    except zlib.error as exc:
        raise HandoverError(f"cache dump is corrupt ({exc}); dump again") from None
    dump = Dump(dumped_at)
    i, n = 0, len(body)
    try:
        while i < n:
            zlen = body[i]
            zone = body[i + 1 : i + 1 + zlen]
            i += 1 + zlen
            key, i = _chunk(body, i)
            reply, i = _chunk(body, i)
            fresh, stale = _LIFETIMES.unpack_from(body, i)
            i += _LIFETIMES.size
            if len(zone) != zlen or len(key) < 6 or len(reply) < 12:
                raise HandoverError("cache dump record is cut short; dump again")
            dump.records.append(Record(zone, key, reply, fresh / MS, stale / MS))
    except (IndexError, struct.error):
        raise HandoverError("cache dump record is cut short; dump again") from None
    return dump


def _chunk(body: bytes, i: int) -> tuple[bytes, int]:
    (length,) = _LEN16.unpack_from(body, i)
    i += _LEN16.size
    if i + length > len(body):
        raise HandoverError("cache dump record is cut short; dump again")
    return body[i : i + length], i + length


def load(
    dump: Dump, zone_cache: Callable[[bytes], ZoneCache | None], payload: int, wall: float | None = None
) -> Counts:
    """Keep the records of `dump` in the caches `zone_cache` finds by zone wire name.

    Every reply is checked first (it must answer its key); one that does not raises
    HandoverError before anything is kept.
    """
    transit = max((time.time() if wall is None else wall) - dump.dumped_at, 0.0)
    for r in dump.records:
        try:
            wire.scan_reply(r.reply, r.key[:-5], r.key[-5:-1])
        except wire.Malformed as exc:
            raise HandoverError(f"cache dump holds an unreadable answer ({exc}); nothing was loaded") from None
    counts = Counts()
    for r in dump.records:
        cache = zone_cache(r.zone)
        if cache is None:
            counts.no_zone += 1
            continue
        end = r.fresh + r.stale - transit
        if end <= 0:
            counts.expired += 1
            continue
        fresh = max(r.fresh - transit, 0.0)
        entry = cache.restore(r.key, _lowered(r.reply, r.key, transit), fresh, end - fresh, payload)
        if entry is None:
            counts.not_kept += 1
        else:
            counts.loaded += 1
    return counts


def _lowered(reply: bytes, key: bytes, transit: float) -> bytes:
    """`reply` with its TTLs lowered by the whole seconds in transit (rounded up), never below 0."""
    seconds = int(transit) + (transit > int(transit))
    if not seconds:
        return reply
    scan = wire.scan_reply(reply, key[:-5], key[-5:-1])
    qend = len(reply) - len(scan.body)
    return reply[:qend] + wire.with_ttls(scan.body, scan.ttl_offsets, scan.ttls, seconds)
