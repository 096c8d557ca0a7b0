"""nodecache.wire: the hand-written fast path, checked against dnslib and the RFCs.

Queries and replies are built with dnslib, fed to wire as bytes, and what wire writes is
parsed back with dnslib. Packets dnslib refuses to build are patched byte by byte.
"""

from __future__ import annotations

import struct

import pytest
from dnslib import CLASS, CNAME, EDNS0, QTYPE, RR, TXT, A, DNSHeader, DNSQuestion, DNSRecord

from nodecache import wire
from tests.dnsmsg import (
    a,
    cname,
    full_rcode,
    lname_qtc,
    name_wire,
    opt,
    opt_of,
    parse,
    query,
    question_bytes,
    records,
    reply,
    soa,
    ttls_of,
    with_header,
)

NAME = "www.example.com."
ZONE = "example.com."


def qend_of(name: str, qtype: str | int = "A", qclass: int = CLASS.IN) -> int:
    """Offset just past the question of a message asking (name, type, class)."""
    return wire.HEADER_LEN + len(question_bytes(name, qtype, qclass))


def raw_question_msg(qname_wire: bytes, *, qid: int = 7, counts: tuple[int, int, int, int] = (1, 0, 0, 0)) -> bytes:
    """A query built by hand around an arbitrary (possibly invalid) question name."""
    return struct.pack("!HBBHHHH", qid, wire.RD, 0, *counts) + qname_wire + struct.pack("!HH", 1, 1)


def rebuilt(msg: bytes, scan: wire.ReplyScan, body: bytes | None = None) -> bytes:
    """The reply as a cache would replay it: header (OPT no longer counted), question, body."""
    q = parse(msg).q
    qend = wire.HEADER_LEN + len(question_bytes(str(q.qname), q.qtype, q.qclass))
    counts = struct.pack("!HHHH", 1, scan.answers, scan.authority, scan.additional)
    return msg[:4] + counts + msg[wire.HEADER_LEN : qend] + (scan.body if body is None else body)


# ---------------------------------------------------------------------------- scan_query


class TestScanQueryKey:
    """The cache key: lowercased qname, qtype, qclass and a DO/CD flag byte (as CoreDNS)."""

    @pytest.mark.parametrize(
        ("name", "qtype", "qclass"),
        [
            ("www.example.com.", "A", CLASS.IN),
            ("WwW.ExAmPlE.CoM.", "AAAA", CLASS.IN),
            ("KUBERNETES.default.SVC.cluster.local.", "SRV", CLASS.IN),
            (".", "NS", CLASS.IN),
            ("version.bind.", "TXT", CLASS.CH),
        ],
    )
    def test_key_is_lowercased_name_then_type_and_class(self, name: str, qtype: str, qclass: int) -> None:
        """The key starts with the lowercased wire name and the question's type and class."""
        q = wire.scan_query(query(name, qtype, qclass=qclass))
        lname, qtc = lname_qtc(name, qtype, qclass)
        assert q.lname == lname
        assert q.key[: len(lname) + 4] == lname + qtc
        assert len(q.key) == len(lname) + 5  # one flag byte

    @pytest.mark.parametrize(
        "variant",
        ["WWW.EXAMPLE.COM.", "www.example.com.", "wWw.eXaMpLe.cOm.", "Www.Example.Com."],
    )
    def test_case_does_not_change_the_key(self, variant: str) -> None:
        """DNS names compare case-insensitively (RFC 4343), so 0x20-randomised queries share an entry."""
        assert wire.scan_query(query(variant)).key == wire.scan_query(query(NAME)).key

    def test_id_and_rd_do_not_change_the_key(self) -> None:
        """Two clients asking the same thing share an entry whatever their ID and RD bit."""
        assert wire.scan_query(query(qid=1, rd=True)).key == wire.scan_query(query(qid=65535, rd=False)).key

    def test_do_and_cd_each_change_the_key(self) -> None:
        """DO and CD change what an upstream returns, so all four combinations are distinct keys."""
        keys = {
            wire.scan_query(query(edns=1232, do=do, cd=cd)).key for do in (False, True) for cd in (False, True)
        }
        assert len(keys) == 4

    def test_edns_without_do_shares_the_key_of_no_edns(self) -> None:
        """Only the DO bit matters, not the mere presence of OPT or the advertised size."""
        assert wire.scan_query(query()).key == wire.scan_query(query(edns=4096)).key

    @pytest.mark.parametrize("qtype", range(65, 91))
    def test_upper_letter_qtypes_do_not_collide_with_lower(self, qtype: int) -> None:
        """Type bytes 65..90 look like 'A'..'Z'; they must not be lowercased into 97..122."""
        upper = wire.scan_query(query(qtype=qtype)).key
        lower = wire.scan_query(query(qtype=qtype + 32)).key
        assert upper != lower
        assert upper[-5:-1] == struct.pack("!HH", qtype, 1)

    def test_class_changes_the_key(self) -> None:
        """IN and CH questions for the same name are different questions."""
        assert wire.scan_query(query(qclass=CLASS.IN)).key != wire.scan_query(query(qclass=CLASS.CH)).key

    def test_qclass_letter_bytes_not_lowercased(self) -> None:
        """Class values are numbers too: 0x4141 and 0x6161 differ."""
        assert wire.scan_query(query(qclass=0x4141)).key != wire.scan_query(query(qclass=0x6161)).key


