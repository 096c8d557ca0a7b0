"""The test helpers themselves: if these lie, every integration test lies with them."""

from __future__ import annotations

import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dnslib import QTYPE, RCODE, DNSRecord

from tests.support.clients import dig, kdig, kdig_many, parse_output, raw_tcp, raw_udp
from tests.support.fakeupstream import Behaviour, FakeUpstream
from tests.support.net import free_port
from tests.support.nsd import NSD, NSDError
from tests.support.samplezone import zone_texts

needs_dig = pytest.mark.skipif(shutil.which("dig") is None, reason="dig not installed (Debian bind9-dnsutils)")
needs_kdig = pytest.mark.skipif(shutil.which("kdig") is None, reason="kdig not installed (Debian knot-dnsutils)")
needs_nsd = pytest.mark.skipif(
    shutil.which("nsd") is None or shutil.which("nsd-control") is None, reason="nsd not installed (Debian nsd)"
)

WEB = "web.default.svc.cluster.local"
KUBE = "kubernetes.default.svc.cluster.local"
BIG = "big.default.svc.cluster.local"
HOST = "127.0.0.1"


def udp(up: FakeUpstream, name: str = WEB, qtype: str = "A", timeout: float = 1.0) -> tuple[DNSRecord, bytes | None]:
    query = DNSRecord.question(name, qtype)
    return query, raw_udp(HOST, up.port, query.pack(), timeout)


def tcp(up: FakeUpstream, name: str = WEB, qtype: str = "A", timeout: float = 1.0) -> tuple[DNSRecord, list[bytes]]:
    query = DNSRecord.question(name, qtype)
    return query, raw_tcp(HOST, up.port, [query.pack()], timeout)


# --------------------------------------------------------------------------- net


def test_free_port_is_free_for_udp_and_tcp() -> None:
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        port = free_port(family, host)
        with socket.socket(family, socket.SOCK_DGRAM) as u, socket.socket(family, socket.SOCK_STREAM) as t:
            u.bind((host, port))
            t.bind((host, port))


# --------------------------------------------------------------------------- NSD


@pytest.fixture(scope="module")
def nsd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NSD]:
    if shutil.which("nsd") is None:
        pytest.skip("nsd not installed (Debian nsd)")
    with NSD(zone_texts(), tmp_path_factory.mktemp("nsd")) as server:
        yield server


@needs_nsd
@needs_dig
@pytest.mark.integration
class TestNSD:
    def test_answers_the_sample_zone(self, nsd: NSD) -> None:
        r = dig(nsd.address, nsd.port, KUBE)
        assert r.rcode == "NOERROR" and r.aa and r.rdatas("A") == ["192.0.2.1"]
        assert dig(nsd.address, nsd.port, "_http._tcp." + WEB, "SRV").rdatas() == [f"0 100 80 {WEB}."]
        assert dig(nsd.address, nsd.port, "10.2.0.192.in-addr.arpa", "PTR").rdatas() == [
            "kube-dns.kube-system.svc.cluster.local."
        ]
        assert dig(nsd.address, nsd.port, "x.wild.cluster.local").rdatas() == ["203.0.113.7"]

    def test_negative_answers_like_the_sample_responder(self, nsd: NSD) -> None:
        nx = dig(nsd.address, nsd.port, "nothere.default.svc.cluster.local")
        assert nx.rcode == "NXDOMAIN" and [(a.type, a.ttl) for a in nx.authority] == [("SOA", 5)]
        nodata = dig(nsd.address, nsd.port, WEB, "TXT")
        assert nodata.rcode == "NOERROR" and not nodata.answer and nodata.authority[0].type == "SOA"
        assert dig(nsd.address, nsd.port, "example.com").rcode == "REFUSED"

    def test_truncates_big_over_udp(self, nsd: NSD) -> None:
        assert dig(nsd.address, nsd.port, BIG).tc
        assert len(dig(nsd.address, nsd.port, BIG, tcp=True).answer) >= 60

    def test_query_count(self, nsd: NSD) -> None:
        before = nsd.query_count()
        for _ in range(3):
            dig(nsd.address, nsd.port, WEB)
        assert nsd.query_count() - before == 3

    def test_start_failure_reports_the_log(self, tmp_path: Path) -> None:
        with pytest.raises(NSDError, match="zone"):
            NSD({"cluster.local.": "this is not a zone file\n"}, tmp_path).start()

    def test_stop_ends_the_process(self, tmp_path: Path) -> None:
        server = NSD(zone_texts(), tmp_path).start()
        proc = server._proc
        assert proc is not None
        server.stop()
        assert proc.poll() is not None


