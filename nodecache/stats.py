"""The stats report: built in the agent from its counters, printed by `nodecache stats`.

`report` makes a plain dict (stable JSON, see SCHEMA) from the live
objects; it runs on the event loop when the control socket asks, never per
query. `render` turns that dict into the readable summary; the CLI calls it
on what came over the socket, so it must only use the dict.

The top names and clients are sampled counters (counters.Activity): at most
about a thousand queries a second are sampled, each weighted by the
sampling interval, so the counts estimate real query numbers; they halve
every minute, so the lists follow recent traffic.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from nodecache import __version__, build
from nodecache.names import name_text

if TYPE_CHECKING:
    from nodecache.listeners import TcpClients
    from nodecache.resolver import Resolver, ZoneRuntime
    from nodecache.sockstats import UdpSocketStats

SCHEMA = 1  # bump when a field changes meaning or goes away; new fields may be added
DEFAULT_TOP = 10


def _ratio(hits: int, total: int) -> float | None:
    return round(hits / total, 4) if total else None


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e3, 3)


def _zone(z: ZoneRuntime) -> dict[str, Any]:
    c, s = z.cache, z.stats
    hits = c.hits
    return {
        "zone": z.name,
        "queries": hits + s.misses,
        "hits": hits,
        "misses": s.misses,
        "hit_ratio": _ratio(hits, hits + s.misses),
        "entries": {"success": len(c.success), "denial": len(c.denial)},
        "capacity": {"success": c.policy.success_capacity, "denial": c.policy.denial_capacity},
        "bytes": c.bytes,
        "evictions": c.evictions,
        "memory_evictions": c.memory_evictions,  # included in evictions
        "stale_served": s.stale,
        "prefetches": s.prefetches,
        "prefetches_refused": s.prefetches_refused,  # not started: too many already in flight
        "coalesced": s.coalesced,
        "nxdomain_cut": s.nxdomain_cut,  # misses answered from a parent's cached NXDOMAIN (RFC 8020), also in hits
        "held_for_sibling": s.sibling_waits,  # misses held behind an in-flight A/AAAA query for their name
        "nxdomain_from_sibling": s.nxdomain_waited,  # clients of those answered from its NXDOMAIN
        "servfail": s.servfail,
        "overload_refused": s.overloaded,
        "upstream_inflight": z.forwarder.inflight,
        # Misses answered without waiting for the upstream (stale or SERVFAIL), by why.
        "early_answers": {"deadline": s.deadline, "upstreams_down": s.fast_failed, "waiting_cap": s.waiters_refused},
    }


def report(
    resolver: Resolver,
    *,
    started: float,
    listen: list[tuple[str, int]],
    ready: bool | None,
    not_ready: str | None,
    top: int = DEFAULT_TOP,
    tcp: TcpClients | None = None,
    handover: dict[str, int] | None = None,
    udp: list[UdpSocketStats] | None = None,
    heap: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything `nodecache stats` shows, as JSON-ready data. `started` is a time.monotonic() value."""
    zones = [_zone(z) for z in resolver.zones]
    hits = sum(z["hits"] for z in zones)
    misses = sum(z["misses"] for z in zones)
    upstreams = []
    for z in resolver.zones:
        for u in z.forwarder.upstreams:
            upstreams.append(
                {
                    "zone": z.name,
                    "address": str(u.address),
                    "transport": "tcp" if u.tcp else "udp",
                    "state": "loop" if u not in z.forwarder.active else "down" if u.down else "up",
                    "queries": u.queries,
                    "failures": u.failures,
                    "retries": u.retries,
                    "udp_exhausted": u.udp_exhausted,  # tries failed at once: the UDP socket pool was full
                    "mismatched": u.mismatched,  # datagrams ignored (wrong ID or question, or none awaited)
                    "latency_ms": {
                        "p50": _ms(u.latencies.quantile(0.5)),
                        "p99": _ms(u.latencies.quantile(0.99)),
                        "samples": len(u.latencies.recent),
                    },
                }
            )
    a = resolver.activity
    return {
        "schema": SCHEMA,
        "version": __version__,
        "build": build(),
        "uptime_seconds": round(time.monotonic() - started, 1),
        "ready": ready,
        "not_ready_because": None if ready else not_ready,
        "listen": [f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in listen],
        "queries": {
            "total": resolver.total_queries(),
            "per_second_1m": round(a.rate(), 1),
            "hits": hits,
            "misses": misses,
            "hit_ratio": _ratio(hits, hits + misses),
            "refused_no_zone": resolver.refused,
            "malformed": resolver.malformed,
            "dropped": resolver.dropped,
            "zone_transfer_refused": resolver.transfers,
        },
        "cache": {
            "entries": {k: sum(z["entries"][k] for z in zones) for k in ("success", "denial")},
            "capacity": {k: sum(z["capacity"][k] for z in zones) for k in ("success", "denial")},
            "bytes": sum(z["bytes"] for z in zones),
            "evictions": sum(z["evictions"] for z in zones),
            # --cache-memory: the budget over every zone (0: none), the bytes held, the evictions it made.
            "memory": {"budget": resolver.budget.limit, "used": resolver.budget.used},
            "memory_evictions": sum(z["memory_evictions"] for z in zones),
            "stale_served": sum(z["stale_served"] for z in zones),
            "prefetches": sum(z["prefetches"] for z in zones),
            "prefetches_refused": sum(z["prefetches_refused"] for z in zones),
            "coalesced": sum(z["coalesced"] for z in zones),
            "nxdomain_cut": sum(z["nxdomain_cut"] for z in zones),
            "held_for_sibling": sum(z["held_for_sibling"] for z in zones),
            "nxdomain_from_sibling": sum(z["nxdomain_from_sibling"] for z in zones),
            # Hit replies replayed by query bytes (cache.ReplyMemo): held now, and how often it started over.
            "reply_memo": {"queries": len(resolver.replies), "limit_per_transport": resolver.replies.limit,
                           "invalidated": resolver.replies.invalidated, "overflowed": resolver.replies.overflowed},
        },
        "misses": {
            "waiting_now": resolver.waiting,
            "early_answers": {k: sum(z["early_answers"][k] for z in zones) for k in ("deadline", "upstreams_down",
                                                                                     "waiting_cap")},
        },
        "zones": zones,
        "handover": handover,  # cache dumps and loads (handover.Counts), None when not reported
        "heap": heap,  # freed heap given back after miss bursts (heap.HeapTrimmer.counts), None when not reported
        "upstreams": upstreams,
        "top_names": [{"name": name_text(k), "queries": n} for k, n in a.names.top(top)],  # type: ignore[arg-type]
        "top_clients": [{"client": str(k), "queries": n} for k, n in a.clients.top(top)],
        "sampling": {"method": "sampled counters", "one_in": a.interval, "sampled": a.sampled},
        **({"tcp": _tcp(tcp)} if tcp is not None else {}),
        **({"udp": [_udp(u) for u in udp]} if udp is not None else {}),
    }