class TestScanQueryFields:
    """Offsets, payload size and EDNS flags read from a valid query."""

    @pytest.mark.parametrize(("name", "qtype"), [(NAME, "A"), ("Mixed.Case.", "MX"), (".", "NS")])
    def test_qend_is_just_past_the_question(self, name: str, qtype: str) -> None:
        """`qend` points right after the question's type and class."""
        assert wire.scan_query(query(name, qtype, edns=1232)).qend == qend_of(name, qtype)

    @pytest.mark.parametrize(
        ("edns", "payload"),
        [
            (None, 512),  # no OPT: RFC 1035's 512 bytes
            (4096, 4096),
            (1232, 1232),
            (65535, 65535),
            (513, 513),
            (512, 512),
            (511, 512),  # RFC 6891 6.2.5: values below 512 are treated as 512
            (100, 512),
            (0, 512),
        ],
    )
    def test_payload(self, edns: int | None, payload: int) -> None:
        """The UDP size is 512 without OPT, else the advertised size but never below 512."""
        assert wire.scan_query(query(edns=edns)).payload == payload

    @pytest.mark.parametrize(
        ("edns", "do", "want_edns", "want_do"),
        [(None, False, 0, False), (1232, False, 1, False), (1232, True, 1, True), (4096, True, 1, True)],
    )
    def test_edns_and_do_flags(self, edns: int | None, do: bool, want_edns: int, want_do: bool) -> None:
        """`edns` says whether the client sent OPT, `do` whether it set the DO bit."""
        q = wire.scan_query(query(edns=edns, do=do))
        assert (q.edns, q.do) == (want_edns, want_do)

    @pytest.mark.parametrize(
        "where",
        ["answer", "authority", "additional_before", "additional_after", "all"],
    )
    def test_opt_found_among_other_records(self, where: str) -> None:
        """OPT is found in the additional section whatever else the query carries."""
        rec = DNSRecord(DNSHeader(id=9, rd=1), q=DNSQuestion(NAME, QTYPE.A))
        extra = a("other.example.", 60)
        if where in ("answer", "all"):
            rec.add_answer(extra)
        if where in ("authority", "all"):
            rec.add_auth(soa(ZONE, 60, 60))
        if where in ("additional_before", "all"):
            rec.add_ar(RR("key.example.", QTYPE.TXT, rdata=TXT("x"), ttl=0))
        rec.add_ar(EDNS0(udp_len=2048, flags="do"))
        if where in ("additional_after", "all"):
            rec.add_ar(a("glue.example.", 5))
        q = wire.scan_query(bytes(rec.pack()))
        assert (q.edns, q.do, q.payload) == (1, True, 2048)
        assert q.qend == qend_of(NAME)

    def test_other_additional_records_without_opt(self) -> None:
        """Additional records that are not OPT do not make a query EDNS."""
        rec = DNSRecord(DNSHeader(id=9, rd=1), q=DNSQuestion(NAME, QTYPE.A))
        rec.add_ar(a("glue.example.", 5))
        q = wire.scan_query(bytes(rec.pack()))
        assert (q.edns, q.do, q.payload) == (0, False, 512)

    def test_longest_legal_name_is_accepted(self) -> None:
        """A name of exactly 255 octets (RFC 1035 2.3.4) is fine."""
        name = b"".join(bytes((63,)) + b"a" * 63 for _ in range(3)) + bytes((61,)) + b"b" * 61 + b"\x00"
        assert len(name) == 255
        q = wire.scan_query(raw_question_msg(name))
        assert q.qend == wire.HEADER_LEN + 255 + 4
        assert q.lname == name


def _mutate_query(kind: str) -> bytes:
    """A query that is bad in one way (see the table in TestScanQueryRejects)."""
    good = query(NAME, edns=1232)
    qe = qend_of(NAME)
    long_name = b"".join(bytes((63,)) + b"a" * 63 for _ in range(3)) + bytes((62,)) + b"b" * 62 + b"\x00"
    many_labels = b"\x01a" * 128 + b"\x00"  # 257 octets
    table = {
        "empty": b"",
        "one byte": b"\x12",
        "eleven bytes": good[:11],
        "response": with_header(good, flags1=wire.QR | wire.RD),
        "response with garbage": with_header(b"\x00" * 12, flags1=wire.QR),
        "opcode IQUERY": with_header(good, flags1=(1 << 3) | wire.RD),
        "opcode STATUS": with_header(good, flags1=(2 << 3)),
        "opcode NOTIFY": with_header(good, flags1=(4 << 3)),
        "opcode UPDATE": with_header(good, flags1=(5 << 3)),
        "opcode 15": with_header(good, flags1=(15 << 3)),
        "qdcount 0": with_header(good, counts=(0, 0, 0, 1)),
        "qdcount 2": with_header(good, counts=(2, 0, 0, 1)),
        "qdcount 256": with_header(good, counts=(256, 0, 0, 1)),
        "header only": with_header(good[:12], counts=(1, 0, 0, 0)),
        "name cut": query(NAME)[:16],
        "no root label": query(NAME)[: qe - 5],
        "no type": query(NAME)[: qe - 4],
        "class cut": query(NAME)[: qe - 1],
        "compression pointer": raw_question_msg(b"\xc0\x0c"),
        "pointer after label": raw_question_msg(b"\x03www\xc0\x0c"),
        "label type 0x40": raw_question_msg(b"\x41" + b"a" * 65 + b"\x00"),
        "label type 0x80": raw_question_msg(b"\x80\x00"),
        "name 256 octets": raw_question_msg(long_name),
        "name 257 octets of short labels": raw_question_msg(many_labels),
        "EDNS version 1": query(NAME, edns=1232, version=1),
        "EDNS version 255": query(NAME, edns=1232, version=255, do=True),
        "two OPT records": with_header(good + good[qe:], counts=(1, 0, 0, 2)),
        "OPT not at the root": raw_question_msg(name_wire(NAME), counts=(1, 0, 0, 1))
        + b"\x01x\x00"
        + bytes(good[qe + 1 :]),
        "additional record cut": good[:-3],
        "OPT in the answer section": with_header(good, counts=(1, 1, 0, 0)),
        "OPT in the authority section": with_header(good, counts=(1, 0, 1, 0)),
        "OPT in the answer, another after it": with_header(good + good[qe:], counts=(1, 1, 0, 1)),
        "OPT RDLEN past the end": good[:-2] + b"\x00\x08",
        "OPT RDLEN past the end among others": with_header(
            raw_question_msg(name_wire(NAME)) + bytes(a_rr) + good[qe:-2] + b"\x00\x04", counts=(1, 0, 0, 2)
        ),
        "trailing byte after the question": query(NAME) + b"\x00",
        "trailing bytes after the OPT": good + b"\x00\x00",
        "trailing bytes after other records": with_header(query(NAME) + bytes(a_rr) + b"xx", counts=(1, 0, 0, 1)),
        "counts but no records": with_header(query(NAME), counts=(1, 0, 0, 1)),
        "qtype OPT": query(NAME, 41),
        "qtype OPT with EDNS": query(NAME, 41, edns=1232),
        "AXFR": query(ZONE, "AXFR"),
        "IXFR": query(ZONE, "IXFR", edns=1232),
    }
    return table[kind]


