"""Prometheus metrics, with CoreDNS's names and labels, built at scrape time.

Nothing here runs per query. The resolver, caches and upstreams keep plain
int counters (see counters.py and the tallies in cache.py); `Collector` reads
them when Prometheus scrapes and yields metric families. So a dashboard or
alert written for CoreDNS / node-local-dns works unchanged, and recording
costs the hit path an int add rather than a prometheus_client call.

Label conventions follow CoreDNS 1.11+:
- `server` is `dns://:PORT`, one server for all local IPs (the agent serves
  them from one process); `view` is always empty (no view plugin).
- `zone` / `zones` is the zone's name with its trailing dot ("." for the root).
- `type` in coredns_dns_requests_total is the qtype for the types CoreDNS
  monitors (A, AAAA, SRV, PTR...) and "other" for the rest; in the cache
  metrics it is the cache, "success" or "denial" (cached SERVFAILs live in
  the denial cache, as in CoreDNS).
- `plugin` in coredns_dns_responses_total: "cache" for hits and stale
  answers, "forward" for upstream answers, "" for errors the agent wrote.
- `to` is the upstream as IP:PORT; `proxy_name` is "forward".

Durations: misses are measured one by one. Hits are not timed each (two
clock reads would cost more than the hit's own counting): each hit is put in
the first bucket (0.25 ms; sampled hits take a few microseconds in the
agent), and the histogram's sum grows each second by that second's hits
times the mean duration of the hits the listeners sampled (Resolver.tick).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from nodecache import __version__, build
from nodecache.cache import Kind
from nodecache.counters import COUNTED_TYPES, Histogram
from nodecache.dnstext import rcode_name, type_name

if TYPE_CHECKING:
    from nodecache.listeners import TcpClients
    from nodecache.resolver import Resolver
    from nodecache.sockstats import UdpSocketStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# The error types node-local-dns counts; each is exported (as 0) from the start.
SETUP_ERROR_TYPES = ("configmap", "interface_add", "interface_check", "iptables", "iptables_lock")
# Query types labelled by name: CoreDNS's (plugin/metrics/vars/monitor.go) plus CAA; the rest are "other",
# as the counters behind them already are (counters.COUNTED_TYPES).
MONITORED_TYPES = COUNTED_TYPES
PROTOS = ("udp", "tcp", "udp", "tcp")  # by `via` (cache.VIA_*)
FAMILIES = ("1", "1", "2", "2")  # CoreDNS: 1 for IPv4, 2 for IPv6


def _qtype_label(qtype: int) -> str:
    return type_name(qtype) if qtype in MONITORED_TYPES else "other"


def _cache_type(kind: Kind) -> str:
    return "success" if kind is Kind.SUCCESS else "denial"


def _buckets(hist: Histogram, extra_first: int = 0) -> list[tuple[str, float]]:
    return [(floatToGoString(bound), float(count + extra_first)) for bound, count in hist.cumulative()]


def _merged(hists: list[Histogram]) -> Histogram:
    merged = Histogram(hists[0].bounds)
    for h in hists:
        merged.counts = [a + b for a, b in zip(merged.counts, h.counts)]
        merged.sum += h.sum
    return merged


class AgentCollector(Collector):
    """Reads the agent's counters at scrape time and yields metric families."""

    def __init__(
        self,
        resolver: Resolver,
        server: Callable[[], str],
        setup_errors: Callable[[], Mapping[str, int]] = dict,
        reload_failed: Callable[[], int] = int,
        tcp: TcpClients | None = None,
        handover: Callable[[], Mapping[str, int]] = dict,
        udp: Callable[[], list[UdpSocketStats]] = list,
        heap: Callable[[], Mapping[str, Any]] = dict,
    ) -> None:
        self.resolver = resolver
        self.heap = heap  # heap trims after miss bursts (heap.HeapTrimmer.counts), read at scrape time
        self.handover = handover  # cache dumps and loads (handover.Counts as a dict), operator_endpoints.py
        self.server = server
        self.setup_errors = setup_errors
        self.reload_failed = reload_failed  # failed config reloads (server.py), as CoreDNS's reload plugin counts
        self.tcp = tcp  # client TCP connections and their limits (listeners.TcpClients)
        self.udp = udp  # the listening UDP sockets (sockstats.py), read at scrape time

    def collect(self) -> Iterator[Metric]:
        yield from self._dns()
        yield from self._cache()
        yield from self._forward()
        yield from self._agent()
        yield from self._tcp()
        yield from self._handover()
        yield from self._heap()
        yield from self._udp()

    def _handover(self) -> Iterator[Metric]:
        counts = self.handover()
        family = CounterMetricFamily(
            "nodecache_cache_handover_entries_total",
            "Cached answers in cache dumps and loads (rollout handover, nodecache dump/load), by outcome.",
            labels=["outcome"],
        )
        for outcome in ("dumped", "left_out", "loaded", "expired", "no_zone", "not_kept"):
            family.add_metric([outcome], counts.get(outcome, 0))
        yield family
        yield CounterMetricFamily(
            "nodecache_cache_handover_failed_total",
            "Startups that got no cache from a live agent (none, hung, or a dump that did not load).",
            value=counts.get("failed", 0),
        )

    def _heap(self) -> Iterator[Metric]:
        counts = self.heap()
        yield CounterMetricFamily(
            "nodecache_heap_trims_total",
            "Times freed heap was given back to the kernel (malloc_trim) after a burst of misses.",
            value=counts.get("trims", 0),
        )
        yield CounterMetricFamily(
            "nodecache_heap_trim_seconds_total",
            "Time spent giving freed heap back to the kernel; the event loop waits while it runs.",
            value=counts.get("seconds", 0.0),
        )

    def _dns(self) -> Iterator[Metric]:
        srv = self.server()
        requests = CounterMetricFamily(
            "coredns_dns_requests_total", "Counter of DNS requests made per zone, protocol and family.",
            labels=["server", "zone", "view", "proto", "family", "type"],
        )  # fmt: skip
        responses = CounterMetricFamily(
            "coredns_dns_responses_total", "Counter of response status codes.",
            labels=["server", "zone", "view", "rcode", "plugin"],
        )  # fmt: skip
        duration = HistogramMetricFamily(
            "coredns_dns_request_duration_seconds",
            "Histogram of the time (in seconds) each request took per zone (hits: see docs/operate.md).",
            labels=["server", "zone", "view"],
        )
        for z in self.resolver.zones:
            req: dict[tuple[str, str, str], int] = {}
            resp: dict[tuple[str, str], int] = {}
            hits = 0
            for (_kind, rcode, qtype), tally in z.cache.tallies.items():
                for via, n in enumerate(tally):
                    if n:
                        key = (PROTOS[via], FAMILIES[via], _qtype_label(qtype))
                        req[key] = req.get(key, 0) + n
                total = sum(tally)
                if total:
                    hits += total
                    rk = (rcode_name(rcode), "cache")
                    resp[rk] = resp.get(rk, 0) + total
            for k, n in z.stats.requests.items():
                key = (PROTOS[k & 3], FAMILIES[k & 3], _qtype_label(k >> 2))
                req[key] = req.get(key, 0) + n
            for (rcode, plugin), n in z.stats.responses.items():
                rk = (rcode_name(rcode), plugin)
                resp[rk] = resp.get(rk, 0) + n
            for labels, n in sorted(req.items()):
                requests.add_metric([srv, z.name, "", *labels], n)
            for (rname, plugin), n in sorted(resp.items()):
                responses.add_metric([srv, z.name, "", rname, plugin], n)
            misses = z.stats.duration
            duration.add_metric([srv, z.name, ""], _buckets(misses, hits), misses.sum + z.stats.hit_seconds)
        yield requests
        yield responses
        yield duration

    def _cache(self) -> Iterator[Metric]:
        srv = self.server()
        both = ["server", "type", "zones", "view"]
        plain = ["server", "zones", "view"]
        entries = GaugeMetricFamily("coredns_cache_entries", "The number of elements in the cache.", labels=both)
        requests = CounterMetricFamily("coredns_cache_requests_total", "The count of cache requests.", labels=plain)
        hits = CounterMetricFamily("coredns_cache_hits_total", "The count of cache hits.", labels=both)
        misses = CounterMetricFamily("coredns_cache_misses_total", "The count of cache misses.", labels=plain)
        prefetch = CounterMetricFamily(
            "coredns_cache_prefetch_total", "The number of times the cache has prefetched a cached item.", labels=plain
        )
        stale = CounterMetricFamily(
            "coredns_cache_served_stale_total", "The number of requests served from stale cache entries.", labels=plain
        )
        evictions = CounterMetricFamily("coredns_cache_evictions_total", "The count of cache evictions.", labels=both)
        size = GaugeMetricFamily(
            "nodecache_cache_bytes", "Bytes held by cached answers, their keys and LRU slots.", labels=["zone", "type"]
        )
        prefetch_refused = CounterMetricFamily(
            "nodecache_cache_prefetch_refused_total",
            "Prefetches not started because the most allowed were already in flight.", labels=["zone"],
        )
        memory_evictions = CounterMetricFamily(
            "nodecache_cache_memory_evictions_total",
            "Evictions made to stay within --cache-memory (also counted in coredns_cache_evictions_total).",
            labels=["zone", "type"],
        )
        for z in self.resolver.zones:
            c = z.cache
            by_kind = {"success": 0, "denial": 0}
            for (kind, _rcode, _qtype), tally in c.tallies.items():
                by_kind[_cache_type(kind)] += sum(tally)
            for name, lru in (("success", c.success), ("denial", c.denial)):
                entries.add_metric([srv, name, z.name, ""], len(lru))
                hits.add_metric([srv, name, z.name, ""], by_kind[name])
                evictions.add_metric([srv, name, z.name, ""], lru.evictions)
                size.add_metric([z.name, name], lru.bytes)
                memory_evictions.add_metric([z.name, name], lru.memory_evictions)
            requests.add_metric([srv, z.name, ""], sum(by_kind.values()) + z.stats.misses)
            misses.add_metric([srv, z.name, ""], z.stats.misses)
            prefetch.add_metric([srv, z.name, ""], z.stats.prefetches)
            prefetch_refused.add_metric([z.name], z.stats.prefetches_refused)
            stale.add_metric([srv, z.name, ""], z.stats.stale)
        yield from (entries, requests, hits, misses, prefetch, prefetch_refused, stale, evictions, size, memory_evictions)
        budget = self.resolver.budget
        yield GaugeMetricFamily(
            "nodecache_cache_memory_bytes", "Bytes held by every zone's cached answers together.", value=budget.used
        )
        yield GaugeMetricFamily(
            "nodecache_cache_memory_budget_bytes", "The --cache-memory budget over every zone's caches (0: none).",
            value=budget.limit,
        )  # fmt: skip

    def _forward(self) -> Iterator[Metric]:
        durations: dict[tuple[str, str], list[Histogram]] = {}
        probes: dict[str, int] = {}
        up: dict[tuple[str, str], int] = {}
        broken = rejects = 0
        inflight = GaugeMetricFamily(
            "nodecache_upstream_inflight", "Queries waiting on a zone's upstreams right now.", labels=["zone"]
        )
        overload = CounterMetricFamily(
            "nodecache_overload_refused_total",
            "Client queries answered REFUSED because the zone's upstreams had max_concurrent queries in flight.",
            labels=["zone"],
        )
        coalesced = CounterMetricFamily(
            "nodecache_coalesced_queries_total",
            "Queries that waited for an identical query already sent upstream instead of sending their own.",
            labels=["zone"],
        )
        nxcut = CounterMetricFamily(
            "nodecache_cache_nxdomain_cut_total",
            "Queries answered NXDOMAIN from a cached NXDOMAIN of the same name (another type) or of a name above it "
            "(RFC 8020); also counted in coredns_cache_hits_total.",
            labels=["zone"],
        )
        held = CounterMetricFamily(
            "nodecache_held_for_sibling_total",
            "Misses held behind an in-flight A or AAAA query for the same name, to be answered from its NXDOMAIN "
            "(RFC 8020) instead of sending their own query.",
            labels=["zone"],
        )
        from_sibling = CounterMetricFamily(
            "nodecache_nxdomain_from_sibling_total",
            "Queries answered NXDOMAIN from the NXDOMAIN another type of their name got upstream while they waited "
            "(RFC 8020), without a query of their own.",
            labels=["zone"],
        )
        early = CounterMetricFamily(
            "nodecache_early_answers_total",
            "Misses answered stale or SERVFAIL without waiting for the upstream, by why: the answer deadline passed, "
            "every upstream was down, or the caps on waiting queries were reached.",
            labels=["zone", "reason"],
        )
        retries = CounterMetricFamily(
            "nodecache_upstream_retries_total",
            "Tries sent because an earlier try of the same query stayed silent past the retransmission timer.",
            labels=["zone", "to"],
        )
        exhausted = CounterMetricFamily(
            "nodecache_upstream_udp_exhausted_total",
            "UDP tries failed at once because the upstream's pool of UDP sockets was full.",
            labels=["zone", "to"],
        )
        mismatched = CounterMetricFamily(
            "nodecache_upstream_mismatched_replies_total",
            "Datagrams from an upstream ignored: another ID, a question not asked, unreadable, or none awaited "
            "(a spoofing attempt, or a late or duplicated reply).",
            labels=["zone", "to"],
        )
        waiting = GaugeMetricFamily("nodecache_waiting_queries", "Client queries waiting on upstream answers right now.",
                                    value=self.resolver.waiting)  # fmt: skip
        for z in self.resolver.zones:
            fwd = z.forwarder
            st = z.stats
            for reason, n in (("deadline", st.deadline), ("upstreams_down", st.fast_failed),
                              ("waiting_cap", st.waiters_refused)):  # fmt: skip
                early.add_metric([z.name, reason], n)
            for u in fwd.upstreams:
                retries.add_metric([z.name, str(u.address)], u.retries)
                exhausted.add_metric([z.name, str(u.address)], u.udp_exhausted)
                mismatched.add_metric([z.name, str(u.address)], u.mismatched)
            broken += fwd.all_down
            rejects += fwd.rejected
            inflight.add_metric([z.name], fwd.inflight)
            overload.add_metric([z.name], z.stats.overloaded)
            coalesced.add_metric([z.name], z.stats.coalesced)
            nxcut.add_metric([z.name], z.stats.nxdomain_cut)
            held.add_metric([z.name], z.stats.sibling_waits)
            from_sibling.add_metric([z.name], z.stats.nxdomain_waited)
            for u in fwd.upstreams:
                to = str(u.address)
                probes[to] = probes.get(to, 0) + u.healthcheck_failures
                up[(z.name, to)] = 0 if u.down or u not in fwd.active else 1  # excluded by loop detection: down
                for rcode, hist in u.durations.items():
                    durations.setdefault((to, rcode_name(rcode)), []).append(hist)
        proxy = HistogramMetricFamily(
            "coredns_proxy_request_duration_seconds", "Histogram of the time each request took.",
            labels=["proxy_name", "to", "rcode"],
        )  # fmt: skip
        for (to, rname), hists in sorted(durations.items()):
            merged = _merged(hists)
            proxy.add_metric(["forward", to, rname], _buckets(merged), merged.sum)
        failures = CounterMetricFamily(
            "coredns_proxy_healthcheck_failures_total", "Counter of the number of failed healthchecks.",
            labels=["proxy_name", "to"],
        )  # fmt: skip
        for to, n in sorted(probes.items()):
            failures.add_metric(["forward", to], n)
        up_gauge = GaugeMetricFamily(
            "nodecache_upstream_up", "1 while an upstream is healthy; 0 while marked down or excluded as a forwarding loop.",
            labels=["zone", "to"],
        )  # fmt: skip
        for (zone, to), v in sorted(up.items()):
            up_gauge.add_metric([zone, to], v)
        yield proxy
        yield failures
        yield CounterMetricFamily(
            "coredns_forward_healthcheck_broken_total",
            "Counter of the number of complete failures of the healthchecks (every upstream of a zone down).",
            value=broken,
        )
        yield CounterMetricFamily(
            "coredns_forward_max_concurrent_rejects_total",
            "Counter of the number of queries rejected because the concurrent queries were at maximum.",
            value=rejects,
        )
        yield from (inflight, overload, coalesced, nxcut, held, from_sibling, up_gauge, early, retries, waiting)
        yield from (exhausted, mismatched)

    def _agent(self) -> Iterator[Metric]:
        errors = CounterMetricFamily(
            "coredns_nodecache_setup_errors_total", "The number of errors during periodic network setup for node-cache.",
            labels=["errortype"],
        )  # fmt: skip
        counts = {t: 0 for t in SETUP_ERROR_TYPES}
        counts.update(self.setup_errors())
        for errortype, n in sorted(counts.items()):
            errors.add_metric([errortype], n)
        yield errors
        r = self.resolver
        rejected = CounterMetricFamily(
            "nodecache_rejected_queries_total",
            "Queries not handled by any zone: malformed (answered FORMERR/NOTIMP), dropped, outside every zone "
            "(REFUSED), or zone transfers (AXFR/IXFR: NOTIMP over UDP, REFUSED over TCP).",
            labels=["reason"],
        )
        rejected.add_metric(["malformed"], r.malformed)
        rejected.add_metric(["dropped"], r.dropped)
        rejected.add_metric(["no_zone"], r.refused)
        rejected.add_metric(["zone_transfer"], r.transfers)
        yield rejected
        memo = r.replies
        yield GaugeMetricFamily(
            "nodecache_reply_memo_queries", "Queries whose hit reply is remembered for replay by query bytes.",
            value=len(memo),
        )  # fmt: skip
        resets = CounterMetricFamily(
            "nodecache_reply_memo_resets_total",
            "Times the reply memo was forgotten: a cache entry left or was replaced (invalidated), or it was full.",
            labels=["reason"],
        )
        resets.add_metric(["invalidated"], memo.invalidated)
        resets.add_metric(["full"], memo.overflowed)
        yield resets
        yield CounterMetricFamily(
            "coredns_reload_failed_total", "Counter of the number of failed reload attempts.", value=self.reload_failed()
        )
        info = GaugeMetricFamily(
            "nodecache_build_info",
            "Always 1; the running version, and whether its hot path is compiled or runs as Python.",
            labels=["version", "build"],
        )
        info.add_metric([__version__, build()], 1)
        yield info


    def _tcp(self) -> Iterator[Metric]:
        """Client TCP connections, the caps' refusals and the per-connection bounds (RFC 7766 section 10)."""
        t = self.tcp
        if t is None:
            return
        yield GaugeMetricFamily("nodecache_tcp_connections", "Client TCP connections open now.", value=t.open)
        refused = CounterMetricFamily(
            "nodecache_tcp_refused_total",
            "Client TCP connections closed at once: --max-tcp-connections (total) or --max-tcp-per-client "
            "(per_client) were open.",
            labels=["reason"],
        )
        refused.add_metric(["total"], t.refused_total)
        refused.add_metric(["per_client"], t.refused_per_client)
        aborted = CounterMetricFamily(
            "nodecache_tcp_aborted_total",
            "Client TCP connections reset because their replies went unread for the idle timeout.",
            labels=["reason"],
        )
        aborted.add_metric(["blocked"], t.aborted_blocked)
        paused = CounterMetricFamily(
            "nodecache_tcp_read_paused_total",
            "Times reading a client TCP connection paused: unsent replies passed the write bound (unread), "
            "or the most misses one connection may have in flight were (pipelined).",
            labels=["reason"],
        )
        paused.add_metric(["unread"], t.paused_unread)
        paused.add_metric(["pipelined"], t.paused_pipelined)
        yield from (refused, aborted, paused)


    def _udp(self) -> Iterator[Metric]:
        """The listening UDP sockets: kernel buffers, the kernel's receive drops, what the batch reader dropped."""
        drops = CounterMetricFamily(
            "nodecache_udp_receive_drops_total",
            "Queries the kernel dropped because the listening UDP socket's receive buffer was full (/proc/net/udp).",
            labels=["listener"],
        )
        buffers = GaugeMetricFamily(
            "nodecache_udp_buffer_bytes",
            "Kernel buffer of the listening UDP socket, as set (--udp-rcvbuf, --udp-sndbuf, capped by the kernel).",
            labels=["listener", "direction"],
        )
        lost = CounterMetricFamily(
            "nodecache_udp_dropped_total",
            "UDP queries or replies the agent dropped: a query larger than a batch slot (truncated_query), a reply "
            "the full send buffer would not take (send_buffer_full), a reply the kernel refused (send_error).",
            labels=["listener", "reason"],
        )
        for u in self.udp():
            if u.drops is not None:
                drops.add_metric([u.listener], u.drops)
            buffers.add_metric([u.listener, "receive"], u.rcvbuf)
            buffers.add_metric([u.listener, "send"], u.sndbuf)
            lost.add_metric([u.listener, "truncated_query"], u.truncated)
            lost.add_metric([u.listener, "send_buffer_full"], u.send_dropped)
            lost.add_metric([u.listener, "send_error"], u.send_failed)
        yield from (drops, buffers, lost)


def registry(collector: AgentCollector) -> CollectorRegistry:
    """A registry of its own (not the global one): the agent's metrics and process_* ones."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector)
    ProcessCollector(registry=reg)
    return reg


def exposition(reg: CollectorRegistry) -> bytes:
    """The Prometheus text format of everything in `reg`."""
    return generate_latest(reg)