def _memo_line(m: dict[str, int] | None) -> list[str]:
    """The reply memo's line of the summary (absent from an older agent's report)."""
    if m is None:
        return []
    return [f"replays     {m['queries']} queries remembered (up to {m['limit_per_transport']} per transport), "
            f"forgotten {m['invalidated']} times as entries left, {m['overflowed']} times full"]


def _udp(u: UdpSocketStats) -> dict[str, Any]:
    """One listening UDP socket: how it is read, its kernel buffers, and what was dropped where."""
    return {
        "listener": u.listener,
        "batched": u.batched,
        "receive_buffer": u.rcvbuf,
        "send_buffer": u.sndbuf,
        "receive_drops": u.drops,  # the kernel's: the receive buffer was full (None: unknown)
        "truncated_queries": u.truncated,
        "send_drops": u.send_dropped,
        "send_failures": u.send_failed,
    }


def _tcp(t: TcpClients) -> dict[str, Any]:
    """Client TCP connections: open now, the caps, and what the caps and bounds did (RFC 7766 section 10)."""
    return {
        "connections": t.open,
        "clients": len(t.by_address),
        "max_connections": t.max_total,
        "max_per_client": t.max_per_client,
        "refused": {"total": t.refused_total, "per_client": t.refused_per_client},
        "aborted": {"blocked": t.aborted_blocked},
        "paused": {"unread": t.paused_unread, "pipelined": t.paused_pipelined},
    }


# ---------------------------------------------------------------------------- text


def _duration(seconds: float) -> str:
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    if d:
        return f"{d}d{h:02d}h{m:02d}m"
    if h:
        return f"{h}h{m:02d}m{s:02d}s"
    return f"{m}m{s:02d}s" if m else f"{s}s"


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024 or unit == "MiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


def _pct(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio * 100:.1f}%"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _tcp_line(t: dict[str, Any] | None) -> list[str]:
    if t is None:
        return []
    refused, paused = t["refused"], t["paused"]
    return [
        f"tcp         {t['connections']} open / {t['max_connections']} ({t['max_per_client']} per client), refused "
        f"{refused['total']} at the cap, {refused['per_client']} per client; {t['aborted']['blocked']} reset unread; "
        f"paused {paused['unread']} unread, {paused['pipelined']} pipelined"
    ]


def _handover_line(h: dict[str, Any] | None) -> list[str]:
    if not h:
        return []
    return [
        f"handover    {h['dumped']} answers dumped ({h['left_out']} left out over the size limit), {h['loaded']} loaded, "
        f"{h['expired']} expired in transit, {h['no_zone']} of zones not served here, {h['not_kept']} not kept; "
        f"{h['failed']} startup handovers brought nothing"
    ]


def _heap_line(h: dict[str, Any] | None) -> list[str]:
    if not h:
        return []
    if not h["available"]:
        return ["heap        not trimmed: this C library has no malloc_trim (freed memory stays resident after bursts)"]
    return [f"heap        {h['trims']} trims after miss bursts, {h['seconds'] * 1000:.1f} ms in all (the loop waits on each)"]


