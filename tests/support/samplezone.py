"""A sample Kubernetes cluster zone and a small authoritative server for it.

`make run` puts the agent in front of this zone so a newcomer can `dig` something real
without a cluster; the tests use the same records (directly, through NSD, or through the
fault-injecting fake upstream) so every layer is exercised against one known data set.
Only dnslib, click and the standard library are used, and nothing in the agent imports this
module: it lives with the tests so it ships in neither the package nor the image. Run it
from the top of a checkout: `python -m tests.support.samplezone [--run-agent]`.

All addresses come from the documentation ranges (RFC 5737, RFC 3849) so nothing here can
ever collide with a real network.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Coroutine, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import click
from dnslib import (
    AAAA,
    CLASS,
    CNAME,
    EDNS0,
    NS,
    PTR,
    QTYPE,
    RCODE,
    RR,
    SOA,
    SRV,
    TXT,
    A,
    DNSHeader,
    DNSLabel,
    DNSRecord,
)

DEFAULT_DOMAIN = "cluster.local"
RECORD_TTL = 30
"""TTL of every record, as the brief for the sample cluster asks (CoreDNS itself defaults to 5)."""
SOA_TTL = 30
SOA_MINIMUM = 5
"""Negative-caching TTL (RFC 2308): the cache must use min(SOA TTL, MINIMUM) = 5 s."""
SOA_SERIAL = 2024010101
EDNS_UDP_SIZE = 1232
"""UDP payload size we advertise in our own OPT record (the DNS Flag Day 2020 value)."""
PLAIN_UDP_LIMIT = 512
QCLASS_ANY = 255
MAX_CNAME_CHAIN = 8
TCP_IDLE_SECONDS = 30.0
TCP_MAX_QUERIES_PER_CONNECTION = 100_000
BIG_A_COUNT = 100
"""Enough A records for `big` that its answer exceeds 1232 bytes (about 1.7 kB packed)."""
BIG_AAAA_COUNT = 60
MEDIUM_A_COUNT = 40
"""`medium` is between 512 and 1232 bytes: truncated without EDNS, whole with EDNS 1232."""
CLOSE_CONNECTION = b""
"""What `SampleResponder.handle` returns to have a TCP connection closed instead of answered."""
REVERSE_V4_ZONE = "2.0.192.in-addr.arpa"
CHECKOUT = Path(__file__).resolve().parents[2]
"""The checkout's top directory: `python -m tests.support.samplezone` must run from there."""
RUN_MODULE = "tests.support.samplezone"
REVERSE_V6_ZONE = "8.b.d.0.1.0.0.2.ip6.arpa"


# --------------------------------------------------------------------------- records


def _rr(name: str, rtype: int, rdata: object, ttl: int = RECORD_TTL) -> RR:
    return RR(name, rtype, CLASS.IN, ttl, rdata)


def _apex(zone: str, ns_host: str) -> list[RR]:
    """SOA and NS for a zone, shaped like CoreDNS's (ns.dns.<domain>, hostmaster.<domain>)."""
    hostmaster = "hostmaster." + ns_host.split(".", 2)[2]
    soa = SOA(ns_host, hostmaster, (SOA_SERIAL, 7200, 1800, 86400, SOA_MINIMUM))
    return [_rr(zone, QTYPE.SOA, soa, SOA_TTL), _rr(zone, QTYPE.NS, NS(ns_host))]