# A whole A record for glue.example. (no compression), to put among a query's records.
a_rr = name_wire("glue.example.") + struct.pack("!HHIH", 1, 1, 60, 4) + bytes((192, 0, 2, 9))


class TestScanQueryRejects:
    """Queries that cannot be answered normally: what rcode they deserve (None: drop)."""

    @pytest.mark.parametrize(
        ("kind", "rcode"),
        [
            ("empty", None),
            ("one byte", None),
            ("eleven bytes", None),
            ("response", None),
            ("response with garbage", None),
            ("opcode IQUERY", wire.NOTIMP),
            ("opcode STATUS", wire.NOTIMP),
            ("opcode NOTIFY", wire.NOTIMP),
            ("opcode UPDATE", wire.NOTIMP),
            ("opcode 15", wire.NOTIMP),
            ("qdcount 0", wire.FORMERR),
            ("qdcount 2", wire.FORMERR),
            ("qdcount 256", wire.FORMERR),
            ("header only", wire.FORMERR),
            ("name cut", wire.FORMERR),
            ("no root label", wire.FORMERR),
            ("no type", wire.FORMERR),
            ("class cut", wire.FORMERR),
            ("compression pointer", wire.FORMERR),
            ("pointer after label", wire.FORMERR),
            ("label type 0x40", wire.FORMERR),
            ("label type 0x80", wire.FORMERR),
            ("name 256 octets", wire.FORMERR),
            ("name 257 octets of short labels", wire.FORMERR),
            ("EDNS version 1", wire.BADVERS),
            ("EDNS version 255", wire.BADVERS),
            ("two OPT records", wire.FORMERR),  # RFC 6891 6.1.1
            ("OPT not at the root", wire.FORMERR),
            ("additional record cut", wire.FORMERR),
            ("OPT in the answer section", wire.FORMERR),
            ("OPT in the authority section", wire.FORMERR),
            ("OPT in the answer, another after it", wire.FORMERR),
            ("OPT RDLEN past the end", wire.FORMERR),
            ("OPT RDLEN past the end among others", wire.FORMERR),
            ("trailing byte after the question", wire.FORMERR),
            ("trailing bytes after the OPT", wire.FORMERR),
            ("trailing bytes after other records", wire.FORMERR),
            ("counts but no records", wire.FORMERR),
            ("qtype OPT", wire.FORMERR),  # RFC 6891 6.1.1: OPT is never asked for
            ("qtype OPT with EDNS", wire.FORMERR),
            ("AXFR", wire.NOTIMP),  # NOTIMP is the UDP answer; the resolver makes it REFUSED over TCP
            ("IXFR", wire.NOTIMP),
        ],
    )
    def test_rejected_with_rcode(self, kind: str, rcode: int | None) -> None:
        """Each bad query raises Malformed carrying the rcode it deserves."""
        with pytest.raises(wire.Malformed) as info:
            wire.scan_query(_mutate_query(kind))
        assert info.value.rcode == rcode

    @pytest.mark.parametrize(
        "kind", ["OPT in the answer section", "OPT RDLEN past the end", "trailing bytes after the OPT", "qtype OPT"]
    )
    def test_formerr_for_bad_records_keeps_the_question(self, kind: str) -> None:
        """The question was readable, so the FORMERR reply can echo it."""
        with pytest.raises(wire.Malformed) as info:
            wire.scan_query(_mutate_query(kind))
        assert info.value.qend == qend_of(NAME, 41 if "qtype" in kind else "A")

    @pytest.mark.parametrize(("qtype", "edns", "do"), [("AXFR", None, False), ("IXFR", 1232, True), ("AXFR", 4096, False)])
    def test_zone_transfers_are_flagged_with_the_clients_edns(self, qtype: str, edns: int | None, do: bool) -> None:
        """AXFR and IXFR raise ZoneTransfer, carrying what the refusal needs to echo an OPT."""
        with pytest.raises(wire.ZoneTransfer) as info:
            wire.scan_query(query(ZONE, qtype, edns=edns, do=do))
        e = info.value
        assert (e.rcode, e.qend, e.edns, e.do) == (wire.NOTIMP, qend_of(ZONE, qtype), int(edns is not None), do)

    def test_ixfr_with_its_soa_in_authority_is_a_zone_transfer(self) -> None:
        """RFC 1995: an IXFR query carries the client's SOA in the authority section; still refused, not FORMERR."""
        rec = DNSRecord(DNSHeader(id=9), q=DNSQuestion(ZONE, QTYPE.IXFR))
        rec.add_auth(soa(ZONE, 60, 60))
        with pytest.raises(wire.ZoneTransfer):
            wire.scan_query(bytes(rec.pack()))

    @pytest.mark.parametrize("qtype", [1, 28, 40, 42, 250, 253, 255, 41 + 256, 252 + 256, 65535])
    def test_neighbouring_qtypes_are_ordinary(self, qtype: int) -> None:
        """Only 41, 251 and 252 are refused: types next to them, or sharing their low byte, are queries."""
        assert wire.scan_query(query(NAME, qtype, edns=1232)).key[-5:-3] == struct.pack("!H", qtype)

    @pytest.mark.parametrize("version", [1, 2, 255])
    def test_badvers_keeps_the_question(self, version: int) -> None:
        """A BADVERS query has a readable question, so its reply can echo it."""
        with pytest.raises(wire.Malformed) as info:
            wire.scan_query(query("Www.Example.Com.", edns=1232, version=version))
        assert info.value.qend == qend_of("Www.Example.Com.")


