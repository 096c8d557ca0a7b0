"""The `nodecache check-config` table: the effective zones, one row each, for humans."""

from __future__ import annotations

from nodecache.config import CachePolicy, Config


def check_config_table(config: Config) -> str:
    """The effective zones as a table, for `nodecache check-config` and for humans."""
    head = f"listen {' '.join(config.listen)} port {config.port}"
    if config.metrics_address:
        head += f"; metrics {config.metrics_address}"
    if config.health_address:
        head += f"; health {config.health_address}"
    rows = [("ZONE", "UPSTREAMS", "TRANSPORT", "SUCCESS", "DENIAL", "SERVFAIL", "STALE", "PREFETCH")]
    for zone in config.zones:
        f, c = zone.forward, zone.cache
        rows.append(
            (
                zone.name,
                " ".join(str(a) for a in f.upstreams),
                "tcp" if f.force_tcp else "udp, tcp if truncated",
                _cache_cell(c.success_capacity, c.success_min_ttl, c.success_max_ttl),
                _cache_cell(c.denial_capacity, c.denial_min_ttl, c.denial_max_ttl),
                f"{c.servfail_ttl}s" if c.servfail_ttl and c.denial_capacity else "off",
                f"{c.stale_window}s {c.stale_mode}" if c.stale_window else "off",
                _prefetch_cell(c),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join([head, *lines]) + "\n"


def _cache_cell(capacity: int, min_ttl: int, max_ttl: int) -> str:
    return f"{capacity} x {min_ttl}-{max_ttl}s" if capacity else "off"


def _prefetch_cell(policy: CachePolicy) -> str:
    if not policy.prefetch_amount:
        return "off"
    return f"{policy.prefetch_amount} hits/{policy.prefetch_duration:g}s at {policy.prefetch_percentage}%"
