"""The sample zone and its responder: the data every other test relies on, checked once here."""

from __future__ import annotations

import ipaddress
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dnslib import QTYPE, RCODE, DNSRecord

from tests.support.clients import dig, raw_tcp, raw_udp
from tests.support.net import free_port
from tests.support.samplezone import (
    CHECKOUT,
    EDNS_UDP_SIZE,
    RUN_MODULE,
    SOA_MINIMUM,
    Authority,
    SampleResponder,
    all_records,
    cluster_records,
    encode,
    reverse_records,
    zone_texts,
)

needs_dig = pytest.mark.skipif(shutil.which("dig") is None, reason="dig not installed (Debian bind9-dnsutils)")
needs_checkzone = pytest.mark.skipif(
    shutil.which("nsd-checkzone") is None, reason="nsd-checkzone not installed (Debian nsd)"
)

DOC_NETS = [
    ipaddress.ip_network(n)
    for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32", "169.254.0.0/16")
]
SVC = "default.svc.cluster.local"


def ask(name: str, qtype: str = "A", edns: int | None = None, transport: str = "udp") -> DNSRecord:
    """Answer a query through the same code path the servers use, without sockets."""
    query = DNSRecord.question(name, qtype)
    if edns is not None:
        from dnslib import EDNS0

        query.add_ar(EDNS0(udp_len=edns))
    return DNSRecord.parse(encode(Authority(all_records()).answer(query), query, transport))


# --------------------------------------------------------------------------- data


def test_every_address_is_a_documentation_address() -> None:
    for rr in all_records():
        if rr.rtype in (QTYPE.A, QTYPE.AAAA):
            ip = ipaddress.ip_address(str(rr.rdata))
            assert any(ip in net for net in DOC_NETS), f"{rr.rname} {ip} is not a documentation address"


def test_required_names_exist() -> None:
    owners = {str(rr.rname).lower() for rr in cluster_records()}
    for name in (
        f"kubernetes.{SVC}.",
        "kube-dns.kube-system.svc.cluster.local.",
        f"web.{SVC}.",
        f"_http._tcp.web.{SVC}.",
        f"_https._tcp.web.{SVC}.",
        f"big.{SVC}.",
        "192-0-2-45.default.pod.cluster.local.",
        "*.wild.cluster.local.",
        f"alias.{SVC}.",
    ):
        assert name in owners
    assert any(rr.rtype == QTYPE.TXT for rr in cluster_records())


def test_big_answer_exceeds_1232_bytes() -> None:
    reply = Authority(all_records()).answer(DNSRecord.question(f"big.{SVC}", "A"))
    assert len(reply.rr) >= 60
    assert len(reply.pack()) > 1232


def test_other_domain() -> None:
    owners = {str(rr.rname) for rr in cluster_records("example.internal")}
    assert "kubernetes.default.svc.example.internal." in owners
    ptrs = [str(rr.rdata) for rr in reverse_records("example.internal") if rr.rtype == QTYPE.PTR]
    assert "kubernetes.default.svc.example.internal." in ptrs


def test_zone_texts_have_one_soa_each() -> None:
    texts = zone_texts()
    assert set(texts) == {"cluster.local.", "2.0.192.in-addr.arpa.", "8.b.d.0.1.0.0.2.ip6.arpa."}
    for text in texts.values():
        assert sum(" SOA " in line for line in text.splitlines()) == 1