def _udp_lines(sockets: list[dict[str, Any]] | None) -> list[str]:
    return [
        f"udp         {u['listener']} {'batched' if u['batched'] else 'one at a time'}, buffers "
        f"{_size(u['receive_buffer'])} in / {_size(u['send_buffer'])} out; dropped: "
        f"{'-' if u['receive_drops'] is None else u['receive_drops']} by the kernel (receive buffer full), "
        f"{u['truncated_queries']} too large, {u['send_drops']} replies (send buffer full), "
        f"{u['send_failures']} replies refused"
        for u in sockets or ()
    ]


def _memory(c: dict[str, Any]) -> str:
    """The bytes the caches hold, and of what budget (an older agent's report has no budget)."""
    budget = c.get("memory", {}).get("budget")
    if not budget:
        return f"{_size(c['bytes'])}" + ("" if budget is None else " (no memory budget)")
    return f"{_size(c['bytes'])} of {_size(budget)} budget"


def render(r: dict[str, Any]) -> str:
    """The readable summary of a `report` dict."""
    q, c, early = r["queries"], r["cache"], r["misses"]["early_answers"]
    state = {True: "ready", None: f"readiness unknown ({r['not_ready_because']})"}.get(
        r["ready"], f"NOT READY ({r['not_ready_because']})"
    )
    lines = [
        f"nodecache {r['version']} ({r['build']})  up {_duration(r['uptime_seconds'])}  {state}  on {', '.join(r['listen'])}",
        "",
        f"queries     {q['total']} total, {q['per_second_1m']:g}/s over the last minute",
        f"cache       {q['hits']} hits, {q['misses']} misses, hit ratio {_pct(q['hit_ratio'])}",
        f"entries     {c['entries']['success']} success / {c['capacity']['success']}, "
        f"{c['entries']['denial']} denial / {c['capacity']['denial']}, {_memory(c)}",
        f"events      {c['evictions']} evictions ({c.get('memory_evictions', 0)} for memory), "
        f"{c['stale_served']} stale served, {c['prefetches']} prefetches ({c.get('prefetches_refused', 0)} refused), "
        f"{c['coalesced']} coalesced, {c.get('nxdomain_cut', 0)} NXDOMAIN cuts, "
        f"{c.get('held_for_sibling', 0)} held for A/AAAA ({c.get('nxdomain_from_sibling', 0)} answered NXDOMAIN)",
        *_memo_line(c.get("reply_memo")),
        f"rejected    {q['refused_no_zone']} outside every zone, {q['malformed']} malformed, {q['dropped']} dropped, "
        f"{q.get('zone_transfer_refused', 0)} zone transfers",
        f"misses      {r['misses']['waiting_now']} waiting now; answered early (stale or SERVFAIL): "
        f"{early['deadline']} at the deadline, {early['upstreams_down']} with every upstream down, "
        f"{early['waiting_cap']} over the waiting caps",
        *_tcp_line(r.get("tcp")),
        *_handover_line(r.get("handover")),
        *_heap_line(r.get("heap")),
        *_udp_lines(r.get("udp")),
        "",
        f"{'zone':<22} {'queries':>9} {'hits':>9} {'misses':>8} {'ratio':>7} {'success':>8} {'denial':>7} "
        f"{'bytes':>10} {'evict':>6} {'stale':>6} {'coal':>6}",
    ]
    for z in r["zones"]:
        lines.append(
            f"{z['zone']:<22} {z['queries']:>9} {z['hits']:>9} {z['misses']:>8} {_pct(z['hit_ratio']):>7} "
            f"{z['entries']['success']:>8} {z['entries']['denial']:>7} {_size(z['bytes']):>10} "
            f"{z['evictions']:>6} {z['stale_served']:>6} {z['coalesced']:>6}"
        )
    lines += ["", f"{'upstream':<30} {'zone':<16} {'state':<5} {'queries':>8} {'fails':>6} {'retry':>6} {'p50 ms':>8} "
                  f"{'p99 ms':>8}"]
    for u in r["upstreams"]:
        lat = u["latency_ms"]
        lines.append(
            f"{u['address'] + ' ' + u['transport']:<30} {u['zone']:<16} {u['state']:<5} {u['queries']:>8} "
            f"{u['failures']:>6} {u['retries']:>6} {_num(lat['p50']):>8} {_num(lat['p99']):>8}"
        )
        if u["udp_exhausted"] or u["mismatched"]:
            lines.append(f"  {u['udp_exhausted']} tries failed with the UDP socket pool full, "
                         f"{u['mismatched']} replies ignored (wrong ID or question)")
    one_in = r["sampling"]["one_in"]
    how = "every query" if one_in <= 1 else f"1 in {one_in} queries"
    lines += ["", f"top names and clients: approximate (sampled counters, now {how}; halved every minute)"]
    for title, rows, key in (("names", r["top_names"], "name"), ("clients", r["top_clients"], "client")):
        lines.append(f"  {title}:" + ("" if rows else " none sampled yet"))
        lines += [f"{row['queries']:>10}  {row[key]}" for row in rows]
    return "\n".join(lines) + "\n"
