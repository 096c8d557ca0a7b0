"""DNS messages built and read with dnslib, the independent oracle of the wire and cache tests.

Every expectation in tests/test_wire*.py and tests/test_cache.py comes from here or from the
RFCs, never from nodecache's own wire code: messages are built with dnslib, fed to nodecache
as bytes, and what comes back is parsed with dnslib again.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence

from dnslib import CLASS, CNAME, EDNS0, QTYPE, RR, SOA, A, DNSHeader, DNSQuestion, DNSRecord

HEADER_LEN = 12
OPT = 41


def qtype_code(qtype: str | int) -> int:
    """A query type as its number ("AAAA" -> 28)."""
    return qtype if isinstance(qtype, int) else int(getattr(QTYPE, qtype))


def question_bytes(name: str, qtype: str | int = "A", qclass: int = CLASS.IN) -> bytes:
    """The question section dnslib writes for (name, type, class), case kept."""
    rec = DNSRecord(DNSHeader(id=0), q=DNSQuestion(name, qtype_code(qtype), qclass))
    return bytes(rec.pack())[HEADER_LEN:]


def name_wire(name: str) -> bytes:
    """`name` in uncompressed wire format, case kept."""
    return question_bytes(name)[:-4]


def lname_qtc(name: str, qtype: str | int = "A", qclass: int = CLASS.IN) -> tuple[bytes, bytes]:
    """What scan_reply wants: the lowercased wire name and the type+class bytes."""
    return name_wire(name.lower()), struct.pack("!HH", qtype_code(qtype), qclass)


def query(
    name: str = "www.example.com.",
    qtype: str | int = "A",
    *,
    qid: int = 0x1234,
    rd: bool = True,
    cd: bool = False,
    qclass: int = CLASS.IN,
    edns: int | None = None,
    do: bool = False,
    version: int = 0,
) -> bytes:
    """A client query; `edns` is the advertised UDP size (None: no OPT record)."""
    rec = DNSRecord(DNSHeader(id=qid, rd=int(rd), cd=int(cd)), q=DNSQuestion(name, qtype_code(qtype), qclass))
    if edns is not None:
        rec.add_ar(EDNS0(udp_len=edns, flags="do" if do else "", version=version))
    return bytes(rec.pack())


def a(name: str, ttl: int, ip: str = "192.0.2.1") -> RR:
    """An A record."""
    return RR(name, QTYPE.A, rdata=A(ip), ttl=ttl)


def cname(name: str, target: str, ttl: int) -> RR:
    """A CNAME record."""
    return RR(name, QTYPE.CNAME, rdata=CNAME(target), ttl=ttl)


def soa(zone: str, ttl: int, minimum: int) -> RR:
    """An SOA record for `zone` whose MINIMUM field (RFC 2308 negative TTL) is `minimum`."""
    rdata = SOA(f"ns1.{zone}", f"hostmaster.{zone}", (2024010101, 7200, 3600, 1209600, minimum))
    return RR(zone, QTYPE.SOA, rdata=rdata, ttl=ttl)


def opt(payload: int = 1232, do: bool = False, ext_rcode: int = 0, version: int = 0) -> RR:
    """An OPT pseudo-record."""
    return EDNS0(udp_len=payload, flags="do" if do else "", ext_rcode=ext_rcode, version=version)


def reply(
    name: str = "www.example.com.",
    qtype: str | int = "A",
    *,
    qid: int = 0x1234,
    rcode: int = 0,
    qclass: int = CLASS.IN,
    answers: Iterable[RR] = (),
    authority: Iterable[RR] = (),
    additional: Iterable[RR] = (),
    aa: bool = False,
    tc: bool = False,
    rd: bool = True,
    ra: bool = True,
    ad: bool = False,
    cd: bool = False,
) -> bytes:
    """An upstream reply; `additional` is written in the order given (OPT included)."""
    header = DNSHeader(
        id=qid, qr=1, aa=int(aa), tc=int(tc), rd=int(rd), ra=int(ra), ad=int(ad), cd=int(cd), rcode=rcode & 0x0F
    )
    rec = DNSRecord(header, q=DNSQuestion(name, qtype_code(qtype), qclass))
    for rr in answers:
        rec.add_answer(rr)
    for rr in authority:
        rec.add_auth(rr)
    for rr in additional:
        rec.add_ar(rr)
    return bytes(rec.pack())


def parse(msg: bytes) -> DNSRecord:
    """dnslib's reading of `msg`."""
    return DNSRecord.parse(msg)


def opt_of(rec: DNSRecord) -> RR | None:
    """The OPT record of a parsed message, if any."""
    found = [rr for rr in rec.ar if rr.rtype == OPT]
    assert len(found) <= 1, "more than one OPT record"
    return found[0] if found else None


def records(rec: DNSRecord) -> list[RR]:
    """Every real record of a parsed message in wire order (answer, authority, additional), OPT left out."""
    return [rr for rr in [*rec.rr, *rec.auth, *rec.ar] if rr.rtype != OPT]


def ttls_of(rec: DNSRecord) -> list[int]:
    """The TTL of every real record, in wire order."""
    return [rr.ttl for rr in records(rec)]


def full_rcode(rec: DNSRecord) -> int:
    """The 12-bit rcode: header bits plus the OPT's extended bits (RFC 6891 6.1.3)."""
    o = opt_of(rec)
    return ((o.edns_rcode << 4) if o is not None else 0) | rec.header.rcode


def with_header(msg: bytes, *, flags1: int | None = None, flags2: int | None = None, counts: Sequence[int] | None = None) -> bytes:  # noqa: E501
    """`msg` with some header fields overwritten (for packets dnslib will not build)."""
    out = bytearray(msg)
    if flags1 is not None:
        out[2] = flags1
    if flags2 is not None:
        out[3] = flags2
    if counts is not None:
        out[4:12] = struct.pack("!HHHH", *counts)
    return bytes(out)