# --------------------------------------------------------------------------- fake upstream


@pytest.fixture(scope="module")
def shared_upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as up:
        yield up


@pytest.fixture
def up(shared_upstream: FakeUpstream) -> FakeUpstream:
    shared_upstream.reset()
    return shared_upstream


def test_normal_is_authoritative(up: FakeUpstream) -> None:
    q, wire = udp(up)
    reply = DNSRecord.parse(wire or b"")
    assert reply.header.id == q.header.id and reply.header.aa and str(reply.rr[0].rdata) == "192.0.2.20"
    _, wires = tcp(up, BIG)
    assert len(DNSRecord.parse(wires[0]).rr) >= 60


def test_log_and_counts(up: FakeUpstream) -> None:
    q1, _ = udp(up)
    q2, _ = tcp(up, KUBE.upper() + ".", "AAAA")
    assert up.count() == 2 and up.count(WEB) == 1 and up.count(KUBE) == 1
    assert up.count(transport="tcp") == 1 and up.count(WEB, "tcp") == 0
    first, second = up.received()
    assert (first.transport, first.qname, first.qtype, first.id) == ("udp", WEB + ".", "A", q1.header.id)
    assert (second.transport, second.qname, second.qtype, second.id) == ("tcp", KUBE + ".", "AAAA", q2.header.id)
    assert first.src_port > 0
    up.reset()
    assert up.count() == 0 and up.received() == []


def test_delay_does_not_block_other_queries(up: FakeUpstream) -> None:
    up.set_behaviour(KUBE, Behaviour.delay(0.6))
    slow, fast = DNSRecord.question(KUBE), DNSRecord.question(WEB)
    started = time.monotonic()
    replies = raw_tcp(HOST, up.port, [slow.pack(), fast.pack()], timeout=3)
    assert [DNSRecord.parse(r).header.id for r in replies] == [fast.header.id, slow.header.id]  # pipelined
    assert time.monotonic() - started >= 0.55
    _, wire = udp(up, WEB, timeout=0.3)
    assert wire is not None


def test_drop(up: FakeUpstream) -> None:
    up.set_behaviour(WEB, Behaviour.drop())
    assert udp(up, timeout=0.3)[1] is None
    assert tcp(up, timeout=0.3)[1] == []
    assert udp(up, KUBE, timeout=1)[1] is not None
    assert up.count(WEB) == 2


def test_close_ends_the_tcp_connection(up: FakeUpstream) -> None:
    up.set_behaviour(WEB, Behaviour.close(), transport="tcp")
    started = time.monotonic()
    assert tcp(up, timeout=2)[1] == []
    assert time.monotonic() - started < 1.5  # EOF, not a timeout
    assert udp(up)[1] is not None  # the rule was for TCP only


def test_truncate_udp(up: FakeUpstream) -> None:
    up.set_behaviour(None, Behaviour.truncate_udp())
    reply = DNSRecord.parse(udp(up)[1] or b"")
    assert reply.header.tc == 1 and not reply.rr
    full = DNSRecord.parse(tcp(up)[1][0])
    assert full.header.tc == 0 and str(full.rr[0].rdata) == "192.0.2.20"


def test_garbage_and_short(up: FakeUpstream) -> None:
    up.set_behaviour(WEB, Behaviour.garbage())
    _, wire = udp(up)
    assert wire is not None and 12 <= len(wire) <= 100
    up.set_behaviour(WEB, Behaviour.short())
    _, wire = udp(up)
    assert wire is not None and 0 < len(wire) < 12
    _, wires = tcp(up)
    assert len(wires) == 1 and len(wires[0]) < 12


def test_wrong_id(up: FakeUpstream) -> None:
    up.set_behaviour(WEB, Behaviour.wrong_id())
    q, wire = udp(up)
    reply = DNSRecord.parse(wire or b"")
    assert reply.header.id != q.header.id and reply.rr


def test_wrong_question(up: FakeUpstream) -> None:
    up.set_behaviour(WEB, Behaviour.wrong_question())
    q, wire = udp(up)
    reply = DNSRecord.parse(wire or b"")
    assert reply.header.id == q.header.id
    assert str(reply.q.qname) != str(q.q.qname) and reply.rr


