"""Property tests for nodecache.wire: any bytes in, `Malformed` or a sound result out.

dnslib builds the valid messages and reads back what nodecache writes. Every test keeps its
example count modest and has no deadline, so the whole file runs in seconds.
"""

from __future__ import annotations

import string
import struct

from dnslib import CLASS, NS, QTYPE, RR, TXT, DNSBuffer, DNSHeader, DNSQuestion, DNSRecord
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from nodecache import wire
from nodecache.cache import ZoneCache
from nodecache.config import CachePolicy
from tests.dnsmsg import a, cname, full_rcode, lname_qtc, opt, opt_of, parse, query, question_bytes, reply, soa

FUZZ = settings(max_examples=600, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
SMALL = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# Host-name-like labels in both cases, so 0x20 randomisation is covered.
LABEL_CHARS = string.ascii_letters + string.digits + "-_"
labels = st.text(alphabet=LABEL_CHARS, min_size=1, max_size=30)
names = st.lists(labels, min_size=0, max_size=6).map(lambda ls: ".".join(ls) + "." if ls else ".")
# OPT, IXFR and AXFR are refused by scan_query (FORMERR / ZoneTransfer); every other type is a query.
qtypes = st.integers(min_value=1, max_value=65535).filter(lambda t: t not in (QTYPE.OPT, QTYPE.IXFR, QTYPE.AXFR))
qids = st.integers(min_value=0, max_value=0xFFFF)
payloads = st.none() | st.integers(min_value=0, max_value=0xFFFF)


def only_malformed(fn: object, *args: object) -> object:
    """Call `fn`; a Malformed is fine (returned), any other exception fails the test."""
    try:
        return fn(*args)  # type: ignore[operator]
    except wire.Malformed as exc:
        assert exc.rcode in (None, wire.FORMERR, wire.NOTIMP, wire.BADVERS)
        return exc


def valid_query(name: str = "www.Example.com.", qtype: int = 1, edns: int | None = 1232) -> bytes:
    """A query dnslib built, carrying an OPT record when `edns` is given."""
    return query(name, qtype, edns=edns, do=True)


def valid_reply(opt_at: int = 1) -> bytes:
    """An upstream reply exercising every section, compression and OPT (at `opt_at` among the additional)."""
    extra = [a("ns1.example.com.", 20), a("ns2.example.com.", 25, "192.0.2.2")]
    return reply(
        "www.example.com.",
        answers=[
            cname("www.example.com.", "web.example.com.", 30),
            a("web.example.com.", 10),
        ],
        authority=[soa("example.com.", 60, 5)],
        additional=[*extra[:opt_at], opt(4096, do=True), *extra[opt_at:]],
    )


LNAME = question_bytes("www.example.com.")[:-4]
QTC = struct.pack("!HH", 1, 1)


@st.composite
def mutated(draw: st.DrawFn, msg: bytes) -> bytes:
    """`msg` with a few bit flips, byte overwrites, a truncation or random bytes appended."""
    data = bytearray(msg)
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["flip", "byte", "cut", "extend", "insert"]))
        if op == "flip" and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte" and data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[draw(st.integers(0, len(data))) :]
        elif op == "extend":
            data += draw(st.binary(max_size=40))
        elif op == "insert":
            i = draw(st.integers(0, len(data)))
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


# ---------------------------------------------------------------------------- robustness


@FUZZ
@given(st.binary(max_size=600))
def test_scan_query_arbitrary_bytes(data: bytes) -> None:
    """Arbitrary bytes: a Query or Malformed, never another exception."""
    only_malformed(wire.scan_query, data)


@FUZZ
@given(st.binary(max_size=300), st.integers(0, 3), st.integers(0, 3), st.integers(0, 3))
def test_scan_query_valid_question_then_garbage(tail: bytes, an: int, ns: int, ar: int) -> None:
    """A valid header and question followed by garbage records: the record walk stays in bounds."""
    head = with_counts(valid_query(edns=None), (1, an, ns, ar))
    only_malformed(wire.scan_query, head + tail)


def with_counts(msg: bytes, counts: tuple[int, int, int, int]) -> bytes:
    """`msg` with its four section counts replaced."""
    return msg[:4] + struct.pack("!HHHH", *counts) + msg[12:]