def cluster_records(domain: str = DEFAULT_DOMAIN) -> list[RR]:
    """Records of the cluster zone, shaped like the CoreDNS kubernetes plugin's answers."""
    d = domain.strip(".").lower()
    svc = f"default.svc.{d}"
    web = f"web.{svc}"
    recs = _apex(d, f"ns.dns.{d}")
    recs += [
        _rr(f"ns.dns.{d}", QTYPE.A, A("192.0.2.10")),
        _rr(f"kubernetes.{svc}", QTYPE.A, A("192.0.2.1")),
        _rr(f"kubernetes.{svc}", QTYPE.AAAA, AAAA("2001:db8::1")),
        _rr(f"_https._tcp.kubernetes.{svc}", QTYPE.SRV, SRV(0, 100, 443, f"kubernetes.{svc}")),
        _rr(f"kube-dns.kube-system.svc.{d}", QTYPE.A, A("192.0.2.10")),
        _rr(web, QTYPE.A, A("192.0.2.20")),
        _rr(web, QTYPE.AAAA, AAAA("2001:db8::20")),
        _rr(f"_http._tcp.{web}", QTYPE.SRV, SRV(0, 100, 80, web)),
        _rr(f"_https._tcp.{web}", QTYPE.SRV, SRV(0, 100, 443, web)),
        _rr(f"alias.{svc}", QTYPE.CNAME, CNAME(web)),
        _rr(f"192-0-2-45.default.pod.{d}", QTYPE.A, A("192.0.2.45")),
        _rr(f"*.wild.{d}", QTYPE.A, A("203.0.113.7")),
        _rr(f"info.{d}", QTYPE.TXT, TXT(["nodecache sample zone", "not a real cluster"])),
    ]
    # Headless services: one A per ready endpoint, as CoreDNS answers them.
    for i in range(BIG_A_COUNT):
        ip = f"192.0.2.{100 + i}" if i < 50 else f"198.51.100.{i - 49}"
        recs.append(_rr(f"big.{svc}", QTYPE.A, A(ip)))
    for i in range(BIG_AAAA_COUNT):
        recs.append(_rr(f"bigv6.{svc}", QTYPE.AAAA, AAAA(f"2001:db8::1:{i + 1:x}")))
    for i in range(MEDIUM_A_COUNT):
        recs.append(_rr(f"medium.{svc}", QTYPE.A, A(f"203.0.113.{100 + i}")))
    return recs


def reverse_records(domain: str = DEFAULT_DOMAIN) -> list[RR]:
    """PTR zones for the addresses above (CoreDNS answers these for service and pod IPs)."""
    d = domain.strip(".").lower()
    ns_host = f"ns.dns.{d}"
    v6_ptr = ".".join(reversed(ipaddress.ip_address("2001:db8::1").exploded.replace(":", "")))
    recs = _apex(REVERSE_V4_ZONE, ns_host) + _apex(REVERSE_V6_ZONE, ns_host)
    recs += [
        _rr(f"1.{REVERSE_V4_ZONE}", QTYPE.PTR, PTR(f"kubernetes.default.svc.{d}")),
        _rr(f"10.{REVERSE_V4_ZONE}", QTYPE.PTR, PTR(f"kube-dns.kube-system.svc.{d}")),
        _rr(f"45.{REVERSE_V4_ZONE}", QTYPE.PTR, PTR(f"192-0-2-45.default.pod.{d}")),
        _rr(f"{v6_ptr}.ip6.arpa", QTYPE.PTR, PTR(f"kubernetes.default.svc.{d}")),
    ]
    return recs


def all_records(domain: str = DEFAULT_DOMAIN) -> list[RR]:
    """Every zone's records together: what the sample responder serves by default."""
    return cluster_records(domain) + reverse_records(domain)


def _zone_origins(records: Iterable[RR]) -> list[DNSLabel]:
    """A zone starts wherever there is a SOA record."""
    return [rr.rname for rr in records if rr.rtype == QTYPE.SOA]


def zone_texts(domain: str = DEFAULT_DOMAIN) -> dict[str, str]:
    """Master files (RFC 1035) for each zone, keyed by zone name with a trailing dot.

    The texts load in NSD; record owners are absolute so $ORIGIN only documents the zone.
    """
    records = all_records(domain)
    origins = _zone_origins(records)
    texts: dict[str, str] = {}
    for origin in origins:
        own = [rr for rr in records if _zone_of(rr.rname, origins) == origin]
        # SOA first: master-file readers expect it at the top.
        own.sort(key=lambda rr: rr.rtype != QTYPE.SOA)
        lines = [f"$ORIGIN {origin}", f"$TTL {RECORD_TTL}"] + [rr.toZone() for rr in own]
        texts[str(origin)] = "\n".join(lines) + "\n"
    return texts


def _zone_of(name: DNSLabel, origins: Iterable[DNSLabel]) -> DNSLabel | None:
    """The longest origin that `name` is at or below, i.e. the zone authoritative for it."""
    best: DNSLabel | None = None
    for origin in origins:
        if name.matchSuffix(origin) and (best is None or len(origin.label) > len(best.label)):
            best = origin
    return best


# --------------------------------------------------------------------------- answers