# ---------------------------------------------------------------------------- make_query, opt_record


class TestMakeQuery:
    """The upstream query: parsed back with dnslib."""

    @pytest.mark.parametrize(
        ("qid", "do", "cd", "payload"),
        [(0, False, False, 1232), (0xFFFF, True, False, 1232), (0x1234, False, True, 512), (42, True, True, 4096)],
    )
    def test_fields(self, qid: int, do: bool, cd: bool, payload: int) -> None:
        """ID, RD, CD, DO and the OPT payload are what was asked for; the question is verbatim."""
        question = question_bytes("Api.Example.Org.", "AAAA")
        msg = wire.make_query(qid, question, do, cd, payload)
        rec = parse(msg)
        h = rec.header
        assert (h.id, h.qr, h.opcode, h.rd, h.cd, h.tc, h.aa) == (qid, 0, 0, 1, int(cd), 0, 0)
        assert (h.q, h.a, h.auth, h.ar) == (1, 0, 0, 1)
        assert msg[wire.HEADER_LEN : wire.HEADER_LEN + len(question)] == question
        assert str(rec.q.qname) == "Api.Example.Org." and rec.q.qtype == QTYPE.AAAA
        o = opt_of(rec)
        assert o is not None
        assert (o.edns_len, o.edns_do, o.edns_ver, o.edns_rcode) == (payload, int(do), 0, 0)
        assert str(o.rname) == "."

    @pytest.mark.parametrize("do", [False, True])
    def test_without_edns(self, do: bool) -> None:
        """edns=False: no OPT at all (so no DO), for the retry after an upstream FORMERR (RFC 6891 7)."""
        question = question_bytes(NAME, "A")
        msg = wire.make_query(0x4242, question, do, True, 1232, edns=False)
        rec = parse(msg)
        assert (rec.header.id, rec.header.rd, rec.header.cd, rec.header.ar) == (0x4242, 1, 1, 0)
        assert opt_of(rec) is None and msg == msg[:12] + question

    def test_is_a_valid_query_for_scan_query(self) -> None:
        """Our own upstream query passes our own query checks with the same key."""
        question = question_bytes(NAME, "A")
        msg = wire.make_query(7, question, True, True, 1232)
        assert wire.scan_query(msg).key == wire.scan_query(query(NAME, edns=1232, do=True, cd=True)).key


class TestOptRecord:
    """opt_record: an OPT pseudo-record (RFC 6891 6.1.2)."""

    @pytest.mark.parametrize(
        ("payload", "do", "ext"), [(512, False, 0), (1232, True, 0), (65535, True, 1), (4096, False, 255)]
    )
    def test_parses_as_opt(self, payload: int, do: bool, ext: int) -> None:
        """Appended to a header that counts one additional record, dnslib reads the fields back."""
        msg = struct.pack("!HBBHHHH", 1, wire.QR, 0, 0, 0, 0, 1) + wire.opt_record(payload, do, ext)
        rec = parse(msg)
        o = opt_of(rec)
        assert o is not None
        assert (str(o.rname), o.edns_len, o.edns_do, o.edns_rcode, o.edns_ver) == (".", payload, int(do), ext, 0)
        assert len(o.rdata) == 0
        assert len(msg) == wire.HEADER_LEN + 11  # nothing after the record


# ---------------------------------------------------------------------------- error_reply