@FUZZ
@given(mutated(valid_query()) | mutated(valid_query(edns=None)) | mutated(valid_query(".", 2, 512)))
def test_scan_query_mutated_queries(data: bytes) -> None:
    """Mutated queries raise Malformed or scan; a rejection with an rcode gets a reply dnslib can parse."""
    result = only_malformed(wire.scan_query, data)
    if isinstance(result, wire.Malformed) and result.rcode is not None:
        out = wire.error_reply(data, result.rcode, result.qend, 0, False, 1232)
        # dnslib refuses labels that are not UTF-8 (RFC 2181 11 allows any octet), so its
        # header parser is the oracle for every reply and the full parser where it can read.
        header = DNSHeader.parse(DNSBuffer(out))
        assert header.id == data[0] << 8 | data[1]
        assert header.qr == 1 and header.q == (1 if result.qend else 0)
        assert out[12 : 12 + max(result.qend - 12, 0)] == data[12 : result.qend]
        try:
            data[12 : result.qend].decode()
        except UnicodeDecodeError:
            return
        assert full_rcode(parse(out)) == result.rcode
    elif isinstance(result, wire.Query):
        assert 12 < result.qend <= len(data)
        assert result.payload >= 512


@FUZZ
@given(st.binary(max_size=600))
def test_scan_reply_arbitrary_bytes(data: bytes) -> None:
    """Arbitrary bytes as a reply: a ReplyScan or Malformed, never another exception."""
    only_malformed(wire.scan_reply, data, LNAME, QTC)


@FUZZ
@given(st.binary(max_size=300), st.integers(0, 4), st.integers(0, 4), st.integers(0, 4))
def test_scan_reply_valid_question_then_garbage(tail: bytes, an: int, ns: int, ar: int) -> None:
    """A reply header and matching question followed by garbage: the record walk stays in bounds."""
    head = with_counts(reply("www.example.com."), (1, an, ns, ar))
    result = only_malformed(wire.scan_reply, head + tail, LNAME, QTC)
    if isinstance(result, wire.ReplyScan):
        check_scan(result)


def check_scan(s: wire.ReplyScan) -> None:
    """Invariants of any accepted reply, and a cache entry can be made and replayed from it."""
    assert len(s.ttl_offsets) == len(s.ttls) == s.answers + s.authority + s.additional
    assert all(0 <= off and off + 4 <= len(s.body) for off in s.ttl_offsets)
    assert all(0 <= t < 2**31 for t in s.ttls)
    cache = ZoneCache(CachePolicy(stale_window=60), lambda: 1000.0)
    q = query("www.example.com.", edns=1232)
    sq = wire.scan_query(q)
    entry = cache.store(sq.key, s, sq.do, 1232)
    for limit in (512, 600):
        out = entry.reply(q, sq.qend, sq.edns, limit, 1003.0)
        assert len(out) <= limit and out[:2] == q[:2] and out[12 : sq.qend] == q[12 : sq.qend]
        stale = entry.stale_reply(q, sq.qend, sq.edns, limit, 30)
        assert len(stale) <= limit
        counts = struct.unpack("!HHHH", out[4:12])
        assert counts[0] == 1 and sum(counts[1:]) <= s.answers + s.authority + s.additional + 1


@FUZZ
@given(st.sampled_from([wire.FORMERR, wire.SERVFAIL, wire.NOTIMP]), st.binary(max_size=80), st.integers(0, 3),
       st.integers(0, 3), st.integers(0, 3))  # fmt: skip
def test_scan_reply_questionless_errors(rcode: int, tail: bytes, an: int, ns: int, ar: int) -> None:
    """An error reply with no question and anything after its header: Malformed or that bare rcode."""
    head = struct.pack("!HBBHHHH", 0x1234, wire.QR, wire.RA | rcode, 0, an, ns, ar)
    result = only_malformed(wire.scan_reply, head + tail, LNAME, QTC)
    if isinstance(result, wire.ReplyScan):
        assert (result.rcode, result.answers, result.authority, result.additional, result.body) == (rcode, 0, 0, 0, b"")
        check_scan(result)


@FUZZ
@given(mutated(valid_reply(2)) | mutated(valid_reply(0)) | mutated(valid_reply(1)))
def test_scan_reply_mutated_replies(data: bytes) -> None:
    """Mutated replies raise Malformed or give a consistent ReplyScan."""
    result = only_malformed(wire.scan_reply, data, LNAME, QTC)
    if isinstance(result, wire.ReplyScan):
        check_scan(result)