class _Zone:
    """One zone's data indexed by owner name, with empty non-terminals remembered."""

    def __init__(self, origin: DNSLabel, records: Iterable[RR]) -> None:
        self.origin = origin
        self.nodes: dict[DNSLabel, list[RR]] = {}
        self.names: set[DNSLabel] = {origin}
        for rr in records:
            self.nodes.setdefault(rr.rname, []).append(rr)
            # Every ancestor up to the apex exists (possibly empty): NODATA, not NXDOMAIN.
            labels = rr.rname.label
            for cut in range(len(labels) - len(origin.label) + 1):
                self.names.add(DNSLabel(labels[cut:]))
        soas = self.nodes.get(origin, [])
        self.soa = next(rr for rr in soas if rr.rtype == QTYPE.SOA)

    def negative_soa(self) -> RR:
        """The SOA for the authority section, TTL capped at MINIMUM as RFC 2308 section 3 asks."""
        ttl = min(self.soa.ttl, self.soa.rdata.times[4])
        return RR(self.soa.rname, QTYPE.SOA, CLASS.IN, ttl, self.soa.rdata)

    def lookup(self, name: DNSLabel) -> list[RR] | None:
        """RRs owned by `name` (wildcards expanded, owner spelled as asked); None if no such name."""
        found = self.nodes.get(name, []) if name in self.names else self._wildcard(name)
        if found is None:
            return None
        return [RR(name, rr.rtype, rr.rclass, rr.ttl, rr.rdata) for rr in found]

    def _wildcard(self, name: DNSLabel) -> list[RR] | None:
        """RFC 4592: only the closest encloser's `*` child may synthesise an answer."""
        labels = name.label
        for cut in range(1, len(labels) - len(self.origin.label) + 1):
            encloser = DNSLabel(labels[cut:])
            if encloser in self.names:
                return self.nodes.get(DNSLabel((b"*", *encloser.label)))
        return None


class Authority:
    """Authoritative answers for a set of zones: the logic both test servers share."""

    def __init__(self, records: Iterable[RR]) -> None:
        records = list(records)
        origins = _zone_origins(records)
        grouped: dict[DNSLabel, list[RR]] = {o: [] for o in origins}
        for rr in records:
            origin = _zone_of(rr.rname, origins)
            if origin is None:
                raise ValueError(f"record {rr.rname} is outside every zone {origins}")
            grouped[origin].append(rr)
        self.zones = {o: _Zone(o, rrs) for o, rrs in grouped.items()}

    def zone_for(self, name: DNSLabel) -> _Zone | None:
        origin = _zone_of(name, self.zones)
        return None if origin is None else self.zones[origin]

    def answer(self, query: DNSRecord) -> DNSRecord:
        """The reply an authoritative server gives, before EDNS and truncation are applied."""
        reply = reply_header(query, RCODE.NOERROR, aa=True)
        if len(query.questions) != 1:
            reply.header.rcode = RCODE.FORMERR
            reply.header.aa = 0
            return reply
        q = query.q
        zone = self.zone_for(q.qname)
        if zone is None or q.qclass not in (CLASS.IN, QCLASS_ANY):
            reply.header.rcode = RCODE.REFUSED
            reply.header.aa = 0
            return reply
        name, seen = q.qname, set()
        for _ in range(MAX_CNAME_CHAIN):
            seen.add(name)
            rrs = zone.lookup(name)
            if rrs is None:
                reply.header.rcode = RCODE.NXDOMAIN
                reply.add_auth(zone.negative_soa())
                break
            matches = [rr for rr in rrs if q.qtype in (rr.rtype, QTYPE.ANY)]
            if matches:
                reply.rr.extend(matches)
                self._add_glue(reply, matches)
                break
            cnames = [rr for rr in rrs if rr.rtype == QTYPE.CNAME]
            if not cnames:
                reply.add_auth(zone.negative_soa())  # NODATA
                break
            reply.rr.extend(cnames)
            target = cnames[0].rdata.label
            # Chase only inside the same zone, as an authoritative server does.
            if self.zone_for(target) is not zone or target in seen:
                break
            name = target
        return reply

    def _add_glue(self, reply: DNSRecord, answers: list[RR]) -> None:
        """Addresses of SRV and NS targets we hold, as CoreDNS puts them in the additional section."""
        targets = [rr.rdata.target for rr in answers if rr.rtype == QTYPE.SRV]
        targets += [rr.rdata.label for rr in answers if rr.rtype == QTYPE.NS]
        for target in dict.fromkeys(targets):
            zone = self.zone_for(target)
            for rr in (zone.lookup(target) or []) if zone else []:
                if rr.rtype in (QTYPE.A, QTYPE.AAAA):
                    reply.add_ar(rr)