class TestErrorReply:
    """Replies with only an rcode: ID, flags and question from the client query."""

    @pytest.mark.parametrize("rcode", [wire.FORMERR, wire.SERVFAIL, wire.NXDOMAIN, wire.NOTIMP, wire.REFUSED])
    @pytest.mark.parametrize("rd", [False, True])
    @pytest.mark.parametrize("cd", [False, True])
    def test_plain_rcode(self, rcode: int, rd: bool, cd: bool) -> None:
        """QR and RA set, RD and CD copied, no records, question echoed with its case."""
        name = "WwW.eXample.COM."
        data = query(name, "AAAA", qid=0xBEEF, rd=rd, cd=cd)
        msg = wire.error_reply(data, rcode, qend_of(name, "AAAA"), 0, False, 1232)
        rec = parse(msg)
        h = rec.header
        assert (h.id, h.qr, h.opcode, h.rcode, h.rd, h.ra, h.cd, h.tc, h.aa) == (
            0xBEEF, 1, 0, rcode, int(rd), 1, int(cd), 0, 0
        )
        assert (h.q, h.a, h.auth, h.ar) == (1, 0, 0, 0)
        assert msg[wire.HEADER_LEN :] == question_bytes(name, "AAAA")

    @pytest.mark.parametrize(("do", "payload"), [(False, 1232), (True, 1232), (True, 4096)])
    def test_opt_when_client_used_edns(self, do: bool, payload: int) -> None:
        """With `edns`, the reply carries an OPT with our payload and the client's DO."""
        data = query(NAME, edns=4096, do=do)
        rec = parse(wire.error_reply(data, wire.SERVFAIL, qend_of(NAME), 1, do, payload))
        o = opt_of(rec)
        assert o is not None
        assert (o.edns_len, o.edns_do, o.edns_ver, o.edns_rcode) == (payload, int(do), 0, 0)
        assert rec.header.ar == 1 and full_rcode(rec) == wire.SERVFAIL

    def test_badvers_goes_into_the_opt(self) -> None:
        """BADVERS (16) does not fit the header: low bits 0 there, 1 in the OPT's extended rcode."""
        data = query(NAME, edns=1232, version=1)
        rec = parse(wire.error_reply(data, wire.BADVERS, qend_of(NAME), 0, False, 1232))
        o = opt_of(rec)
        assert o is not None, "RFC 6891 7: BADVERS needs an OPT record"
        assert rec.header.rcode == 0 and o.edns_rcode == 1
        assert full_rcode(rec) == wire.BADVERS
        assert o.edns_ver == 0

    def test_no_question_when_unreadable(self) -> None:
        """qend 0: the reply has an empty question section and nothing else."""
        data = with_header(query(NAME), counts=(2, 0, 0, 0))
        msg = wire.error_reply(data, wire.FORMERR, 0, 0, False, 1232)
        rec = parse(msg)
        assert (rec.header.q, rec.header.a, rec.header.auth, rec.header.ar) == (0, 0, 0, 0)
        assert len(msg) == wire.HEADER_LEN
        assert rec.header.id == 0x1234 and rec.header.rcode == wire.FORMERR

    @pytest.mark.parametrize(
        ("kind", "rcode"),
        [
            ("opcode NOTIFY", wire.NOTIMP),
            ("qdcount 2", wire.FORMERR),
            ("compression pointer", wire.FORMERR),
            ("name cut", wire.FORMERR),
            ("EDNS version 1", wire.BADVERS),
        ],
    )
    def test_reply_to_each_rejected_query_parses(self, kind: str, rcode: int) -> None:
        """What the listener sends for a rejected query is a valid reply with that rcode and ID."""
        data = _mutate_query(kind)
        with pytest.raises(wire.Malformed) as info:
            wire.scan_query(data)
        msg = wire.error_reply(data, info.value.rcode, info.value.qend, 0, False, 1232)
        rec = parse(msg)
        assert rec.header.qr == 1
        assert rec.header.id == struct.unpack("!H", data[:2])[0]
        assert full_rcode(rec) == rcode
        assert rec.header.opcode == (data[2] >> 3) & 0x0F  # RFC 1035 4.1.1: opcode copied


# ---------------------------------------------------------------------------- scan_reply


def scan(msg: bytes, name: str = NAME, qtype: str | int = "A", qclass: int = CLASS.IN) -> wire.ReplyScan:
    """scan_reply for the question (name, type, class)."""
    lname, qtc = lname_qtc(name, qtype, qclass)
    return wire.scan_reply(msg, lname, qtc)