@st.composite
def pointer_owned_records(draw: st.DrawFn) -> bytes:
    """A record as upstreams write them: owner a pointer to the question (or the root), any type but OPT, any TTL
    and RDATA, its length field sometimes wrong."""
    owner = draw(st.sampled_from([b"\xc0\x0c", b"\x00", b"\xc0\x0c", b"\xc1"]))
    rtype = draw(st.sampled_from([1, 5, 6, 16, 28]) | st.integers(0, 65535).filter(lambda t: t != wire.TYPE_OPT))
    rdata = draw(st.binary(max_size=30))
    rdlen = draw(st.sampled_from([len(rdata)] * 3 + [0, 255]))
    return owner + struct.pack("!HHIH", rtype, 1, draw(st.integers(0, 0xFFFFFFFF)), rdlen) + rdata


@FUZZ
@given(names, qtypes, st.none() | names, st.none() | qtypes, st.lists(pointer_owned_records(), max_size=6),
       st.integers(0, 6), st.integers(0, 6), st.booleans(), st.binary(max_size=12))  # fmt: skip
def test_scan_reply_reads_any_spelling_of_the_question_alike(
    name: str, qtype: int, other_name: str | None, other_type: int | None, recs: list[bytes], an: int, ns: int,
    with_opt: bool, tail: bytes,
) -> None:
    """A reply's question byte for byte as asked (matched without reading its labels) and in any other case (read
    and lowercased) scan alike, records and all: the same ReplyScan, or Malformed both; another question never scans."""
    answered, answered_type = other_name or name, other_type or qtype
    assume(len(name) <= 253 and len(answered) <= 253)
    lname, qtc = lname_qtc(name, qtype)
    an, ns = min(an, len(recs)), min(ns, len(recs) - min(an, len(recs)))
    body = b"".join(recs) + (b"\x00\x00\x29\x04\xd0\x00\x00\x80\x00\x00\x00" if with_opt else b"") + tail
    head = struct.pack("!HBBHHHH", 0x1234, wire.QR | wire.RD, wire.RA, 1, an, ns, len(recs) - an - ns + with_opt)
    exact = only_malformed(wire.scan_reply, head + b"".join(lname_qtc(answered, answered_type)) + body, lname, qtc)
    spelled = only_malformed(wire.scan_reply, head + question_bytes(answered, answered_type) + body, lname, qtc)
    if isinstance(exact, wire.Malformed) or (lowered(answered), answered_type) != (lowered(name), qtype):
        assert isinstance(exact, wire.Malformed) and isinstance(spelled, wire.Malformed)
    else:
        assert spelled == exact
        check_scan(exact)


# ---------------------------------------------------------------------------- valid queries


def lowered(name: str) -> str:
    """`name` in lowercase ASCII (DNS case folding, RFC 4343)."""
    return name.translate(str.maketrans(string.ascii_uppercase, string.ascii_lowercase))


@FUZZ
@given(names, qtypes, qids, payloads, st.booleans(), st.booleans(), st.booleans())
def test_key_ignores_case(name: str, qtype: int, qid: int, edns: int | None, do: bool, cd: bool, rd: bool) -> None:
    """Any dnslib query has the key of its lowercased twin and the fields dnslib put in."""
    assume(len(name) <= 253)
    do = do and edns is not None
    data = query(name, qtype, qid=qid, edns=edns, do=do, cd=cd, rd=rd)
    q = wire.scan_query(data)
    twin = wire.scan_query(query(lowered(name), qtype, qid=qid ^ 0x5555, edns=edns, do=do, cd=cd, rd=not rd))
    assert q.key == twin.key
    assert q.lname == question_bytes(lowered(name))[:-4]
    assert q.key[len(q.lname) : len(q.lname) + 4] == struct.pack("!HH", qtype, CLASS.IN)
    assert q.qend == 12 + len(question_bytes(name, qtype))
    assert q.edns == (edns is not None) and q.do == do
    assert q.payload == max(512, edns or 0)


@st.composite
def upstream_answers(draw: st.DrawFn, owner: str) -> list[RR]:
    """Between 0 and 60 records of varied sizes for `owner`, so some replies exceed 512 bytes."""
    out: list[RR] = []
    for _ in range(draw(st.integers(0, 60))):
        ttl = draw(st.integers(0, 0xFFFFFFFF))
        if draw(st.booleans()):
            out.append(a(owner, ttl, f"192.0.2.{draw(st.integers(0, 255))}"))
        else:
            out.append(RR(owner, QTYPE.TXT, rdata=TXT("x" * draw(st.integers(0, 120))), ttl=ttl))
    return out