def reply_header(query: DNSRecord, rcode: int, aa: bool = False) -> DNSRecord:
    """An empty reply to `query`: same ID, opcode, RD and CD, question echoed, RA clear."""
    h = query.header
    header = DNSHeader(id=h.id, qr=1, opcode=h.opcode, aa=int(aa), rd=h.rd, cd=h.cd, rcode=rcode)
    return DNSRecord(header, questions=list(query.questions))


def query_opt(query: DNSRecord) -> RR | None:
    return next((rr for rr in query.ar if rr.rtype == QTYPE.OPT), None)


def encode(reply: DNSRecord, query: DNSRecord, transport: str) -> bytes:
    """Pack `reply`, echoing EDNS if the query had it and truncating over UDP (RFC 1035, 6891).

    Truncation keeps the header, question and OPT and sets TC, which is what NSD does too.
    """
    opt = query_opt(query)
    reply.ar = [rr for rr in reply.ar if rr.rtype != QTYPE.OPT]
    if opt is not None:
        reply.add_ar(EDNS0(udp_len=EDNS_UDP_SIZE, flags="do" if opt.ttl & 0x8000 else ""))
    data = reply.pack()
    limit = max(PLAIN_UDP_LIMIT, opt.rclass) if opt is not None else PLAIN_UDP_LIMIT
    if transport == "udp" and len(data) > limit:
        short = DNSRecord(DNSHeader(id=reply.header.id, bitmap=reply.header.bitmap), questions=reply.questions)
        short.header.tc = 1
        short.ar = [rr for rr in reply.ar if rr.rtype == QTYPE.OPT]
        data = short.pack()
    return bytes(data)


def formerr_for(data: bytes) -> bytes | None:
    """FORMERR for bytes that are not a parsable query; None when there is no header to answer."""
    if len(data) < 12 or data[2] & 0x80:
        return None
    header = DNSHeader(
        id=int.from_bytes(data[:2], "big"), qr=1, opcode=(data[2] >> 3) & 0xF, rd=data[2] & 1, rcode=RCODE.FORMERR
    )
    return bytes(DNSRecord(header).pack())


# --------------------------------------------------------------------------- server


