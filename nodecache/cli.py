"""The `nodecache` command line (click).

Every option has help text, shows its default and reads a NODECACHE_*
environment variable, so a DaemonSet can configure the agent either way.
Errors we raise on purpose print as one line and exit 2, never a traceback.
"""

from __future__ import annotations

import ipaddress
import logging
import sys
from collections.abc import Callable
from typing import Any

import click

from nodecache import __version__
from nodecache.config import (
    DEFAULT_CAPACITY,
    DEFAULT_CLUSTER_DENIAL_TTL,
    DEFAULT_CLUSTER_DOMAIN,
    DEFAULT_CLUSTER_SUCCESS_TTL,
    DEFAULT_LOCAL_IP,
    DEFAULT_MAX_UDP_PAYLOAD,
    DEFAULT_OTHER_TTL,
    DEFAULT_RESOLV_CONF,
    DEFAULT_SERVFAIL_TTL,
    DEFAULT_TCP_IDLE_TIMEOUT,
    DEFAULT_TIMEOUT,
    DEFAULT_TRY_TIMEOUT,
    DNS_PORT,
    LOOPS,
    POLICIES,
    Address,
    CachePolicy,
    Config,
    ForwardPolicy,
    Zone,
    default_zones,
    read_resolv_conf,
    without_self,
)
from nodecache.errors import ConfigError, NodecacheError

LOG_LEVELS = ("debug", "info", "warning", "error")


def _option(name: str, **kw: Any) -> Callable[[Any], Any]:
    """A click option with its NODECACHE_ variable and its default shown."""
    env = "NODECACHE_" + name.lstrip("-").replace("-", "_").upper()
    return click.option(name, envvar=env, show_envvar=True, show_default=True, **kw)


def _split(values: tuple[str, ...]) -> tuple[str, ...]:
    """Accept repeated flags and comma-separated lists alike."""
    return tuple(v.strip() for value in values for v in value.split(",") if v.strip())


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="nodecache")
def main() -> None:
    """nodecache: a node-local DNS cache for Kubernetes."""


@main.command()
@_option("--listen", multiple=True, default=(DEFAULT_LOCAL_IP,), metavar="IP",
         help="Address to serve DNS on; repeat (or comma-separate) for several, IPv4 and IPv6 alike.")
@_option("--port", type=click.IntRange(0, 65535), default=DNS_PORT,
         help="Port for UDP and TCP (0 picks a free one, for tests).")
@_option("--upstream", multiple=True, metavar="IP[:PORT]",
         help="Cluster DNS server (the kube-dns/CoreDNS Service IP) for the cluster domain and reverse zones; repeatable.")
@_option("--cluster-domain", default=DEFAULT_CLUSTER_DOMAIN, help="The cluster's DNS domain.")
@_option("--node-resolv-conf", default=DEFAULT_RESOLV_CONF, type=click.Path(dir_okay=False),
         help="resolv.conf whose nameservers answer every name outside the cluster zones.")
@_option("--success-capacity", type=click.IntRange(0), default=DEFAULT_CAPACITY,
         help="Positive answers kept per zone (0 disables).")
@_option("--denial-capacity", type=click.IntRange(0), default=DEFAULT_CAPACITY,
         help="Negative answers (NXDOMAIN, NODATA, SERVFAIL) kept per zone (0 disables).")
@_option("--cluster-success-ttl", type=click.IntRange(0), default=DEFAULT_CLUSTER_SUCCESS_TTL,
         help="Longest time (s) a positive cluster-domain answer is cached.")
@_option("--cluster-denial-ttl", type=click.IntRange(0), default=DEFAULT_CLUSTER_DENIAL_TTL,
         help="Longest time (s) a negative cluster-domain answer is cached.")
@_option("--other-ttl", type=click.IntRange(0), default=DEFAULT_OTHER_TTL,
         help="Longest time (s) any answer is cached for in-addr.arpa, ip6.arpa and other names.")