@SMALL
@given(
    names,
    qtypes,
    qids,
    payloads,
    st.booleans(),
    st.booleans(),
    st.data(),
    st.sampled_from(["udp", "tcp"]),
    st.integers(min_value=0, max_value=400).map(lambda quarters: quarters / 4),  # exact in binary
)
def test_entry_reply_to_any_query(
    name: str, qtype: int, qid: int, edns: int | None, do: bool, rd: bool, data: st.DataObject, transport: str, elapsed: float
) -> None:
    """A cached answer replayed to any client parses, has its ID and question, and fits its size limit."""
    assume(len(name) <= 253)
    do = do and edns is not None
    client = query(name, qtype, qid=qid, edns=edns, do=do, rd=rd)
    q = wire.scan_query(client)
    lname = lowered(name)
    answers = data.draw(upstream_answers(lname))
    upstream = reply(lname, qtype, qid=qid ^ 0xFFFF, answers=answers, additional=[opt(4096, do=do)])
    s = wire.scan_reply(upstream, q.lname, q.key[len(q.lname) : len(q.lname) + 4])
    now = [5000.0]
    cache = ZoneCache(CachePolicy(success_max_ttl=3600), lambda: now[0])
    entry = cache.store(q.key, s, q.do, 1232)
    now[0] += elapsed
    limit = 65535 if transport == "tcp" else q.payload
    out = entry.reply(client, q.qend, q.edns, limit, now[0])

    rec = DNSRecord.parse(out)
    assert len(out) <= limit
    assert rec.header.id == qid and rec.header.qr == 1 and rec.header.rd == int(rd)
    assert out[12 : q.qend] == client[12 : q.qend]
    has_opt = [rr for rr in rec.ar if rr.rtype == QTYPE.OPT]
    assert len(has_opt) == (edns is not None)
    if has_opt:
        assert has_opt[0].edns_do == int(do)
    full = len(upstream) - 11 + (11 if edns is not None else 0)  # our OPT replaces the upstream's
    if full > limit:
        assert rec.header.tc == 1 and rec.header.a < len(answers) and rec.header.auth == 0
        assert [str(rr.rdata) for rr in rec.rr] == [str(rr.rdata) for rr in answers[: rec.header.a]]
    else:
        assert rec.header.tc == 0 and rec.header.a == len(answers)
        upstream_ttls = [min(rr.ttl if rr.ttl < 2**31 else 0, 3600) for rr in answers]
        assert [rr.ttl for rr in rec.rr] == [max(0, t - int(elapsed)) for t in upstream_ttls]


# ---------------------------------------------------------------------------- truncation


@st.composite
def any_record(draw: st.DrawFn) -> RR:
    """A record of a common type under example.com, with names that compress against each other."""
    owner = draw(st.sampled_from(["www.example.com.", "web.example.com.", "ns1.example.com.", "example.com.",
                                  "x.web.example.com.", "Other.Example.org."]))  # fmt: skip
    ttl = draw(st.integers(0, 100_000))
    kind = draw(st.sampled_from(["a", "cname", "txt", "soa", "ns"]))
    if kind == "a":
        return a(owner, ttl, f"192.0.2.{draw(st.integers(0, 255))}")
    if kind == "cname":
        return cname(owner, draw(st.sampled_from(["web.example.com.", "cdn.example.net."])), ttl)
    if kind == "soa":
        return soa("example.com.", ttl, draw(st.integers(0, 3600)))
    if kind == "ns":
        return RR(owner, QTYPE.NS, rdata=NS(draw(st.sampled_from(["ns1.example.com.", "ns2.example.net."]))), ttl=ttl)
    return RR(owner, QTYPE.TXT, rdata=TXT("t" * draw(st.integers(0, 200))), ttl=ttl)


def record_ends(msg: bytes) -> list[int]:
    """dnslib's own record boundaries in `msg` (offsets just past each record, in wire order)."""
    buf = DNSBuffer(msg)
    header = DNSHeader.parse(buf)
    for _ in range(header.q):
        DNSQuestion.parse(buf)
    ends = []
    for _ in range(header.a + header.auth + header.ar):
        RR.parse(buf)
        ends.append(buf.offset)
    return ends