class SampleResponder:
    """An authoritative DNS server for the sample zones, on UDP and TCP, in its own thread.

    A thread with its own asyncio loop lets synchronous code (tests, `main`) use it, while
    slow answers (see the fake upstream, which overrides `handle`) never block other queries.
    """

    def __init__(
        self,
        records: Iterable[RR] | None = None,
        address: str = "127.0.0.1",
        port: int = 0,
        domain: str = DEFAULT_DOMAIN,
    ) -> None:
        self.authority = Authority(all_records(domain) if records is None else records)
        self.address = address
        self.port = port
        self.tcp_connections = 0
        """TCP connections accepted so far: lets tests see whether a client reuses one."""
        self._family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- answering (override `handle` to change behaviour per query)

    def respond(self, data: bytes, transport: str) -> bytes | None:
        """Wire in, wire out; None means send nothing (e.g. the packet was itself a response)."""
        try:
            query = DNSRecord.parse(data)
        except Exception:  # hostile input must never take the server down
            return formerr_for(data)
        if query.header.qr:
            return None
        if query.header.opcode != 0:
            return encode(reply_header(query, RCODE.NOTIMP), query, transport)
        return encode(self.authority.answer(query), query, transport)

    async def handle(self, data: bytes, transport: str, peer: tuple[str, int]) -> bytes | None:
        """Hook for subclasses: reply bytes, None for silence, or CLOSE_CONNECTION (TCP).

        `transport` is "udp" or "tcp" and `peer` the client's (address, port).
        """
        return self.respond(data, transport)

    # -- lifecycle

    def start(self) -> Self:
        """Bind UDP and TCP on the same port and serve in a background thread."""
        udp, tcp = self._bind()
        self.port = udp.getsockname()[1]
        self._thread = threading.Thread(
            target=self._run, args=(udp, tcp), name=f"dns-{self.address}:{self.port}", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(5.0):
            raise RuntimeError("DNS responder thread did not start within 5 s")
        if self._error is not None:
            raise RuntimeError(f"DNS responder failed to start: {self._error}") from self._error
        return self

    def stop(self) -> None:
        """Stop serving and join the thread (bounded)."""
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed in between
                loop.call_soon_threadsafe(stopping.set)
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _bind(self) -> tuple[socket.socket, socket.socket]:
        """Port 0 picks a UDP port, then TCP must get the same one; retry a few times if taken."""
        last: OSError | None = None
        for _ in range(20):
            udp = socket.socket(self._family, socket.SOCK_DGRAM)
            tcp = socket.socket(self._family, socket.SOCK_STREAM)
            try:
                udp.bind((self.address, self.port))
                tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                tcp.bind((self.address, udp.getsockname()[1]))
                tcp.listen(128)
                udp.setblocking(False)
                tcp.setblocking(False)
                return udp, tcp
            except OSError as e:
                udp.close()
                tcp.close()
                last = e
                if self.port:
                    break
        raise OSError(f"cannot bind UDP+TCP on {self.address}:{self.port}: {last}") from last

    def _run(self, udp: socket.socket, tcp: socket.socket) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve(udp, tcp))
        except BaseException as e:  # reported to start() through _error
            self._error = e
        finally:
            self._ready.set()
            loop.close()

    async def _serve(self, udp: socket.socket, tcp: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        udp_transport, _ = await loop.create_datagram_endpoint(lambda: _UdpProtocol(self), sock=udp)
        server = await asyncio.start_server(self._tcp_client, sock=tcp)
        self._ready.set()
        try:
            await self._stopping.wait()
        finally:
            udp_transport.close()
            server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await server.wait_closed()

    def _track(self, task: asyncio.Task[Any]) -> None:
        """Remember a running task so stop() can cancel it."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self._track(asyncio.get_running_loop().create_task(coro))

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Length-framed queries, answered concurrently so pipelined queries can overtake."""
        self.tcp_connections += 1
        if (me := asyncio.current_task()) is not None:
            self._track(me)
        peer = writer.get_extra_info("peername")[:2]
        try:
            for _ in range(TCP_MAX_QUERIES_PER_CONNECTION):
                # asyncio.timeout rather than wait_for: a task torn down before wait_for ran would leave
                # its readexactly coroutine never awaited (a RuntimeWarning in whichever test collects it).
                async with asyncio.timeout(TCP_IDLE_SECONDS):
                    size = int.from_bytes(await reader.readexactly(2), "big")
                    data = await reader.readexactly(size)
                self._spawn(self._tcp_answer(data, peer, writer))
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _tcp_answer(self, data: bytes, peer: tuple[str, int], writer: asyncio.StreamWriter) -> None:
        reply = await self.handle(data, "tcp", peer)
        if reply == CLOSE_CONNECTION:
            writer.close()
        elif reply is not None and not writer.is_closing():
            writer.write(len(reply).to_bytes(2, "big") + reply)

    async def _udp_answer(self, data: bytes, peer: tuple[str, int], transport: asyncio.DatagramTransport) -> None:
        reply = await self.handle(data, "udp", peer)
        if reply and not transport.is_closing():
            transport.sendto(reply, peer)


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: SampleResponder) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.server._spawn(self.server._udp_answer(data, addr[:2], self.transport))


# --------------------------------------------------------------------------- make run


def _banner(address: str, port: int, agent: bool, operate: str = "") -> str:
    who = "agent (cache) in front of the sample zone" if agent else "sample zone (no cache)"
    ttl_note = "TTL counts down: answered from cache" if agent else "TTL stays 30: no cache here"
    d = f"dig @{address} -p {port}"
    return f"""
nodecache sample: {who} on {address} port {port}. Try:
  {d} kubernetes.default.svc.cluster.local
  {d} _http._tcp.web.default.svc.cluster.local SRV
  {d} -x 192.0.2.1
  {d} big.default.svc.cluster.local +ignore        # too big for UDP: TC flag set
  {d} big.default.svc.cluster.local +tcp           # the whole answer over TCP
  {d} nothere.default.svc.cluster.local            # NXDOMAIN with SOA
  {d} anything.wild.cluster.local                  # wildcard: a new name every time
  for i in 1 2 3; do {d} web.default.svc.cluster.local +noall +answer; sleep 2; done
                                                   # {ttl_note}
{operate}Ctrl-C stops everything.
"""