@needs_checkzone
@pytest.mark.integration
def test_zone_texts_load_in_nsd(tmp_path: Path) -> None:
    for name, text in zone_texts().items():
        path = tmp_path / f"{name}zone"
        path.write_text(text)
        done = subprocess.run(["nsd-checkzone", name, str(path)], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stdout + done.stderr


# --------------------------------------------------------------------------- answers (no sockets)


def test_cname_is_chased_in_zone() -> None:
    reply = ask(f"alias.{SVC}")
    assert [QTYPE[rr.rtype] for rr in reply.rr] == ["CNAME", "A"]
    assert str(reply.rr[1].rdata) == "192.0.2.20"


def test_owner_name_keeps_the_querys_case() -> None:
    reply = ask(f"KuBeRnEtEs.{SVC}")
    assert str(reply.rr[0].rname) == f"KuBeRnEtEs.{SVC}."


def test_negative_soa_ttl_is_the_minimum() -> None:
    reply = ask(f"nothere.{SVC}")
    assert reply.header.rcode == RCODE.NXDOMAIN
    assert reply.auth[0].ttl == SOA_MINIMUM


def test_empty_non_terminal_is_nodata() -> None:
    reply = ask("svc.cluster.local")
    assert reply.header.rcode == RCODE.NOERROR and not reply.rr
    assert QTYPE[reply.auth[0].rtype] == "SOA"


def test_wildcard_matches_several_labels_but_not_the_parent() -> None:
    assert str(ask("a.b.wild.cluster.local").rr[0].rdata) == "203.0.113.7"
    assert ask("wild.cluster.local").header.rcode == RCODE.NOERROR  # exists, empty: NODATA
    assert not ask("wild.cluster.local").rr


def test_medium_fits_edns_but_not_512() -> None:
    assert ask(f"medium.{SVC}").header.tc == 1
    full = ask(f"medium.{SVC}", edns=1232)
    assert full.header.tc == 0 and len(full.rr) > 30
    opt = [rr for rr in full.ar if rr.rtype == QTYPE.OPT]
    assert opt and opt[0].rclass == EDNS_UDP_SIZE


def test_srv_additional_has_target_addresses() -> None:
    reply = ask(f"_http._tcp.web.{SVC}", "SRV")
    assert {QTYPE[rr.rtype] for rr in reply.ar} == {"A", "AAAA"}


def test_malformed_and_non_queries() -> None:
    with SampleResponder() as srv:
        assert srv.respond(b"\x12\x34", "udp") is None  # no header: silence
        formerr = DNSRecord.parse(srv.respond(b"\x12\x34\x01\x00" + b"\x00" * 7 + b"\x01junk", "udp") or b"")
        assert formerr.header.id == 0x1234 and formerr.header.rcode == RCODE.FORMERR
        reply = DNSRecord.question(f"web.{SVC}").reply()
        assert srv.respond(reply.pack(), "udp") is None  # a response is never answered
        notify = DNSRecord.question("cluster.local", "SOA")
        notify.header.opcode = 4
        assert DNSRecord.parse(srv.respond(notify.pack(), "udp") or b"").header.rcode == RCODE.NOTIMP


# --------------------------------------------------------------------------- the running server


@pytest.fixture(scope="module")
def responder() -> Iterator[SampleResponder]:
    with SampleResponder() as srv:
        yield srv


def test_port_zero_binds_udp_and_tcp_on_one_port(responder: SampleResponder) -> None:
    assert responder.port > 0
    q = DNSRecord.question(f"web.{SVC}")
    assert DNSRecord.parse(raw_udp("127.0.0.1", responder.port, q.pack()) or b"").rr
    assert DNSRecord.parse(raw_tcp("127.0.0.1", responder.port, [q.pack()])[0]).rr


def test_stop_releases_the_port() -> None:
    srv = SampleResponder().start()
    port = srv.port
    srv.stop()
    with SampleResponder(port=port):
        pass


def test_ipv6_loopback() -> None:
    with SampleResponder(address="::1") as srv:
        reply = raw_udp("::1", srv.port, DNSRecord.question(f"web.{SVC}", "AAAA").pack())
        assert str(DNSRecord.parse(reply or b"").rr[0].rdata) == "2001:db8::20"


@needs_dig
@pytest.mark.integration
class TestWithDig:
    def test_a(self, responder: SampleResponder) -> None:
        r = dig("127.0.0.1", responder.port, f"kubernetes.{SVC}")
        assert r.rcode == "NOERROR" and r.aa and "qr" in r.flags and "ra" not in r.flags
        assert r.rdatas("A") == ["192.0.2.1"] and r.ttls() == [30]

    def test_aaaa(self, responder: SampleResponder) -> None:
        assert dig("127.0.0.1", responder.port, f"kubernetes.{SVC}", "AAAA").rdatas() == ["2001:db8::1"]

    def test_srv(self, responder: SampleResponder) -> None:
        r = dig("127.0.0.1", responder.port, f"_https._tcp.web.{SVC}", "SRV")
        assert r.rdatas("SRV") == [f"0 100 443 web.{SVC}."]

    def test_ptr_v4_and_v6(self, responder: SampleResponder) -> None:
        r = dig("127.0.0.1", responder.port, "1.2.0.192.in-addr.arpa", "PTR")
        assert r.rdatas("PTR") == [f"kubernetes.{SVC}."]
        r = dig("127.0.0.1", responder.port, "45.2.0.192.in-addr.arpa", "PTR")
        assert r.rdatas("PTR") == ["192-0-2-45.default.pod.cluster.local."]
        v6 = "1." + "0." * 23 + "8.b.d.0.1.0.0.2.ip6.arpa"
        assert dig("127.0.0.1", responder.port, v6, "PTR").rdatas() == [f"kubernetes.{SVC}."]

    def test_nxdomain_has_soa(self, responder: SampleResponder) -> None:
        r = dig("127.0.0.1", responder.port, f"nothere.{SVC}")
        assert r.rcode == "NXDOMAIN" and not r.answer
        assert [(a.type, a.ttl) for a in r.authority] == [("SOA", SOA_MINIMUM)]

    def test_nodata_has_soa(self, responder: SampleResponder) -> None:
        r = dig("127.0.0.1", responder.port, f"web.{SVC}", "TXT")
        assert r.rcode == "NOERROR" and not r.answer and r.authority[0].type == "SOA"

    def test_wildcard(self, responder: SampleResponder) -> None:
        r = dig("127.0.0.1", responder.port, "unique-123.wild.cluster.local")
        assert r.answer == [r.answer[0]._replace(rdata="203.0.113.7")]
        assert r.answer[0].name == "unique-123.wild.cluster.local."

    def test_cname(self, responder: SampleResponder) -> None:
        r = dig("127.0.0.1", responder.port, f"alias.{SVC}")
        assert [a.type for a in r.answer] == ["CNAME", "A"]

    def test_txt(self, responder: SampleResponder) -> None:
        r = dig("127.0.0.1", responder.port, "info.cluster.local", "TXT")
        assert r.rdatas("TXT") == ['"nodecache sample zone" "not a real cluster"']

    def test_big_truncated_over_udp_whole_over_tcp(self, responder: SampleResponder) -> None:
        udp = dig("127.0.0.1", responder.port, f"big.{SVC}")
        assert udp.tc and not udp.answer and udp.transport == "UDP"
        assert udp.edns and udp.udp_size == EDNS_UDP_SIZE
        tcp = dig("127.0.0.1", responder.port, f"big.{SVC}", tcp=True)
        assert not tcp.tc and len(tcp.answer) >= 60 and tcp.transport == "TCP"
        retried = dig("127.0.0.1", responder.port, f"big.{SVC}", retry_tcp=True)
        assert retried.retried_tcp and len(retried.answer) == len(tcp.answer)

    def test_edns_size_is_honoured(self, responder: SampleResponder) -> None:
        assert dig("127.0.0.1", responder.port, f"medium.{SVC}", "A", "+noedns").tc
        r = dig("127.0.0.1", responder.port, f"medium.{SVC}", "A", "+bufsize=1232")
        assert not r.tc and len(r.answer) > 30
        assert not dig("127.0.0.1", responder.port, f"web.{SVC}", "A", "+noedns").edns

    def test_refused_out_of_zone(self, responder: SampleResponder) -> None:
        r = dig("127.0.0.1", responder.port, "example.com")
        assert r.rcode == "REFUSED" and not r.aa


# --------------------------------------------------------------------------- python -m tests.support.samplezone


def test_main_serves_until_sigterm() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", RUN_MODULE, "--zone-port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=CHECKOUT,
    )
    try:
        query = DNSRecord.question(f"web.{SVC}").pack()
        deadline = time.monotonic() + 10
        reply = None
        while reply is None and time.monotonic() < deadline and proc.poll() is None:
            reply = raw_udp("127.0.0.1", port, query, timeout=0.2)
        assert reply is not None and DNSRecord.parse(reply).rr
        # The banner follows the zone's start; wait for it so the signal cannot overtake it.
        assert proc.stdout is not None
        banner = b""
        while b"Ctrl-C" not in banner and time.monotonic() < deadline:
            if select.select([proc.stdout], [], [], 0.2)[0]:
                banner += os.read(proc.stdout.fileno(), 65536)
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=10)
        out = (banner + rest).decode()
        assert proc.returncode == 0, out
        assert f"dig @127.0.0.1 -p {port} kubernetes.default.svc.cluster.local" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
