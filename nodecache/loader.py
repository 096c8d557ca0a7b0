"""The one config loader: built-in defaults, then the Corefile (--config), then the flags given explicitly.

`load_config` is the only place that decides where each Config field comes from. `nodecache run`,
`nodecache check-config` and every reload call it with the same options, so what check-config prints
is what the agent serves. It takes `run`'s click parameters by name (`opts`: every flag, at its
default or as given) and the names the operator set on the command line or in the environment
(`explicit`): only those win over the Corefile.

The merge, field by field, lowest first:

1. the flags' defaults (the DEFAULT_* constants of config.py, which click shows in --help);
2. the source of the zones: the Corefile with --config, else the zone flags (--upstream, TTLs...);
3. the flags given explicitly, except the zone flags, which --config refuses.

Values are checked and put in their Config form here (bare IPs, canonical HOST:PORT, None for `off`),
so nothing after this parses an operator's text again.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

from nodecache.config import (
    DEFAULT_HEALTH_PORT,
    DEFAULT_PREFETCH_AMOUNT,
    Address,
    CachePolicy,
    Config,
    ForwardPolicy,
    Zone,
    default_node_lock,
    default_zones,
    parse_ip,
    parse_size,
    read_resolv_conf,
    unless_off,
    without_self,
)
from nodecache.errors import ConfigError

Opts = Mapping[str, Any]

# Flags that shape zones. With --config the Corefile defines the zones, so setting one of these as well is
# refused: silently ignoring it would run something else than the operator reads.
ZONE_FLAGS = ("upstream", "success_capacity", "denial_capacity", "cluster_success_ttl", "cluster_denial_ttl",
              "other_ttl", "servfail_ttl", "policy")  # fmt: skip
# Flags handed to the Corefile's translation when given (corefile.Overrides field names): they change
# the Corefile's zones too (forwarding timeouts; the listen address and port a zone must not forward to).
OVERRIDE_FLAGS = {"local_ip": "listen", "port": "port", "try_timeout": "try_timeout", "timeout": "timeout"}
# --serve-stale / --serve-stale-mode: given explicitly, they win in every zone that caches (--prefetch too).
STALE_FLAGS = {"serve_stale": "stale_window", "serve_stale_mode": "stale_mode"}


def split_list(values: tuple[str, ...]) -> tuple[str, ...]:
    """Accept repeated flags and comma-separated lists alike."""
    return tuple(v.strip() for value in values for v in value.split(",") if v.strip())


def local_ips(values: tuple[str, ...]) -> tuple[str, ...]:
    """--local-ip as a tuple of bare IPs (repeated or comma-separated), or the one-line error."""
    ips = split_list(values)
    for ip in ips:
        parse_ip(ip, f"--local-ip {ip!r} is not an IP address; give bare IPv4 or IPv6 addresses (the port is --port)")
    return ips


def http_address(flag: str, value: str) -> str | None:
    """An HTTP endpoint's canonical HOST:PORT (from HOST:PORT or :PORT), None for `off`; checked now, so a
    typo fails before anything starts."""
    if unless_off(value) is None:
        return None
    try:
        address = Address.parse_http(value)
    except ConfigError as exc:
        raise ConfigError(f"{flag}: {exc}") from None
    if not address.port:
        raise ConfigError(f"{flag} {value!r} has no port; write HOST:PORT, e.g. 127.0.0.1:9253")
    return str(address)


def _size(flag: str, value: Any) -> int:
    """Bytes from a size flag's value (24Mi, 4MiB, 4194304), or the error naming the flag."""
    try:
        return parse_size(str(value))
    except ConfigError as exc:
        raise ConfigError(f"{flag}: {exc}") from None


def _given(value: Any) -> Any:
    return value


# Flags that set one Config field each, with the conversion from the flag's value: flag -> (field, convert).
# The zone flags and --try-timeout/--timeout reach Config through the zones instead.
SETTINGS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "local_ip": ("listen", local_ips),
    "port": ("port", _given),
    "tcp_idle_timeout": ("tcp_idle_timeout", _given),
    "max_tcp_connections": ("max_tcp_connections", _given),
    "max_tcp_per_client": ("max_tcp_per_client", _given),
    "max_udp_payload": ("max_udp_payload", _given),
    "loop": ("loop", _given),
    "answer_deadline": ("answer_deadline", _given),
    "max_waiting": ("max_waiting", _given),
    "max_waiting_per_name": ("max_waiting_per_name", _given),
    "setup_interface": ("setup_interface", _given),
    "setup_iptables": ("setup_iptables", _given),
    "interface_name": ("interface_name", _given),
    "sync_interval": ("sync_interval", _given),
    "skip_teardown": ("skip_teardown", _given),
    "iptables_backend": ("iptables_backend", _given),
    "node_lock": ("node_lock", unless_off),  # not given: the interface's lock (below)
    "control_socket": ("control_socket", unless_off),
    "handover_timeout": ("handover_timeout", _given),
    "metrics_address": ("metrics_address", lambda v: http_address("--metrics-address", v)),
    "health_address": ("health_address", lambda v: http_address("--health-address", v)),  # not given: below
    "lameduck": ("lameduck", _given),
    "query_log": ("query_log", _given),
    "query_log_sample": ("query_log_sample", _given),
    "query_log_errors_only": ("query_log_errors_only", _given),
    "cache_memory": ("cache_memory", lambda v: _size("--cache-memory", v)),
    "udp_batch": ("udp_batch", _given),
    "udp_rcvbuf": ("udp_rcvbuf", lambda v: _size("--udp-rcvbuf", v)),
    "udp_sndbuf": ("udp_sndbuf", lambda v: _size("--udp-sndbuf", v)),
}