@_option("--servfail-ttl", type=click.IntRange(0, 300), default=DEFAULT_SERVFAIL_TTL,
         help="How long (s) an upstream SERVFAIL is cached; it never replaces a valid answer.")
@_option("--policy", type=click.Choice(POLICIES), default="random",
         help="Order in which several upstreams of a zone are tried.")
@_option("--try-timeout", type=click.FloatRange(0.01), default=DEFAULT_TRY_TIMEOUT,
         help="Seconds to wait for one upstream before trying the next.")
@_option("--timeout", type=click.FloatRange(0.01), default=DEFAULT_TIMEOUT,
         help="Seconds before a query that no upstream answered gets SERVFAIL.")
@_option("--tcp-idle-timeout", type=click.FloatRange(0.1), default=DEFAULT_TCP_IDLE_TIMEOUT,
         help="Seconds an idle client TCP connection is kept open.")
@_option("--max-udp-payload", type=click.IntRange(512, 65535), default=DEFAULT_MAX_UDP_PAYLOAD,
         help="Largest UDP reply sent, whatever size a client advertises (1232 avoids fragmentation).")
@_option("--loop", type=click.Choice(LOOPS), default="auto",
         help="Event loop: uvloop is several times faster on cache hits; auto falls back to asyncio.")
@_option("--log-level", type=click.Choice(LOG_LEVELS), default="info", help="Least severe log level shown.")
def run(**opts: Any) -> None:
    """Run the caching agent in the foreground."""
    _setup_logging(opts["log_level"])
    config = _guard(lambda: build_config(opts))
    from nodecache import server  # the event loop and sockets only for `run`

    _guard(lambda: server.run(config))


def build_config(opts: dict[str, Any]) -> Config:
    """Turn `run`'s flags into the one frozen Config."""
    listen = _split(opts["listen"])
    for host in listen:
        if not _is_ip(host):
            raise ConfigError(f"--listen {host!r} is not an IP address; give a bare IPv4 or IPv6 address (the port is --port)")
    upstreams = tuple(Address.parse(u) for u in _split(opts["upstream"]))
    if not upstreams:
        raise ConfigError(
            "no cluster DNS upstream: give --upstream with the kube-dns Service IP (kubectl -n kube-system get svc kube-dns)"
        )
    node = without_self(read_resolv_conf(opts["node_resolv_conf"]), listen, opts["port"])
    common = dict(
        success_capacity=opts["success_capacity"],
        denial_capacity=opts["denial_capacity"],
        servfail_ttl=opts["servfail_ttl"],
    )
    cluster_cache = CachePolicy(
        success_max_ttl=opts["cluster_success_ttl"], denial_max_ttl=opts["cluster_denial_ttl"], **common
    )
    other_cache = CachePolicy(success_max_ttl=opts["other_ttl"], denial_max_ttl=opts["other_ttl"], **common)
    zones = default_zones(opts["cluster_domain"], upstreams, node, cluster_cache, other_cache)
    zones = tuple(_with_forwarding(z, opts) for z in zones)
    return Config(
        listen=listen,
        port=opts["port"],
        zones=zones,
        tcp_idle_timeout=opts["tcp_idle_timeout"],
        max_udp_payload=opts["max_udp_payload"],
        loop=opts["loop"],
    )


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _with_forwarding(zone: Zone, opts: dict[str, Any]) -> Zone:
    f = zone.forward
    forward = ForwardPolicy(
        upstreams=f.upstreams,
        force_tcp=f.force_tcp,
        policy=opts["policy"],
        try_timeout=opts["try_timeout"],
        timeout=max(opts["timeout"], opts["try_timeout"]),
    )
    return Zone(zone.name, forward, zone.cache)


def _guard(step: Callable[[], Any]) -> Any:
    """Run `step`; an error of ours becomes one line on stderr and exit code 2."""
    try:
        return step()
    except NodecacheError as exc:
        click.echo(f"nodecache: {exc}", err=True)
        sys.exit(2)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