@SMALL
@given(
    st.lists(any_record(), max_size=25),
    st.lists(any_record(), max_size=6),
    st.lists(any_record(), max_size=25),
    st.integers(0, 25),
    st.sampled_from([None, 512, 600, 1232, 1400, 4096]),
    st.integers(min_value=0, max_value=2000),
    st.booleans(),
    st.booleans(),
)
def test_truncated_replies_parse_fit_and_keep_whole_records(
    answers: list[RR], authority: list[RR], additional: list[RR], opt_at: int, edns: int | None, extra_limit: int,
    stale: bool, rd: bool,
) -> None:
    """Any cached reply cut for any limit: dnslib parses it, it fits, it is the full reply's prefix of whole
    records in order, no further whole record would fit, and TC says whether an answer or authority record went."""
    name = "www.example.com."
    ar = [*additional[:opt_at], opt(4096), *additional[opt_at:]]
    upstream = reply(name, answers=answers, authority=authority, additional=ar)
    s = wire.scan_reply(upstream, LNAME, QTC)
    client = query("WWW.example.COM.", edns=edns, rd=rd)
    q = wire.scan_query(client)
    cache = ZoneCache(CachePolicy(success_max_ttl=3600, denial_max_ttl=3600, stale_window=60), lambda: 1000.0)
    entry = cache.store(q.key, s, q.do, 1232)
    limit = min(q.payload, 512 + extra_limit)

    def render(lim: int) -> bytes:
        return entry.stale_reply(client, q.qend, q.edns, lim, 30) if stale else entry.reply(client, q.qend, q.edns, lim, 1001.0)

    full, out = render(65535), render(limit)
    rec = DNSRecord.parse(out)
    assert len(out) <= limit
    assert rec.header.id == 0x1234 and rec.header.rd == int(rd) and str(rec.q.qname) == "WWW.example.COM."
    assert (opt_of(rec) is not None) == (edns is not None)
    kept = len(rec.rr) + len(rec.auth) + len([r for r in rec.ar if r.rtype != QTYPE.OPT])
    ends = record_ends(full)
    total = len(answers) + len(authority) + len(additional)
    assert len(ends) == total + (edns is not None)
    body_end = ends[kept - 1] if kept else q.qend
    assert out[12:body_end] == full[12:body_end]  # the question, then a prefix of whole records
    assert len(out) == body_end + (wire.OPT_LEN if edns is not None else 0)  # then only the client's OPT
    assert out[4:12] == struct.pack("!HHHH", 1, len(rec.rr), len(rec.auth), len(rec.ar))
    if kept < total:  # maximal: one more record would not have fitted
        assert ends[kept] - body_end + len(out) > limit
        assert rec.header.tc == int(kept < len(answers) + len(authority))
    else:
        assert out == full and rec.header.tc == 0
    # Asking again, and with other limits in between, gives the same bytes (the memoised cut).
    render(limit + 100)
    assert render(limit) == out


@SMALL
@given(mutated(valid_reply(2)) | mutated(valid_reply(0)))
def test_uncompressed_takes_any_scanned_reply(data: bytes) -> None:
    """Whatever scan_reply accepts, uncompressed either refuses (Malformed) or writes a body without pointers."""
    lname, qtc = wire.scan_query(valid_query()).lname, b"\x00\x01\x00\x01"
    scan = only_malformed(wire.scan_reply, data, lname, qtc)
    if isinstance(scan, wire.Malformed):
        return
    out = only_malformed(wire.uncompressed, scan, lname, qtc)
    if isinstance(out, wire.Malformed):
        return
    assert len(out.ttl_offsets) == len(scan.ttl_offsets)


@SMALL
@given(names, st.integers(1, 300), st.integers(0, 300))
def test_an_uncompressed_nxdomain_reads_the_same_after_another_question(name: str, soa_ttl: int, minimum: int) -> None:
    """The RFC 8020 cut replays the body after other questions: its records must not change."""
    zone = "example.com."
    msg = reply("nx." + zone, rcode=3, authority=[soa(zone, soa_ttl, minimum)])
    q = wire.scan_query(query("nx." + zone))
    qtc = q.key[len(q.lname) : len(q.lname) + 4]
    body = wire.uncompressed(wire.scan_reply(msg, q.lname, qtc), q.lname, qtc).body
    other = query(name + "nx." + zone if name != "." else "a.nx." + zone, 28, edns=None)
    o = wire.scan_query(other)
    head = other[:2] + bytes((0x81, 0x83, 0, 1, 0, 0, 0, 1, 0, 0))
    rec = parse(head + other[12 : o.qend] + body)
    assert [(str(r.rname), r.ttl) for r in rec.auth] == [(zone, soa_ttl)]
    assert str(rec.auth[0].rdata.mname) == str(DNSRecord.parse(msg).auth[0].rdata.mname)