def load_config(opts: Opts, explicit: frozenset[str] = frozenset()) -> Config:
    """`run`'s flags (and the Corefile, with --config) as the one frozen Config.

    `explicit` names the options the operator set (command line or environment): only those win over
    the Corefile. Without --config the flags alone decide, given or not.
    """
    defaults = _settings(opts, lambda flag: flag not in explicit)
    given = _settings(opts, lambda flag: flag in explicit)
    source = _from_corefile(opts, explicit) if opts.get("config") else _from_flags(opts, defaults | given)
    fields = defaults | source | given
    fields.setdefault("health_address", _default_health(fields["listen"]))
    fields.setdefault("node_lock", default_node_lock(fields["interface_name"]))
    stale = {field: opts[flag] for flag, field in STALE_FLAGS.items() if flag in explicit}
    if "prefetch" in explicit:
        stale |= prefetch_policy(opts)
    fields["zones"] = _stale_overridden(fields["zones"], stale)
    if opts.get("config"):
        _check_wildcard(fields)
    return Config(**fields)


def _settings(opts: Opts, wanted: Callable[[str], bool]) -> dict[str, Any]:
    """The Config fields of the flags `wanted` picks, converted; a flag left at None is "not given"."""
    return {
        field: convert(opts[flag])
        for flag, (field, convert) in SETTINGS.items()
        if flag in opts and opts[flag] is not None and wanted(flag)
    }


def _from_flags(opts: Opts, settings: dict[str, Any]) -> dict[str, Any]:
    """Without --config: the four zones of node-local-dns's stock Corefile, from the zone flags."""
    listen = settings["listen"]
    upstreams = tuple(Address.parse(u) for u in split_list(opts["upstream"]))
    if not upstreams:
        raise ConfigError(
            "no cluster DNS upstream: give --upstream with the kube-dns Service IP (kubectl -n kube-system get svc kube-dns)"
        )
    node = without_self(read_resolv_conf(opts["node_resolv_conf"]), listen, opts["port"])
    common = dict(
        success_capacity=opts["success_capacity"],
        denial_capacity=opts["denial_capacity"],
        servfail_ttl=opts["servfail_ttl"],
        stale_window=opts["serve_stale"],
        stale_mode=opts["serve_stale_mode"],
        **prefetch_policy(opts),
    )
    cluster_cache = CachePolicy(
        success_max_ttl=opts["cluster_success_ttl"], denial_max_ttl=opts["cluster_denial_ttl"], **common
    )
    other_cache = CachePolicy(success_max_ttl=opts["other_ttl"], denial_max_ttl=opts["other_ttl"], **common)
    zones = default_zones(opts["cluster_domain"], upstreams, node, cluster_cache, other_cache)
    return {"zones": tuple(_with_forwarding(z, opts) for z in zones)}


def prefetch_policy(opts: Opts) -> dict[str, Any]:
    """CachePolicy's prefetch fields from --prefetch (the Corefile option's words; "0" is off)."""
    text = str(opts.get("prefetch") or DEFAULT_PREFETCH_AMOUNT)
    if text == str(DEFAULT_PREFETCH_AMOUNT):
        return {}  # off, CachePolicy's defaults: the Corefile parser (about 1 MiB) stays unimported
    from nodecache.corefile import prefetch_fields, prefetch_flag

    return prefetch_fields(prefetch_flag(text))


def _with_forwarding(zone: Zone, opts: Opts) -> Zone:
    f = zone.forward
    forward = ForwardPolicy(
        upstreams=f.upstreams,
        force_tcp=f.force_tcp,
        policy=opts["policy"],
        try_timeout=opts["try_timeout"],
        timeout=max(opts["timeout"], opts["try_timeout"]),
    )
    return Zone(zone.name, forward, zone.cache)