class TestScanReply:
    """Taking an upstream reply apart for the cache."""

    def test_plain_answer(self) -> None:
        """Counts, rcode, flags and TTLs are those dnslib wrote; the body is everything after the question."""
        msg = reply(answers=[a(NAME, 300), a(NAME, 200, "192.0.2.2")], authority=[soa(ZONE, 100, 50)], aa=True)
        s = scan(msg)
        assert (s.rcode, s.answers, s.authority, s.additional) == (0, 2, 1, 0)
        assert s.flags == msg[2] << 8 | msg[3]
        assert s.flags & (wire.AA << 8) and s.flags & (wire.QR << 8)
        assert s.ttls == [300, 200, 100]
        assert s.body == msg[qend_of(NAME) :]
        assert (s.soa_ttl, s.soa_minimum) == (100, 50)

    @pytest.mark.parametrize("rcode", [0, 1, 2, 3, 4, 5, 9])
    def test_rcode(self, rcode: int) -> None:
        """The header rcode is reported as is."""
        assert scan(reply(rcode=rcode)).rcode == rcode

    @pytest.mark.parametrize("ext", [1, 2, 255])
    def test_extended_rcode_from_opt(self, ext: int) -> None:
        """An OPT's extended rcode bits are the upper 8 of the 12-bit rcode (RFC 6891 6.1.3)."""
        s = scan(reply(rcode=3, additional=[opt(ext_rcode=ext)]))
        assert s.rcode == ext << 4 | 3

    def test_question_case_may_differ(self) -> None:
        """A 0x20-style reply with a different case still answers our question."""
        s = scan(reply("WWW.EXAMPLE.COM.", answers=[a(NAME, 60)]), name="www.Example.com.")
        assert s.answers == 1

    @pytest.mark.parametrize(
        "msg",
        [
            pytest.param(reply("other.example.com.", answers=[a("other.example.com.", 60)]), id="other name"),
            pytest.param(reply("www.example.co.", answers=[a("www.example.co.", 60)]), id="shorter name"),
            pytest.param(reply(NAME, "AAAA"), id="other type"),
            pytest.param(reply(NAME, "A", qclass=CLASS.CH), id="other class"),
            pytest.param(with_header(reply(answers=[a(NAME, 60)]), flags1=wire.RD), id="QR not set"),
            pytest.param(with_header(reply(), flags1=wire.QR | (1 << 3)), id="opcode IQUERY"),
            pytest.param(with_header(reply(), flags1=wire.QR | (4 << 3)), id="opcode NOTIFY"),
            pytest.param(with_header(reply(), counts=(0, 0, 0, 0))[:12], id="no question"),
            pytest.param(with_header(reply(), counts=(2, 0, 0, 0)), id="qdcount 2"),
            pytest.param(reply()[:11], id="short header"),
            pytest.param(reply()[: qend_of(NAME) - 2], id="question cut"),
            pytest.param(reply(answers=[a(NAME, 60)])[:-1], id="answer rdata cut"),
            pytest.param(reply(answers=[a(NAME, 60)])[: qend_of(NAME) + 5], id="answer header cut"),
            pytest.param(with_header(reply(answers=[a(NAME, 60)]), counts=(1, 2, 0, 0)), id="answer count too high"),
            pytest.param(with_header(reply(rcode=wire.NXDOMAIN), counts=(0, 0, 0, 0))[:12], id="no question NXDOMAIN"),
            pytest.param(with_header(reply(rcode=wire.REFUSED), counts=(0, 0, 0, 0))[:12], id="no question REFUSED"),
            pytest.param(with_header(reply(rcode=wire.SERVFAIL), counts=(0, 1, 0, 0))[:12], id="no question, record cut"),
            pytest.param(
                with_header(reply(rcode=wire.FORMERR, additional=[opt(ext_rcode=1)]), counts=(0, 0, 0, 1))[:12]
                + bytes(wire.opt_record(1232, False, 1)),
                id="no question, extended rcode",
            ),
            pytest.param(reply(additional=[opt(), a(NAME, 60), opt()]), id="two OPT around a record"),
            pytest.param(reply(answers=[opt()]), id="OPT in answer"),
            pytest.param(reply(authority=[opt()]), id="OPT in authority"),
            pytest.param(reply(additional=[opt(), opt()]), id="two OPT"),
        ],
    )
    def test_rejected(self, msg: bytes) -> None:
        """Replies that do not answer our question, or cannot be taken apart, raise Malformed."""
        with pytest.raises(wire.Malformed):
            scan(msg)

    @pytest.mark.parametrize(("asked", "got"), [(65, 97), (97, 65), (90, 122)])
    def test_type_bytes_are_not_case_folded(self, asked: int, got: int) -> None:
        """Type values that look like ASCII letters are compared exactly, not case-insensitively."""
        with pytest.raises(wire.Malformed):
            scan(reply(NAME, got), qtype=asked)

    def test_opt_is_removed_from_the_body(self) -> None:
        """OPT is cut from the body and not counted; the rest reads back the same with dnslib."""
        glue = a("ns1.example.com.", 77, "192.0.2.53")
        msg = reply(answers=[a(NAME, 60)], authority=[soa(ZONE, 100, 50)], additional=[glue, opt(4096, do=True)])
        s = scan(msg)
        assert s.additional == 1
        back = parse(rebuilt(msg, s))
        assert opt_of(back) is None
        assert [(str(r.rname), r.rtype, r.ttl) for r in records(back)] == [
            (str(r.rname), r.rtype, r.ttl) for r in records(parse(msg))
        ]
        assert back.header.ar == 1

    @pytest.mark.parametrize("where", [0, 1, 2])
    def test_opt_anywhere_in_additional(self, where: int) -> None:
        """RFC 6891 6.1.1: OPT may sit anywhere in the additional section; the records read back the same."""
        glue = [a("ns1.example.com.", 77, "192.0.2.53"), a("ns2.example.com.", 78, "192.0.2.54")]
        extra = [*glue[:where], opt(4096, do=True, ext_rcode=2), *glue[where:]]
        msg = reply(rcode=3, answers=[cname(NAME, "web.example.com.", 60)], authority=[soa(ZONE, 100, 50)],
                    additional=extra)  # fmt: skip
        s = scan(msg)
        assert (s.rcode, s.answers, s.authority, s.additional) == (2 << 4 | 3, 1, 1, 2)
        assert (s.soa_ttl, s.soa_minimum) == (100, 50)
        back = parse(rebuilt(msg, s))
        assert opt_of(back) is None and back.header.ar == 2
        want = [(str(r.rname), r.rtype, r.ttl, str(r.rdata)) for r in records(parse(msg))]
        assert [(str(r.rname), r.rtype, r.ttl, str(r.rdata)) for r in records(back)] == want
        assert s.ttls == [60, 100, 77, 78]
        new = wire.with_ttls(s.body, s.ttl_offsets, [1, 2, 3, 4], 0)
        assert ttls_of(parse(rebuilt(msg, s, new))) == [1, 2, 3, 4]

    def test_opt_before_records_that_compress_against_each_other(self) -> None:
        """Names after the OPT that point at each other (and into RDATA) still read back right."""
        extra = [
            opt(1232),
            RR("ns1.sub.example.com.", QTYPE.A, rdata=A("192.0.2.1"), ttl=5),
            RR("ns2.sub.example.com.", QTYPE.A, rdata=A("192.0.2.2"), ttl=6),
            RR("x.ns2.sub.example.com.", QTYPE.CNAME, rdata=CNAME("ns1.sub.example.com."), ttl=7),
        ]
        msg = reply(answers=[a(NAME, 60)], additional=extra)
        s = scan(msg)
        back = parse(rebuilt(msg, s))
        assert [(str(r.rname), str(r.rdata)) for r in records(back)] == [
            (NAME, "192.0.2.1"),
            ("ns1.sub.example.com.", "192.0.2.1"),
            ("ns2.sub.example.com.", "192.0.2.2"),
            ("x.ns2.sub.example.com.", "ns1.sub.example.com."),
        ]

    @pytest.mark.parametrize("rcode", [wire.FORMERR, wire.SERVFAIL, wire.NOTIMP])
    @pytest.mark.parametrize("with_opt", [False, True])
    def test_error_without_a_question(self, rcode: int, with_opt: bool) -> None:
        """FORMERR, SERVFAIL and NOTIMP may come back without the question: that rcode, nothing else."""
        msg = struct.pack("!HBBHHHH", 0x1234, wire.QR | wire.RD, wire.RA | rcode, 0, 0, 0, int(with_opt))
        s = scan(msg + (wire.opt_record(1232, False) if with_opt else b""))
        assert (s.rcode, s.answers, s.authority, s.additional, s.body, s.ttls) == (rcode, 0, 0, 0, b"", [])

    @pytest.mark.parametrize(
        ("answers", "qtype", "has"),
        [
            ([a(NAME, 60)], "A", True),
            ([cname(NAME, "web.example.com.", 60)], "A", False),
            ([cname(NAME, "web.example.com.", 60), a("web.example.com.", 60)], "A", True),
            ([cname(NAME, "web.example.com.", 60)], "CNAME", True),
            ([cname(NAME, "web.example.com.", 60), a("web.example.com.", 60)], "AAAA", False),
            ([a(NAME, 60)], "ANY", True),
            ([], "ANY", False),
        ],
    )
    def test_has_type(self, answers: list[RR], qtype: str, has: bool) -> None:
        """Whether the answer section holds the asked type (a bare CNAME chain does not)."""
        assert scan(reply(NAME, qtype, answers=answers), qtype=qtype).has_type is has

    def test_asked_type_in_authority_does_not_count(self) -> None:
        """Only the answer section answers."""
        msg = reply(answers=[cname(NAME, "web.example.com.", 60)], additional=[a("web.example.com.", 60)])
        assert scan(msg).has_type is False

    def test_without_opt_body_is_unchanged(self) -> None:
        """Without OPT nothing is cut and the additional count stays."""
        msg = reply(answers=[a(NAME, 60)], additional=[a("x.example.com.", 5)])
        s = scan(msg)
        assert s.additional == 1 and s.body == msg[qend_of(NAME) :]

    @pytest.mark.parametrize(
        ("raw", "read"),
        [(0, 0), (1, 1), (0x7FFFFFFF, 0x7FFFFFFF), (0x80000000, 0), (0xFFFFFFFF, 0), (0x80000001, 0)],
    )
    def test_ttl_with_top_bit_reads_as_zero(self, raw: int, read: int) -> None:
        """RFC 2181 8: a TTL with the most significant bit set is treated as zero."""
        s = scan(reply(answers=[a(NAME, raw)]))
        assert s.ttls == [read]

    def test_soa_in_authority(self) -> None:
        """The first SOA of the authority section gives the RFC 2308 negative TTL inputs."""
        msg = reply(rcode=3, authority=[soa(ZONE, 3600, 300), soa("other.", 1, 2)])
        s = scan(msg)
        assert (s.soa_ttl, s.soa_minimum) == (3600, 300)

    def test_soa_in_answer_is_not_a_negative_ttl(self) -> None:
        """An SOA answering an SOA query is data, not the negative-caching SOA."""
        s = scan(reply(ZONE, "SOA", answers=[soa(ZONE, 3600, 300)]), name=ZONE, qtype="SOA")
        assert (s.soa_ttl, s.soa_minimum) == (None, None)

    def test_no_soa(self) -> None:
        """Without an SOA there is nothing to compute a negative TTL from."""
        s = scan(reply(rcode=3))
        assert (s.soa_ttl, s.soa_minimum, s.ttls) == (None, None, [])

    def test_soa_ttl_with_top_bit(self) -> None:
        """The SOA's own TTL follows RFC 2181 8 too."""
        s = scan(reply(rcode=3, authority=[soa(ZONE, 0x80000000, 300)]))
        assert s.soa_ttl == 0 and s.soa_minimum == 300

    def test_ttl_offsets_point_at_every_ttl(self) -> None:
        """Writing new TTLs at the offsets changes exactly the TTLs dnslib sees, record by record."""
        msg = reply(
            "WwW.Example.com.",
            answers=[cname("www.example.com.", "web.example.com.", 11), a("web.example.com.", 12)],
            authority=[soa(ZONE, 13, 5)],
            additional=[a("ns1.example.com.", 14, "192.0.2.53"), opt()],
        )
        s = scan(msg, name="www.example.com.")
        assert s.ttls == [11, 12, 13, 14] == ttls_of(parse(msg))
        new = [1001, 1002, 1003, 1004]
        back = parse(rebuilt(msg, s, wire.with_ttls(s.body, s.ttl_offsets, new, 0)))
        assert ttls_of(back) == new
        assert [r.rdata.__class__ for r in records(back)] == [r.rdata.__class__ for r in records(parse(msg))]

    def test_compressed_names(self) -> None:
        """Answers whose names point back into the question (dnslib compresses) are read correctly."""
        msg = reply(
            NAME,
            answers=[cname(NAME, "cdn.example.com.", 30), a("cdn.example.com.", 10), a("cdn.example.com.", 20)],
            authority=[soa(ZONE, 40, 5)],
        )
        assert b"\xc0\x0c" in msg  # a pointer to the question name: the case under test
        s = scan(msg)
        assert s.ttls == [30, 10, 20, 40]
        back = parse(rebuilt(msg, s, wire.with_ttls(s.body, s.ttl_offsets, [3, 1, 2, 4], 0)))
        assert [(str(r.rname), r.ttl) for r in records(back)] == [
            (NAME, 3),
            ("cdn.example.com.", 1),
            ("cdn.example.com.", 2),
            (ZONE, 4),
        ]