def _operate_banner(address: str, sock: str, metrics_port: int, health_port: int) -> str:
    """The operator's side of the demo: stats, flush, metrics, readiness."""
    here = Path(sys.executable).parent / "nodecache"
    try:
        cli = str(here.relative_to(Path.cwd())) if here.exists() else "nodecache"
    except ValueError:
        cli = str(here)
    return f"""And see what it does:
  {cli} stats --control-socket {sock}
  {cli} flush --control-socket {sock} --name web.default.svc.cluster.local
  curl -s http://{address}:{metrics_port}/metrics | grep '^coredns_cache'
  curl -s http://{address}:{health_port}/ready
"""


def _free_tcp_port(address: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((address, 0))
        port: int = probe.getsockname()[1]
        return port


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--run-agent", is_flag=True, help="Also run the nodecache agent in front of the zone.")
@click.option("--port", default=5353, show_default=True, help="Port the agent listens on (with --run-agent).")
@click.option("--zone-port", default=5354, show_default=True, help="Port the sample zone is served on.")
@click.option("--address", default="127.0.0.1", show_default=True, help="Loopback address for both.")
@click.option("--domain", default=DEFAULT_DOMAIN, show_default=True, help="Cluster domain of the sample zone.")
@click.option(
    "--node-resolv-conf",
    default="/etc/resolv.conf",
    show_default=True,
    help="resolv.conf whose servers the agent uses for names outside the cluster.",
)
def main(run_agent: bool, port: int, zone_port: int, address: str, domain: str, node_resolv_conf: str) -> None:
    """Serve a sample Kubernetes DNS zone, optionally with the agent in front of it."""
    signal.signal(signal.SIGINT, _raise_stop)
    signal.signal(signal.SIGTERM, _raise_stop)
    returncode = 0
    try:
        with SampleResponder(address=address, port=zone_port, domain=domain) as zone:
            if run_agent:
                returncode = _run_agent(zone, address, port, node_resolv_conf)
            else:
                click.echo(_banner(address, zone.port, agent=False))
                sys.stdout.flush()  # visible at once even when piped (make run | tee)
                threading.Event().wait()  # until a signal raises _Stop
    except _Stop:
        pass
    sys.exit(returncode)


def _run_agent(zone: SampleResponder, address: str, port: int, node_resolv_conf: str) -> int:
    """Run the agent in front of `zone` until it exits (its status) or we are signalled (0)."""
    # Operator endpoints where a user without root can have them: the control
    # socket in a private temporary directory, HTTP on loopback, free ports.
    sockdir = tempfile.mkdtemp(prefix="nodecache-")
    sock = str(Path(sockdir) / "control.sock")
    metrics_port, health_port = _free_tcp_port(address), _free_tcp_port(address)
    cmd = [
        sys.executable, "-m", "nodecache", "run",
        "--no-setup-interface", "--no-setup-iptables",  # a demo on loopback: leave the host alone
        "--listen", address, "--port", str(port),
        "--upstream", f"{address}:{zone.port}",
        "--node-resolv-conf", node_resolv_conf,
        "--control-socket", sock, "--lameduck", "0",
        "--metrics-address", f"{address}:{metrics_port}", "--health-address", f"{address}:{health_port}",
    ]  # fmt: skip
    agent = subprocess.Popen(cmd)
    try:
        click.echo(_banner(address, port, agent=True, operate=_operate_banner(address, sock, metrics_port, health_port)))
        sys.stdout.flush()
        return agent.wait()
    except _Stop:
        # The agent goes first (it may still be talking to the zone); ignore further
        # signals so a second Ctrl-C cannot cut this cleanup short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if agent.poll() is None:
            agent.terminate()
            try:
                agent.wait(10)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait(5)
        return 0
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)


class _Stop(Exception):
    """Raised in the main thread by SIGINT/SIGTERM; takes no lock, so it cannot deadlock."""


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop(signum)


if __name__ == "__main__":
    main()