@pytest.mark.parametrize(
    ("behaviour", "rcode"),
    [
        (Behaviour.servfail(), RCODE.SERVFAIL),
        (Behaviour.refused(), RCODE.REFUSED),
        (Behaviour.formerr(), RCODE.FORMERR),
    ],
)
def test_error_rcodes(up: FakeUpstream, behaviour: Behaviour, rcode: int) -> None:
    up.set_behaviour(WEB, behaviour)
    reply = DNSRecord.parse(udp(up)[1] or b"")
    assert reply.header.rcode == rcode and not reply.rr and not reply.auth


def test_negative_without_soa(up: FakeUpstream) -> None:
    up.set_behaviour(WEB, Behaviour.nxdomain_no_soa())
    reply = DNSRecord.parse(udp(up)[1] or b"")
    assert reply.header.rcode == RCODE.NXDOMAIN and not reply.auth
    up.set_behaviour(WEB, Behaviour.nodata_no_soa())
    reply = DNSRecord.parse(udp(up)[1] or b"")
    assert reply.header.rcode == RCODE.NOERROR and not reply.rr and not reply.auth


@pytest.mark.parametrize("ttl", [0, 1, 3600, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF])
def test_ttl(up: FakeUpstream, ttl: int) -> None:
    up.set_behaviour(None, Behaviour.ttl(ttl))
    reply = DNSRecord.parse(udp(up, "_http._tcp." + WEB, "SRV")[1] or b"")
    assert [rr.ttl for rr in reply.rr + reply.ar] == [ttl] * 3
    reply = DNSRecord.parse(udp(up, "nothere.cluster.local")[1] or b"")
    assert reply.auth[0].ttl == ttl


def test_custom(up: FakeUpstream) -> None:
    def answer(query: DNSRecord) -> bytes | None:
        reply = query.reply()
        reply.header.rcode = RCODE.NOTIMP
        return reply.pack()

    up.set_behaviour(WEB, Behaviour.custom(answer))
    assert DNSRecord.parse(udp(up)[1] or b"").header.rcode == RCODE.NOTIMP
    up.set_behaviour(WEB, Behaviour.custom(lambda q: None))
    assert udp(up, timeout=0.3)[1] is None


def test_rule_precedence_and_times(up: FakeUpstream) -> None:
    up.set_behaviour(None, Behaviour.servfail())
    up.set_behaviour(WEB, Behaviour.normal())
    assert DNSRecord.parse(udp(up)[1] or b"").header.rcode == RCODE.NOERROR
    assert DNSRecord.parse(udp(up, KUBE)[1] or b"").header.rcode == RCODE.SERVFAIL
    up.clear_behaviours()
    up.set_behaviour(KUBE, Behaviour.refused(), times=2)
    rcodes = [DNSRecord.parse(udp(up, KUBE)[1] or b"").header.rcode for _ in range(3)]
    assert rcodes == [RCODE.REFUSED, RCODE.REFUSED, RCODE.NOERROR]


def test_malformed_queries_are_logged(up: FakeUpstream) -> None:
    assert raw_udp(HOST, up.port, b"\xab\xcd\x01", 0.3) is None
    assert up.received()[0][:4] == ("udp", "", "", 0xABCD)


def test_wait_for_count(up: FakeUpstream) -> None:
    assert up.wait_for_count(1, timeout=0.1) == 0
    udp(up)
    assert up.wait_for_count(1, WEB, "udp", timeout=1) == 1


# --------------------------------------------------------------------------- clients