# ---------------------------------------------------------------------------- with_ttls


class TestWithTtls:
    """Lowering every TTL by the seconds elapsed."""

    @pytest.mark.parametrize(
        ("elapsed", "expected"),
        [
            (0, [30, 10, 0, 100]),
            (1, [29, 9, 0, 99]),
            (10, [20, 0, 0, 90]),
            (11, [19, 0, 0, 89]),
            (30, [0, 0, 0, 70]),
            (1000, [0, 0, 0, 0]),
        ],
    )
    def test_decrement_per_record_never_below_zero(self, elapsed: int, expected: list[int]) -> None:
        """Each record keeps its own TTL minus `elapsed`, floored at 0."""
        msg = reply(
            answers=[cname(NAME, "a.example.com.", 30), a("a.example.com.", 10)],
            authority=[soa(ZONE, 0, 60)],
            additional=[a("b.example.com.", 100)],
        )
        s = scan(msg)
        body = wire.with_ttls(s.body, s.ttl_offsets, s.ttls, elapsed)
        assert ttls_of(parse(rebuilt(msg, s, body))) == expected

    def test_only_ttl_bytes_change(self) -> None:
        """Everything except the four bytes at each offset is left alone, and the input is not modified."""
        msg = reply(answers=[a(NAME, 30), a(NAME, 40, "192.0.2.9")])
        s = scan(msg)
        before = bytes(s.body)
        body = wire.with_ttls(s.body, s.ttl_offsets, s.ttls, 5)
        assert s.body == before and len(body) == len(before)
        changed = {i for i in range(len(body)) if body[i] != before[i]}
        allowed = {off + k for off in s.ttl_offsets for k in range(4)}
        assert changed and changed <= allowed


