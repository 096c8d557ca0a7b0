"""The only hand-written DNS wire code: the per-packet fast path.

Everything here works on raw bytes so that a cache hit never builds a dnslib
object (dnslib needs tens of microseconds to parse a query; a hit must cost a
few dict and bytes operations). Each function is small, bounds-checked and
fuzzed (tests/test_wire_fuzz.py): malformed input raises `Malformed`, nothing
else. The one exception to "bytes only" is rare and on the miss path: an
upstream reply with records after its OPT is rebuilt by dnslib (`_without_opt`).

Layout reminders (RFC 1035 4.1): a 12-byte header (ID, two flag bytes, four
16-bit counts), the question (name, type, class), then resource records
(name, type, class, 32-bit TTL, 16-bit length, data).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace
from typing import Final, NamedTuple

HEADER_LEN: Final = 12
MIN_UDP_PAYLOAD: Final = 512  # RFC 1035: what a client without EDNS can take
MAX_NAME_LEN: Final = 255
TYPE_SOA: Final = 6
TYPE_OPT: Final = 41
TYPE_IXFR: Final = 251
TYPE_AXFR: Final = 252
TYPE_ANY: Final = 255
EDNS_VERSION: Final = 0
OPT_LEN: Final = 11  # an OPT record without options: root name, type, class, TTL, RDLEN

# Response codes (RFC 1035, RFC 6891 for the extended BADVERS).
NOERROR: Final = 0
FORMERR: Final = 1
SERVFAIL: Final = 2
NXDOMAIN: Final = 3
NOTIMP: Final = 4
REFUSED: Final = 5
BADVERS: Final = 16

# Bits of the second and third header bytes.
QR: Final = 0x80
AA: Final = 0x04
TC: Final = 0x02
RD: Final = 0x01
RA: Final = 0x80
AD: Final = 0x20
CD: Final = 0x10

# Cache-key flag byte: the DO bit (EDNS) and the CD bit both change what an
# upstream returns, so they are part of the key (as in CoreDNS).
KEY_DO: Final = 0x01
KEY_CD: Final = 0x02
_KEY_FLAG: Final = [bytes((i,)) for i in range(4)]


class Malformed(Exception):
    """A packet we cannot use.

    `rcode` is what a query deserves in reply (FORMERR, NOTIMP, BADVERS), or
    None when the packet must be dropped silently (too short to carry an ID,
    or a response where a query was expected).
    """

    def __init__(self, why: str, rcode: int | None = FORMERR, qend: int = 0) -> None:
        super().__init__(why)
        self.rcode = rcode
        self.qend = qend  # end of a readable question, 0 when there is none


class ZoneTransfer(Malformed):
    """An AXFR or IXFR query: a cache has no zone to transfer, so it is never forwarded.

    `rcode` is NOTIMP, right for UDP (where no transfer can happen); the
    caller answers REFUSED over TCP. `edns` and `do` let the refusal carry the
    OPT record an EDNS client expects (RFC 6891 7).
    """

    def __init__(self, qend: int, edns: int, do: bool) -> None:
        super().__init__("zone transfer (AXFR/IXFR) asked of a cache", NOTIMP, qend)
        self.edns = edns
        self.do = do


# Low bytes of the query types scan_query refuses (OPT, IXFR, AXFR); a high byte of 0 is checked apart.
_REFUSED_QTYPE: Final = tuple(t in (TYPE_OPT, TYPE_IXFR, TYPE_AXFR) for t in range(256))
_NO_RECORDS: Final = bytes(6)  # the answer, authority and additional counts of a bare question
_ONE_ADDITIONAL: Final = bytes((0, 0, 0, 0, 0, 1))  # ... of a question with one OPT


class Query(NamedTuple):
    """What the fast path needs from a client query (all offsets into it)."""

    key: bytes  # lowercased qname wire + qtype + qclass + flag byte
    lname: bytes  # lowercased qname in wire format
    qend: int  # offset just past the question
    payload: int  # UDP size the client can take
    edns: int  # 1 if the client sent OPT, else 0
    do: bool


_new_query = tuple.__new__


def skip_name(msg: bytes, i: int) -> int:
    """Return the offset just past the (possibly compressed) name at `i`."""
    n = len(msg)
    for _ in range(128):  # a name has at most 127 labels
        if i >= n:
            raise Malformed("name runs past the end")
        length = msg[i]
        if length == 0:
            return i + 1
        if length & 0xC0 == 0xC0:
            if i + 1 >= n:
                raise Malformed("cut compression pointer")
            return i + 2
        if length & 0xC0:
            raise Malformed("reserved label type")
        i += length + 1
    raise Malformed("name has too many labels")


def _scan_question(msg: bytes) -> int:
    """Return the end of the single question; the name must be uncompressed.

    Every query and every upstream reply goes through here: the label walk
    is kept to a few bytecodes a label, and running past the end is caught
    as the IndexError it raises rather than tested for at every label.
    """
    i = HEADER_LEN
    try:
        length = msg[i]
        while length:
            if length > 63:
                raise Malformed("compressed or invalid label in the question")
            i += length + 1
            length = msg[i]
    except IndexError:
        raise Malformed("question name runs past the end") from None
    i += 1
    if i - HEADER_LEN > MAX_NAME_LEN:
        raise Malformed("question name longer than 255 octets")
    if i + 4 > len(msg):
        raise Malformed("question has no type and class")
    return i + 4


# A record's fixed part after its owner name: type, class, TTL, RDATA length; and a TTL alone.
_rr_fixed = struct.Struct("!HHIH").unpack_from
_u32 = struct.Struct("!I").unpack_from


def _rr(msg: bytes, i: int) -> tuple[int, int, int, int]:
    """Parse the record at `i`: (type, offset of its TTL, rdata start, rdata end).

    The owners of nearly every record of a reply, a compression pointer (to the question) or the root
    (the OPT record), are passed over here without a call to `skip_name`; the header check below
    covers a pointer's second byte.
    """
    n = len(msg)
    if i >= n:
        raise Malformed("name runs past the end")
    c = msg[i]
    j = i + 2 if c >= 0xC0 else i + 1 if c == 0 else skip_name(msg, i)
    if j + 10 > n:
        raise Malformed("record header runs past the end")
    rtype, _rclass, _ttl, rdlen = _rr_fixed(msg, j)
    rd_end = j + 10 + rdlen
    if rd_end > n:
        raise Malformed("record data runs past the end")
    return rtype, j + 4, j + 10, rd_end


def record_end(msg: bytes, i: int) -> int:
    """The offset just past the resource record at `i` (for truncating at record boundaries)."""
    return _rr(msg, i)[3]


def _find_opt(msg: bytes, i: int, an: int, ns: int, ar: int) -> int:
    """Walk a query's records: the offset of its OPT record, or -1 when it has none.

    Malformed (FORMERR): an OPT outside the additional section, two OPTs or
    one not owned by the root (RFC 6891 6.1.1), a record running past the
    end, or bytes left over after the last record.
    """
    for _ in range(an + ns):
        rtype, _ttl, _rd, i = _rr(msg, i)
        if rtype == TYPE_OPT:
            raise Malformed("OPT record outside the additional section")
    found = -1
    for _ in range(ar):
        rtype, _ttl, _rd, end = _rr(msg, i)
        if rtype == TYPE_OPT:
            if found >= 0 or msg[i] != 0:
                raise Malformed("more than one OPT, or OPT not at the root")
            found = i
        i = end
    if i != len(msg):
        raise Malformed("trailing bytes after the last record")
    return found


def scan_query(data: bytes) -> Query:
    """Read what a client asked, straight from the bytes.

    The common shapes (nothing after the question, or one OPT record that
    ends the message) take a few index tests; anything else walks every
    record (`_find_opt`). Qtype OPT is FORMERR; AXFR/IXFR raise ZoneTransfer.
    """
    n = len(data)
    if n < HEADER_LEN:
        raise Malformed("shorter than a DNS header", None)
    if data[2] & QR:
        raise Malformed("a response, not a query", None)
    if data[2] & 0x78:
        raise Malformed("opcode is not QUERY", NOTIMP)
    if data[4] or data[5] != 1:
        raise Malformed("question count is not 1")
    qend = _scan_question(data)
    lname = data[HEADER_LEN : qend - 4].lower()
    flag = KEY_CD if data[3] & CD else 0
    payload = MIN_UDP_PAYLOAD
    edns = 0
    if qend == n:  # nothing after the question: every count must say so
        if data[6:12] != _NO_RECORDS:
            raise Malformed("record counts but no records", FORMERR, qend)
    else:
        o = qend
        if not (
            # Common shape: the OPT is the only record after the question, and ends the message.
            data[6:12] == _ONE_ADDITIONAL
            and o + 11 <= n
            and data[o] == 0
            and data[o + 1] == 0
            and data[o + 2] == TYPE_OPT
            and o + 11 + (data[o + 9] << 8 | data[o + 10]) == n
        ):
            try:
                o = _find_opt(
                    data, qend, data[6] << 8 | data[7], data[8] << 8 | data[9], data[10] << 8 | data[11]
                )
            except Malformed as exc:
                exc.qend = qend
                raise
        if o >= 0:
            if data[o + 6] != EDNS_VERSION:
                raise Malformed("unsupported EDNS version", BADVERS, qend)
            edns = 1
            size = data[o + 3] << 8 | data[o + 4]
            if size > payload:
                payload = size
            if data[o + 7] & 0x80:
                flag |= KEY_DO
    if _REFUSED_QTYPE[data[qend - 3]] and not data[qend - 4]:
        if data[qend - 3] == TYPE_OPT:
            raise Malformed("qtype OPT is not a question (RFC 6891 6.1.1)", FORMERR, qend)
        raise ZoneTransfer(qend, edns, flag & KEY_DO == KEY_DO)
    # tuple.__new__ skips NamedTuple's Python-level __new__: a third of this function's cost.
    key = lname + data[qend - 4 : qend] + _KEY_FLAG[flag]
    return _new_query(Query, (key, lname, qend, payload, edns, flag & KEY_DO == KEY_DO))


def opt_record(payload: int, do: bool, ext_rcode: int = 0) -> bytes:
    """An OPT pseudo-record advertising `payload` (RFC 6891 6.1.2)."""
    return bytes(
        (0, 0, TYPE_OPT, payload >> 8, payload & 0xFF, ext_rcode, EDNS_VERSION, 0x80 if do else 0, 0, 0, 0)
    )


def make_query(qid: int, question: bytes, do: bool, cd: bool, payload: int, edns: bool = True) -> bytes:
    """An upstream query: RD set, the client's DO and CD bits, our own OPT.

    `edns` False leaves the OPT out (and so DO): the retry after an upstream
    answered FORMERR to EDNS (RFC 6891 7).
    """
    head = bytes((qid >> 8, qid & 0xFF, RD, CD if cd else 0, 0, 1, 0, 0, 0, 0, 0, 1 if edns else 0))
    return head + question + opt_record(payload, do) if edns else head + question


def error_reply(data: bytes, rcode: int, qend: int, edns: int, do: bool, payload: int) -> bytes:
    """A reply with no records carrying `rcode`, the client's ID and question.

    `qend` 0 means the question was unreadable; the reply then has none.
    Extended rcodes (BADVERS) go into the OPT record, so one is always added
    for them.
    """
    flags2 = RA | (rcode & 0x0F) | (data[3] & CD)
    if rcode > 15:
        edns = 1
    head = bytes((data[0], data[1], QR | (data[2] & (RD | 0x78)), flags2, 0, 1 if qend else 0, 0, 0, 0, 0, 0, edns))
    opt = opt_record(payload, do, rcode >> 4) if edns else b""
    # Not data[HEADER_LEN:0]: compiled, a slice whose end is before its start raises (docs/performance.md, "Compiled modules").
    return head + data[HEADER_LEN:qend] + opt if qend else head + opt


@dataclass(slots=True)
class ReplyScan:
    """An upstream reply taken apart for caching (built on a miss only)."""

    rcode: int  # including the extended bits from OPT
    flags: int  # the two flag bytes as one integer
    answers: int
    authority: int
    additional: int  # without the OPT record
    body: bytes  # everything after the question, OPT removed
    ttl_offsets: list[int]  # offsets of every TTL field in `body`
    ttls: list[int]  # their values; a set top bit reads as 0 (RFC 2181 8)
    soa_ttl: int | None  # first SOA in the authority section, for RFC 2308
    soa_minimum: int | None
    has_type: bool = True  # the answer section holds the asked type (False: a bare CNAME chain)

    # Written out rather than generated: compiled, the dataclass's generated __init__ would run as Python,
    # once a miss. The dataclass still gives eq, repr and replace.
    def __init__(
        self,
        rcode: int,
        flags: int,
        answers: int,
        authority: int,
        additional: int,
        body: bytes,
        ttl_offsets: list[int],
        ttls: list[int],
        soa_ttl: int | None,
        soa_minimum: int | None,
        has_type: bool = True,
    ) -> None:
        self.rcode = rcode
        self.flags = flags
        self.answers = answers
        self.authority = authority
        self.additional = additional
        self.body = body
        self.ttl_offsets = ttl_offsets
        self.ttls = ttls
        self.soa_ttl = soa_ttl
        self.soa_minimum = soa_minimum
        self.has_type = has_type


# Error rcodes an upstream may send without echoing the question (RFC 6891 7, RFC 1035 4.1.1).
_QUESTIONLESS_RCODES: Final = (FORMERR, SERVFAIL, NOTIMP)


def scan_reply(msg: bytes, lname: bytes, qtc: bytes) -> ReplyScan:
    """Take an upstream reply apart; raise Malformed if it does not answer us.

    `lname` and `qtc` are the lowercased name and the type+class we asked:
    `lname` a well-formed uncompressed name in wire format (as `scan_query`
    gives it), so a reply whose question is byte for byte the one asked
    (the common case) is matched without walking its labels.
    The OPT record is removed from the body (each client gets its own). It
    may sit anywhere in the additional section (RFC 6891 6.1.1); when records
    follow it, the rare message is rebuilt without it (`_without_opt`).
    FORMERR, SERVFAIL and NOTIMP are accepted without a question (the
    caller matched the ID): such a reply scans as that rcode and no records.
    """
    n = len(msg)
    if n < HEADER_LEN:
        raise Malformed("reply shorter than a header")
    if not msg[2] & QR or msg[2] & 0x78:
        raise Malformed("not a QUERY response")
    if not (msg[4] or msg[5]) and msg[3] & 0x0F in _QUESTIONLESS_RCODES:
        return _questionless(msg)
    if msg[4] or msg[5] != 1:
        raise Malformed("reply question count is not 1")
    qend = HEADER_LEN + len(lname) + 4
    if not (msg.startswith(lname, HEADER_LEN) and msg.startswith(qtc, qend - 4)):
        # Another spelling (0x20 case), or another question: read the name, compare it lowercased.
        qend = _scan_question(msg)
        if msg[qend - 4 : qend] != qtc or msg[HEADER_LEN : qend - 4].lower() != lname:
            raise Malformed("reply is for another question")
    an = msg[6] << 8 | msg[7]
    ns = msg[8] << 8 | msg[9]
    ar = msg[10] << 8 | msg[11]
    qtype = qtc[0] << 8 | qtc[1]
    has_type = qtype == TYPE_ANY and an > 0
    offsets: list[int] = []
    ttls: list[int] = []
    soa_ttl = soa_min = None
    opt_at = opt_end = -1
    ext = 0
    i = qend
    for index in range(an + ns + ar):
        start = i
        rtype, ttl_at, rd_start, i = _rr(msg, i)
        if rtype == TYPE_OPT:
            if index < an + ns or opt_at >= 0:
                raise Malformed("misplaced or repeated OPT in reply")
            opt_at, opt_end = start, i
            ext = msg[ttl_at] << 4
            continue
        if index < an and rtype == qtype:
            has_type = True
        ttl = _u32(msg, ttl_at)[0]
        if ttl & 0x80000000:
            ttl = 0
        offsets.append(ttl_at - qend)
        ttls.append(ttl)
        if rtype == TYPE_SOA and soa_ttl is None and an <= index < an + ns:
            if i - rd_start < 22:
                raise Malformed("SOA record too short")
            soa_ttl = ttl
            soa_min = int.from_bytes(msg[i - 4 : i], "big")
    if 0 <= opt_end < i:
        return _without_opt(msg, lname, qtc, ext)
    end = opt_at if opt_at >= 0 else i
    # Positional, in field order (rcode, flags, counts, body, TTL offsets and values, SOA, has_type):
    # eleven keywords made the construction three times as slow, a tenth of this function.
    return ReplyScan(
        ext | (msg[3] & 0x0F),
        msg[2] << 8 | msg[3],
        an,
        ns,
        ar - (1 if opt_at >= 0 else 0),
        msg[qend:end],
        offsets,
        ttls,
        soa_ttl,
        soa_min,
        has_type,
    )


def _questionless(msg: bytes) -> ReplyScan:
    """A FORMERR/SERVFAIL/NOTIMP reply without a question: its rcode, no records.

    Whatever records it carries are checked for shape but dropped (an error
    says nothing cacheable); an OPT among them contributes its extended rcode
    bits, and a reply whose full rcode is then another one is not accepted.
    """
    ext = 0
    i = HEADER_LEN
    for _ in range((msg[6] << 8 | msg[7]) + (msg[8] << 8 | msg[9]) + (msg[10] << 8 | msg[11])):
        rtype, ttl_at, _rd, i = _rr(msg, i)
        if rtype == TYPE_OPT:
            ext = msg[ttl_at] << 4
    if ext:
        raise Malformed("question-less reply with an extended rcode")
    return ReplyScan(msg[3] & 0x0F, msg[2] << 8 | msg[3], 0, 0, 0, b"", [], [], None, None, False)


def _without_opt(msg: bytes, lname: bytes, qtc: bytes, ext: int) -> ReplyScan:
    """scan_reply of `msg` rebuilt by dnslib without its OPT record, which records follow.

    Cutting the OPT out of the bytes would move the records after it, and
    their names (owners and names inside RDATA) may be compressed pointers
    to each other; which RDATA hold names depends on the type. Re-encoding
    the whole message is simpler and safe, and this shape is rare enough
    that the miss path can afford dnslib for it. `ext` is the OPT's
    extended rcode, which the rebuilt message has lost.
    """
    from dnslib import DNSRecord  # here, not at the top: nothing on the hit path needs dnslib

    try:
        rec = DNSRecord.parse(msg)
        rec.ar = [rr for rr in rec.ar if rr.rtype != TYPE_OPT]
        rebuilt = bytes(rec.pack())
    except Exception as exc:  # dnslib raises many kinds (DNSError, UnicodeDecodeError, struct.error...)
        raise Malformed(f"cannot rebuild a reply without its OPT record: {exc}") from None
    scan = scan_reply(rebuilt, lname, qtc)
    scan.rcode |= ext
    return scan


def with_ttls(body: bytes, offsets: list[int], ttls: list[int], elapsed: int) -> bytes:
    """`body` with each TTL lowered by `elapsed` seconds, never below 0."""
    out = bytearray(body)
    for off, ttl in zip(offsets, ttls):
        t = ttl - elapsed
        if t < 0:
            t = 0
        out[off : off + 4] = t.to_bytes(4, "big")
    return bytes(out)


# One TTL field of a cached body, packed: its offset (16 bits: a body is under 64 KiB) and its TTL.
_TTL_FIELD: Final = struct.Struct("!HI")
TTL_FIELD_LEN: Final = _TTL_FIELD.size


def pack_ttls(offsets: list[int], ttls: list[int]) -> bytes:
    """Offsets and TTLs as one bytes object, 6 bytes a record: what a cache entry keeps (see cache.Entry)."""
    if len(ttls) == 1:  # a single answer, the commonest reply: no list, no join
        return _TTL_FIELD.pack(offsets[0], ttls[0])
    return b"".join([_TTL_FIELD.pack(off, ttl) for off, ttl in zip(offsets, ttls)])


def with_packed_ttls(body: bytes, packed: bytes, elapsed: int, fixed: int = -1) -> bytes:
    """`body` with each packed TTL lowered by `elapsed` seconds (never below 0), or all set to `fixed` (>= 0)."""
    out = bytearray(body)
    for off, ttl in _TTL_FIELD.iter_unpack(packed):
        t = fixed if fixed >= 0 else ttl - elapsed
        if t < 0:
            t = 0
        out[off : off + 4] = t.to_bytes(4, "big")
    return bytes(out)


# Types whose RDATA may carry compressed names (RFC 1035 3.3; RFC 3597 4 forbids it for later types),
# mapped to the bytes of fixed data before their first name and how many names follow.
_COMPRESSIBLE_RDATA: Final = {2: (0, 1), 3: (0, 1), 4: (0, 1), 5: (0, 1), 6: (0, 2), 7: (0, 1), 8: (0, 1),
                       9: (0, 1), 12: (0, 1), 14: (0, 2), 15: (2, 1)}  # fmt: skip


def _expand_name(msg: bytes, i: int) -> tuple[bytes, int]:
    """The name at `i` with every compression pointer followed, and the offset just past it in place."""
    out = bytearray()
    end = -1
    for _ in range(256):  # bounds pointer loops
        if i >= len(msg):
            raise Malformed("name runs past the end")
        length = msg[i]
        if length & 0xC0 == 0xC0:
            if i + 1 >= len(msg):
                raise Malformed("cut compression pointer")
            if end < 0:
                end = i + 2
            i = (length & 0x3F) << 8 | msg[i + 1]
            continue
        out += msg[i : i + length + 1]
        if length == 0:
            return bytes(out), (end if end >= 0 else i + 1)
        i += length + 1
    raise Malformed("compression pointer loop")


def uncompressed(scan: ReplyScan, lname: bytes, qtc: bytes) -> ReplyScan:
    """`scan` with every name in its body written out: a body that reads the same after any question.

    Compression pointers are absolute offsets into the upstream message, so a
    compressed body only fits after the question it came with. The RFC 8020
    cut replays a body after other questions; the question is taken as
    `lname` (lowercase), which is what the reply's question matched.
    """
    qend = HEADER_LEN + len(lname) + len(qtc)
    msg = bytes(HEADER_LEN) + lname + qtc + scan.body
    out = bytearray()
    offsets: list[int] = []
    i = qend
    for _ in range(scan.answers + scan.authority + scan.additional):
        owner = _expand_name(msg, i)[0]
        rtype, ttl_at, rd_start, rd_end = _rr(msg, i)
        j = ttl_at - 4  # the record's type field, just past its owner name
        rdata = msg[rd_start:rd_end]
        shape = _COMPRESSIBLE_RDATA.get(rtype)
        if shape is not None:
            fixed, names = shape
            k = rd_start + fixed
            parts = [msg[rd_start:k]]
            for _n in range(names):
                name, k = _expand_name(msg, k)
                parts.append(name)
            if k > rd_end:  # (and msg[k:rd_end] would raise, compiled: docs/performance.md, "Compiled modules")
                raise Malformed("a name in a record's data runs past the record")
            rdata = b"".join(parts) + msg[k:rd_end]
        out += owner + msg[j : j + 4]
        offsets.append(len(out))
        out += msg[j + 4 : j + 8] + len(rdata).to_bytes(2, "big") + rdata
        i = rd_end
    return replace(scan, body=bytes(out), ttl_offsets=offsets)


def reply_id(msg: bytes) -> int:
    """The 16-bit ID of a message (-1, never a real ID, when too short to have one)."""
    return msg[0] << 8 | msg[1] if len(msg) >= 2 else -1