def _from_corefile(opts: Opts, explicit: frozenset[str]) -> dict[str, Any]:
    """With --config: what the Corefile says (the zones, listen, port, endpoints, lameduck, log, reload, loop).

    Only what it does say: a field it has no word for is left to the flags.
    """
    from nodecache.corefile import Overrides, to_config

    refused = [f"--{name.replace('_', '-')}" for name in ZONE_FLAGS if name in explicit]
    if refused:
        raise ConfigError(
            f"{', '.join(refused)} cannot be combined with --config: the Corefile defines the zones; "
            "set it in the Corefile's forward/cache directives instead"
        )
    parsed, warnings = load_corefile(opts)
    for warning in warnings:
        logging.getLogger("nodecache.config").warning("%s", warning)
    if opts.get("corefile"):
        _write_substituted(opts)
    overrides = {field: opts[flag] for flag, field in OVERRIDE_FLAGS.items() if flag in explicit}
    if "listen" in overrides:
        overrides["listen"] = local_ips(overrides["listen"])
    config = to_config(parsed, Overrides(**overrides))
    said: dict[str, Any] = {
        "listen": config.listen,
        "port": config.port,
        "zones": config.zones,
        # to_config maps the Corefile's `log`, `reload` and `loop` itself.
        "query_log": config.query_log,
        "reload_interval": config.reload_interval,
        "loop_zones": config.loop_zones,
    }
    # `prometheus`, `health` and `lameduck` (in `health`): only when the Corefile has them.
    said |= {name: value for name in ("metrics_address", "health_address", "lameduck") if (value := getattr(config, name))}
    return said


def _check_wildcard(fields: dict[str, Any]) -> None:
    """A Corefile without `bind` listens everywhere, which cannot go on the interface or in the rules."""
    wildcard = [h for h in fields["listen"] if parse_ip(h).is_unspecified]
    if wildcard and (fields["setup_interface"] or fields["setup_iptables"]):
        raise ConfigError(
            f"the Corefile listens on {' '.join(wildcard)} (no bind), which cannot go on the interface or in the "
            "rules: add `bind` with the local IPs, or give --local-ip, or --no-setup-interface --no-setup-iptables"
        )


def _stale_overridden(zones: tuple[Zone, ...], change: dict[str, Any]) -> tuple[Zone, ...]:
    """--serve-stale / --serve-stale-mode, when given, win over the Corefile in every zone that caches."""
    if not change:
        return zones
    return tuple(
        dataclasses.replace(z, cache=dataclasses.replace(z.cache, **change))
        if z.cache.success_capacity or z.cache.denial_capacity else z
        for z in zones
    )


def _default_health(listen: tuple[str, ...]) -> str:
    """The reference's health address: the first local IP, port 8080."""
    return str(Address(listen[0] if listen else "127.0.0.1", DEFAULT_HEALTH_PORT))


def load_corefile(opts: Opts, env: Mapping[str, str] | None = None) -> Any:
    """The --config Corefile as this node runs it (placeholders filled in, stub domains added).

    Returns (CorefileConfig, warnings). Warnings are logged by the caller.
    """
    from nodecache.pillars import default_kube_dns_dir, load_node_local_corefile

    kube_dns_dir = opts.get("kube_dns_config_dir") or default_kube_dns_dir()
    return load_node_local_corefile(
        opts["config"],
        local_ips=split_list(opts["local_ip"]),
        upstream_svc=opts.get("upstream_svc"),
        env=os.environ if env is None else env,
        kube_dns_dir=kube_dns_dir,
        node_resolv_conf=opts["node_resolv_conf"],
        cluster_domain=opts["cluster_domain"],
    )


def _write_substituted(opts: Opts) -> None:
    """node-cache writes the filled-in Corefile to --corefile; so do we (stub domains are not appended)."""
    from pathlib import Path

    from nodecache.corefile import read_text
    from nodecache.pillars import default_kube_dns_dir, pillar_values, read_kube_dns_dir, substitute

    kube_dns = read_kube_dns_dir(opts.get("kube_dns_config_dir") or default_kube_dns_dir())
    values = pillar_values(split_list(opts["local_ip"]), opts.get("upstream_svc"), os.environ, kube_dns,
                           opts["node_resolv_conf"], opts["cluster_domain"])  # fmt: skip
    text = substitute(read_text(opts["config"]), values, str(opts["config"]))
    try:
        Path(opts["corefile"]).write_text(text)
    except OSError as exc:
        raise ConfigError(f"--corefile: cannot write {opts['corefile']}: {exc.strerror}") from None


def watched_files(opts: Opts) -> list[str]:
    """The files whose change reloads the agent: the Corefile, the kube-dns ConfigMap, the node resolv.conf."""
    if not opts.get("config"):
        return [opts["node_resolv_conf"]]
    from nodecache.pillars import default_kube_dns_dir

    kube_dns = opts.get("kube_dns_config_dir") or default_kube_dns_dir()
    return [p for p in (opts["config"], kube_dns, opts["node_resolv_conf"]) if p]