def test_record_end_walks_a_body_record_by_record() -> None:
    """record_end steps over whole records, compressed names included, to the end of the body."""
    msg = reply(answers=[cname(NAME, "web.example.com.", 60), a("web.example.com.", 10)], authority=[soa(ZONE, 5, 5)])
    s = scan(msg)
    ends = []
    i = 0
    for _ in range(3):
        i = wire.record_end(s.body, i)
        ends.append(i)
    assert ends[-1] == len(s.body) and ends == sorted(set(ends))
    assert [off + 6 < end for off, end in zip(s.ttl_offsets, ends)] == [True] * 3  # each TTL inside its record
    with pytest.raises(wire.Malformed):
        wire.record_end(s.body, len(s.body) - 3)


def test_reply_id() -> None:
    """reply_id reads the ID of any message that has one."""
    assert wire.reply_id(reply(qid=0xABCD)) == 0xABCD
    assert wire.reply_id(reply(qid=0)) == 0


class TestUncompressed:
    def test_a_name_running_past_its_records_data_is_malformed(self) -> None:
        """A CNAME whose name ends past its RDLENGTH (in the next record's owner): refused, not copied.

        scan_reply walks records by their lengths and accepts it; writing its names out must refuse it
        (the RFC 8020 cut then keeps the reply as an ordinary entry). Compiled, the slice after
        such a name used to raise SystemError instead.
        """
        q = wire.scan_query(query(NAME))
        lname, qtc = q.lname, q.key[len(q.lname) : len(q.lname) + 4]
        cname = struct.pack("!HHHIH", 0xC00C, QTYPE.CNAME, CLASS.IN, 60, 2) + b"\x01a"  # "a." needs 3 bytes
        a = b"\x00" + struct.pack("!HHIH", QTYPE.A, CLASS.IN, 60, 4) + bytes((192, 0, 2, 1))  # the root's zero ends it
        msg = struct.pack("!HBBHHHH", 0x1234, wire.QR | wire.RD, wire.RA, 1, 2, 0, 0) + lname + qtc + cname + a
        scan = wire.scan_reply(msg, lname, qtc)
        assert scan.answers == 2
        with pytest.raises(wire.Malformed):
            wire.uncompressed(scan, lname, qtc)