def test_parse_output_dig_and_kdig_formats() -> None:
    dig_text = """;; ->>HEADER<<- opcode: QUERY, status: NXDOMAIN, id: 4242
;; flags: qr aa rd; QUERY: 1, ANSWER: 0, AUTHORITY: 1, ADDITIONAL: 1

;; OPT PSEUDOSECTION:
; EDNS: version: 0, flags:; udp: 1232
;; QUESTION SECTION:
;nothere.cluster.local.\t\tIN\tA

;; AUTHORITY SECTION:
cluster.local.\t\t5\tIN\tSOA\tns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 5

;; Query time: 3 msec
;; SERVER: 127.0.0.1#5353(127.0.0.1) (UDP)
"""
    (r,) = parse_output(dig_text)
    assert (r.rcode, r.id, r.flags, r.edns, r.udp_size) == ("NXDOMAIN", 4242, {"qr", "aa", "rd"}, True, 1232)
    assert r.question == [("nothere.cluster.local.", "A")]
    assert r.authority[0].type == "SOA" and r.authority[0].ttl == 5
    assert (r.query_time_ms, r.transport) == (3.0, "UDP")
    kdig_text = """;; ->>HEADER<<- opcode: QUERY; status: NOERROR; id: 17979
;; Flags: qr aa rd; QUERY: 1; ANSWER: 1; AUTHORITY: 0; ADDITIONAL: 0

;; QUESTION SECTION:
;; info.cluster.local. \t\tIN\tTXT

;; ANSWER SECTION:
info.cluster.local. \t30\tIN\tTXT\t"two  spaces" "x"

;; From 127.0.0.1@37875(TCP) in 0.7 ms
"""
    (k,) = parse_output(kdig_text)
    assert k.rdatas("TXT") == ['"two  spaces" "x"'] and k.question == [("info.cluster.local.", "TXT")]
    assert (k.transport, k.query_time_ms, k.edns) == ("TCP", 0.7, False)


@needs_dig
@pytest.mark.integration
def test_dig_timeout(up: FakeUpstream) -> None:
    up.set_behaviour(None, Behaviour.drop())
    r = dig(HOST, up.port, WEB, timeout=1)
    assert r.timed_out and r.rcode is None and r.returncode != 0


@needs_dig
@pytest.mark.integration
def test_dig_reports_query_time(up: FakeUpstream) -> None:
    up.set_behaviour(WEB, Behaviour.delay(0.3))
    r = dig(HOST, up.port, WEB)
    assert r.query_time_ms is not None and r.query_time_ms >= 250


@needs_kdig
@pytest.mark.integration
def test_kdig_single_and_many(up: FakeUpstream) -> None:
    r = kdig(HOST, up.port, KUBE, "AAAA")
    assert r.rcode == "NOERROR" and r.rdatas() == ["2001:db8::1"] and not r.edns
    assert kdig(HOST, up.port, BIG).tc
    assert kdig(HOST, up.port, BIG, "A", "+edns").edns
    up.reset()
    results = kdig_many(HOST, up.port, [(WEB, "A"), (KUBE, "A"), ("info.cluster.local", "TXT")])
    assert results[2].rdatas("TXT") == ['"nodecache sample zone" "not a real cluster"']
    # All three went over one connection (one after the other: kdig does not pipeline).
    assert up.tcp_connections == 1 and len({r.src_port for r in up.received()}) == 1
    # After a timeout kdig opens a new connection for the next query.
    up.set_behaviour(KUBE, Behaviour.drop())
    results = kdig_many(HOST, up.port, [(WEB, "A"), (KUBE, "A"), ("info.cluster.local", "TXT")], timeout=1)
    assert [r.timed_out for r in results] == [False, True, False]


def test_raw_tcp_pipelines_and_bounds_time(up: FakeUpstream) -> None:
    queries = [DNSRecord.question(n) for n in (WEB, KUBE, "x.wild.cluster.local")]
    replies = raw_tcp(HOST, up.port, [q.pack() for q in queries])
    assert sorted(DNSRecord.parse(r).header.id for r in replies) == sorted(q.header.id for q in queries)
    assert up.tcp_connections == 1
    up.set_behaviour(KUBE, Behaviour.drop())
    started = time.monotonic()
    assert len(raw_tcp(HOST, up.port, [q.pack() for q in queries], timeout=0.5)) == 2
    assert time.monotonic() - started < 1.5


def test_raw_tcp_framed_sends_bytes_as_given(up: FakeUpstream) -> None:
    q = DNSRecord.question(WEB).pack()
    (reply,) = raw_tcp(HOST, up.port, [len(q).to_bytes(2, "big") + q], framed=True)
    assert DNSRecord.parse(reply).q.qtype == QTYPE.A


@pytest.mark.parametrize(("ask", "package"), [(dig, "bind9-dnsutils"), (kdig, "knot-dnsutils")])
def test_missing_client_skips_the_test_naming_its_package(
    ask: object, package: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without dig or kdig a test that asks with it is skipped with the package to install, not failed."""
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no client is found
    with pytest.raises(pytest.skip.Exception) as info:
        ask(HOST, 9, WEB)  # type: ignore[operator]
    assert "is not installed" in str(info.value) and package in str(info.value)
