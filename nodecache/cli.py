"""The `nodecache` command line (click).

Every option has help text, shows its default and reads a NODECACHE_*
environment variable, so a DaemonSet can configure the agent either way.
Errors we raise on purpose print as one line and exit 2, never a traceback.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import click

from nodecache import __version__
from nodecache.config import (
    DEFAULT_ANSWER_DEADLINE,
    DEFAULT_CACHE_MEMORY,
    DEFAULT_CAPACITY,
    DEFAULT_CLUSTER_DENIAL_TTL,
    DEFAULT_CLUSTER_DOMAIN,
    DEFAULT_CLUSTER_SUCCESS_TTL,
    DEFAULT_CONTROL_SOCKET,
    DEFAULT_HANDOVER_TIMEOUT,
    DEFAULT_HEALTH_PORT,
    DEFAULT_INTERFACE_NAME,
    DEFAULT_LAMEDUCK,
    DEFAULT_LOCAL_IP,
    DEFAULT_MAX_TCP_CONNECTIONS,
    DEFAULT_MAX_TCP_PER_CLIENT,
    DEFAULT_MAX_UDP_PAYLOAD,
    DEFAULT_MAX_WAITING,
    DEFAULT_MAX_WAITING_PER_NAME,
    DEFAULT_METRICS_ADDRESS,
    DEFAULT_NODE_LOCK_DIR,
    DEFAULT_OTHER_TTL,
    DEFAULT_PREFETCH_AMOUNT,
    DEFAULT_QUERY_LOG_SAMPLE,
    DEFAULT_RESOLV_CONF,
    DEFAULT_SERVFAIL_TTL,
    DEFAULT_STALE_MODE,
    DEFAULT_STALE_WINDOW,
    DEFAULT_SYNC_INTERVAL,
    DEFAULT_TCP_IDLE_TIMEOUT,
    DEFAULT_TIMEOUT,
    DEFAULT_TRY_TIMEOUT,
    DEFAULT_UDP_BATCH,
    DEFAULT_UDP_RCVBUF,
    DEFAULT_UDP_SNDBUF,
    DNS_PORT,
    IPTABLES_BACKENDS,
    LOOPS,
    MAX_UDP_BATCH,
    POLICIES,
    STALE_MODES,
    check_interface_name,
)
from nodecache.errors import ControlError, NodecacheError
from nodecache.loader import load_config, local_ips, watched_files
from nodecache.logs import LOG_FORMATS
from nodecache.names import canonical_name

LOG_LEVELS = ("debug", "info", "warning", "error")


def _option(name: str, *aliases: str, **kw: Any) -> Callable[[Any], Any]:
    """A click option with its NODECACHE_ variable (named after its first name) and its default shown."""
    env = "NODECACHE_" + name.split("/")[0].lstrip("-").replace("-", "_").upper()
    return click.option(name, *aliases, envvar=env, show_envvar=True, show_default=True, **kw)


class Duration(click.ParamType):
    """Seconds, written 90, 90s, 15m or 1h (whole seconds: cache lifetimes are whole seconds)."""

    name = "duration"
    UNITS = {"s": 1, "m": 60, "h": 3600}

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip().lower()
        unit = self.UNITS.get(text[-1:], 0)
        number = text[:-1] if unit else text
        if not (number.isascii() and number.isdigit()):
            self.fail(f"{value!r} is not a duration; write seconds, or 90s, 15m, 1h", param, ctx)
        return int(number) * (unit or 1)


def _corefile_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The Corefile flags, shared by `run` and `check-config` (node-cache's names where it has them)."""
    options = [
        _option("--config", "--base-corefile", default=None, metavar="FILE", type=click.Path(dir_okay=False),
                help="Corefile to run (node-local-dns's ConfigMap, placeholders and all); its zones replace the "
                     "flag-built ones. Flags given explicitly still win (see docs/migrate.md, which value wins)."),
        _option("--corefile", default=None, metavar="FILE", type=click.Path(dir_okay=False),
                help="node-cache compatibility: write the Corefile with its placeholders filled in to FILE "
                     "(for inspection; the agent runs from --config)."),
        _option("--upstream-svc", default=None, metavar="NAME",
                help="Service in front of the cluster DNS (e.g. kube-dns-upstream); its IP, from the variable "
                     "NAME_SERVICE_HOST, fills in __PILLAR__CLUSTER__DNS__."),
        _option("--kube-dns-config-dir", default=None, metavar="DIR", type=click.Path(file_okay=False),
                help="kube-dns ConfigMap mount (stubDomains, upstreamNameservers) read with --config. "
                     "[default: /etc/kube-dns when present]"),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="nodecache")
def main() -> None:
    """nodecache: a node-local DNS cache for Kubernetes."""


@main.command()
@_option("--local-ip", "--listen", multiple=True, default=(DEFAULT_LOCAL_IP,), metavar="IP[,IP...]",
         help="Address to serve DNS on, and to put on the interface and in the iptables rules; repeat or "
              "comma-separate for several (e.g. 169.254.20.10 and the kube-dns ClusterIP), IPv4 and IPv6 alike.")
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
@_option("--cache-memory", default=f"{DEFAULT_CACHE_MEMORY // 2**20}Mi", metavar="BYTES",
         help="Memory all zones' cached answers may take together, e.g. 24Mi, 64MiB, 32M; least recently used "
              "answers (negative ones first) make room. 0: only the per-zone entry capacities bound it.")
@_option("--cluster-success-ttl", type=click.IntRange(0), default=DEFAULT_CLUSTER_SUCCESS_TTL,
         help="Longest time (s) a positive cluster-domain answer is cached.")
@_option("--cluster-denial-ttl", type=click.IntRange(0), default=DEFAULT_CLUSTER_DENIAL_TTL,
         help="Longest time (s) a negative cluster-domain answer is cached.")
@_option("--other-ttl", type=click.IntRange(0), default=DEFAULT_OTHER_TTL,
         help="Longest time (s) any answer is cached for in-addr.arpa, ip6.arpa and other names.")
@_option("--servfail-ttl", type=click.IntRange(0, 300), default=DEFAULT_SERVFAIL_TTL,
         help="How long (s) an upstream SERVFAIL is cached; it never replaces a valid answer.")
@_option("--serve-stale", type=Duration(), default=DEFAULT_STALE_WINDOW, metavar="DURATION",
         help="How long an expired answer is kept to be served (TTL 30) when its refresh fails or misses the "
              "answer deadline (RFC 8767); 0 turns serve-stale off. With --config it overrides the Corefile.")
@_option("--serve-stale-mode", type=click.Choice(STALE_MODES), default=DEFAULT_STALE_MODE,
         help="verify: ask upstream first, serve stale only when that fails or is too slow; immediate: answer "
              "stale at once and refresh in the background (CoreDNS's serve_stale modes).")
@_option("--prefetch", default=str(DEFAULT_PREFETCH_AMOUNT), metavar="'AMOUNT [DURATION [PERCENTAGE%]]'",
         help="Refresh an answer asked AMOUNT times with no gap of DURATION (1m) in the background once at most "
              "PERCENTAGE (10%) of its TTL is left (CoreDNS's cache prefetch); 0 is off. With --config it "
              "overrides the Corefile.")
@_option("--answer-deadline", type=click.FloatRange(0.05), default=DEFAULT_ANSWER_DEADLINE, metavar="SECONDS",
         help="Every query is answered within this time of its arrival: fresh, stale, or SERVFAIL.")
@_option("--max-waiting", type=click.IntRange(1), default=DEFAULT_MAX_WAITING, metavar="N",
         help="Clients waiting on upstream answers at once, in total; beyond it SERVFAIL at once (counted).")
@_option("--max-waiting-per-name", type=click.IntRange(1), default=DEFAULT_MAX_WAITING_PER_NAME, metavar="N",
         help="Clients waiting on the same name and type at once; beyond it SERVFAIL at once (counted).")
@_option("--policy", type=click.Choice(POLICIES), default="random",
         help="Order in which several upstreams of a zone are tried.")
@_option("--try-timeout", type=click.FloatRange(0.01), default=DEFAULT_TRY_TIMEOUT,
         help="Longest wait (s) for one upstream try; a try silent for a few round-trip times is retried earlier.")
@_option("--timeout", type=click.FloatRange(0.01), default=DEFAULT_TIMEOUT,
         help="Seconds before a query that no upstream answered gets SERVFAIL.")
@_option("--tcp-idle-timeout", type=click.FloatRange(0.1), default=DEFAULT_TCP_IDLE_TIMEOUT,
         help="Seconds an idle client TCP connection is kept open; one whose replies go unread this long is reset.")
@_option("--max-tcp-connections", type=click.IntRange(1), default=DEFAULT_MAX_TCP_CONNECTIONS,
         help="Client TCP connections open at once; one more is closed as soon as it is accepted (counted).")
@_option("--max-tcp-per-client", type=click.IntRange(1), default=DEFAULT_MAX_TCP_PER_CLIENT,
         help="Client TCP connections open at once from one client address; one more is closed at once (counted).")
@_option("--max-udp-payload", type=click.IntRange(512, 65535), default=DEFAULT_MAX_UDP_PAYLOAD,
         help="Largest UDP reply sent, whatever size a client advertises (1232 avoids fragmentation).")
@_option("--udp-batch", type=click.IntRange(0, MAX_UDP_BATCH), default=DEFAULT_UDP_BATCH, metavar="N",
         help="UDP queries read with one recvmmsg, their cache hits answered with one sendmmsg; 0 or 1 uses the "
              "event loop's datagram transport (also the fallback where recvmmsg is missing).")
@_option("--udp-rcvbuf", default=f"{DEFAULT_UDP_RCVBUF // 2**20}Mi", metavar="BYTES",
         help="Kernel receive buffer of each listening UDP socket (unbound's so-rcvbuf), absorbing bursts; capped at "
              "net.core.rmem_max unless the agent has CAP_NET_ADMIN (logged). 0: the system default.")
@_option("--udp-sndbuf", default=f"{DEFAULT_UDP_SNDBUF // 2**20}Mi", metavar="BYTES",
         help="Kernel send buffer of each listening UDP socket (unbound's so-sndbuf); capped at net.core.wmem_max "
              "unless the agent has CAP_NET_ADMIN (logged). 0: the system default.")
@_option("--loop", type=click.Choice(LOOPS), default="auto",
         help="Event loop: uvloop is several times faster on cache hits; auto falls back to asyncio.")
@_option("--setup-interface/--no-setup-interface", default=True,
         help="Create the interface and add the local IPs to it, and keep them there; with --no-setup-interface "
              "the agent only checks that something else did.")
@_option("--setup-iptables/--no-setup-iptables", default=True,
         help="Install the NOTRACK/ACCEPT iptables rules for the local IPs and keep them in place.")
@_option("--interface-name", default=DEFAULT_INTERFACE_NAME, help="Name of the interface that holds the local IPs.")
@_option("--sync-interval", type=click.FloatRange(0.1), default=DEFAULT_SYNC_INTERVAL,
         help="Seconds between full checks of the interface and the rules (netlink events heal the interface at once).")
@_option("--skip-teardown", is_flag=True, default=False,
         help="Leave the interface and rules in place at exit (for upgrades: the next agent takes them over).")
@_option("--iptables-backend", type=click.Choice(IPTABLES_BACKENDS), default="auto",
         help="iptables flavour for the rules; auto picks the one already holding the node's (kube-proxy's) rules.")
@_option("--node-lock", default=None, metavar="PATH",
         help="Lock file every agent of this node holds while it runs (on a directory all agent pods share): at exit "
              "an agent leaves the interface and rules in place while another still holds it; 'off' uses none. "
              f"[default: {DEFAULT_NODE_LOCK_DIR}/INTERFACE-NAME.lock]")
@_option("--log-level", type=click.Choice(LOG_LEVELS), default="info", help="Least severe log level shown.")
@_option("--log-format", type=click.Choice(LOG_FORMATS), default="text",
         help="Log lines as text (time level logger: message key=value) or as one JSON object per line.")
@_option("--control-socket", default=DEFAULT_CONTROL_SOCKET, metavar="PATH",
         help="Unix socket (mode 0600) for `nodecache stats` and `nodecache flush`; 'off' serves none.")
@_option("--handover-timeout", type=click.FloatRange(0), default=DEFAULT_HANDOVER_TIMEOUT, metavar="SECONDS",
         help="At startup, copy the cache of the agent already answering on --control-socket (a rollout) for at "
              "most this long before serving; then start with what came. 0: start empty.")
@_option("--metrics-address", default=DEFAULT_METRICS_ADDRESS, metavar="HOST:PORT",
         help="Where Prometheus scrapes /metrics (CoreDNS metric names); 'off' serves none.")
@_option("--health-address", default=None, metavar="HOST:PORT",
         help="Where /health (liveness) and /ready (a real query through the listeners) are served; 'off' serves "
              f"none. [default: the first --local-ip, port {DEFAULT_HEALTH_PORT}]")
@_option("--lameduck", type=click.FloatRange(0), default=DEFAULT_LAMEDUCK, metavar="SECONDS",
         help="On SIGTERM, /ready turns 503 and queries are still answered this long before shutdown.")
@_option("--query-log", is_flag=True, default=False,
         help="Log one line per answered query: client, name, type, rcode, hit/miss/stale, duration.")
@_option("--query-log-sample", type=click.FloatRange(0, 1, min_open=True), default=DEFAULT_QUERY_LOG_SAMPLE,
         metavar="RATE", help="With --query-log: the share of queries logged, e.g. 0.01 for one in a hundred.")
@_option("--query-log-errors-only", is_flag=True, default=False,
         help="With --query-log: log only answers with rcode SERVFAIL or NXDOMAIN.")
@_corefile_options
def run(**opts: Any) -> None:
    """Run the caching agent in the foreground."""
    _setup_logging(opts["log_level"], opts["log_format"])
    explicit = _explicit_flags(click.get_current_context())
    config = _guard(lambda: load_config(opts, explicit))
    from nodecache import notls

    with notls.held_back():  # asyncio and uvloop import ssl; the agent speaks no TLS (notls.py)
        from nodecache import server  # the event loop and sockets only for `run`

        server.loop_factory(config.loop)
    _guard(lambda: server.run(config, lambda: load_config(opts, explicit), watched_files(opts)))


def _check_config(**opts: Any) -> None:
    """Print the zones the agent would run (zone, upstreams, transport, cache caps, stale, prefetch), or the error.

    Takes every `run` flag, so the same command line can be checked before it is run.
    Exit 0 when valid; 2 with one line saying what to fix otherwise. Nothing is bound or changed.
    """
    from nodecache.corefile import check_config_table

    _setup_logging(opts["log_level"], opts["log_format"])
    explicit = _explicit_flags(click.get_current_context())
    config = _guard(lambda: load_config(opts, explicit))
    click.echo(check_config_table(config), nl=False)


main.add_command(click.Command(
    "check-config", callback=_check_config, params=list(run.params), help=_check_config.__doc__,
    short_help="Check a Corefile and flags; print the zones the agent would run.",
))  # fmt: skip


build_config = load_config  # the name tests and scripts know the loader by


def _explicit_flags(ctx: click.Context) -> frozenset[str]:
    """Options the operator set on the command line or through the environment (not defaults)."""
    given = (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT)
    return frozenset(name for name in ctx.params if ctx.get_parameter_source(name) in given)


@main.command()
@_option("--interface-name", default=DEFAULT_INTERFACE_NAME, help="Name of the interface the agent created.")
@_option("--local-ip", "--listen", multiple=True, metavar="IP[,IP...]",
         help="Only remove the rules for these addresses (default: every rule carrying our comment).")
@_option("--iptables-backend", type=click.Choice(IPTABLES_BACKENDS), default="auto",
         help="iptables flavour the rules were installed with; auto picks the one holding the node's rules.")
def teardown(interface_name: str, local_ip: tuple[str, ...], iptables_backend: str) -> None:
    """Remove what an agent left on this node (after SIGKILL or OOM): its iptables rules, then its interface.

    Safe to run any time the agent is not running; running it twice removes nothing the second time.
    """
    from nodecache.node import teardown_leftovers

    def checked_ips() -> tuple[str, ...]:
        ips = local_ips(local_ip)
        check_interface_name(interface_name)
        return ips

    ips = _guard(checked_ips)
    removed = _guard(lambda: teardown_leftovers(interface_name, ips, iptables_backend, echo=click.echo))
    if not removed:
        click.echo("nothing to remove")


def _guard(step: Callable[[], Any]) -> Any:
    """Run `step`; an error of ours becomes one line on stderr and exit code 2."""
    try:
        return step()
    except NodecacheError as exc:
        click.echo(f"nodecache: {exc}", err=True)
        sys.exit(2)


def _setup_logging(level: str, fmt: str = "text") -> None:
    from nodecache.logs import setup

    setup(level, fmt)


# ---------------------------------------------------------------------------- operator commands

DEFAULT_WATCH = 0.0
CLEAR_SCREEN = "\033[H\033[2J"


def _control_option() -> Callable[[Any], Any]:
    """The one flag of `stats` and `flush` read from the environment: the same variable as `run`'s.

    Their other flags say what to do now; a variable left in a DaemonSet must not change that.
    """
    return _option("--control-socket", default=DEFAULT_CONTROL_SOCKET, metavar="PATH",
                   help="The agent's control socket (its --control-socket).")  # fmt: skip


def _call(path: str, cmd: str, args: dict[str, Any]) -> Any:
    """One control request; an unreachable agent is one line on stderr and exit code 1."""
    from nodecache.control import call

    try:
        return call(path, cmd, args)
    except ControlError as exc:
        click.echo(f"nodecache: {exc}", err=True)
        sys.exit(1)


@main.command()
@_control_option()
@click.option("--json", "as_json", is_flag=True, default=False, help="Print the stats as JSON (stable field names) for scripts.")
@click.option("--watch", type=click.FloatRange(0), default=DEFAULT_WATCH, metavar="SECONDS", show_default=True,
              help="Refresh every SECONDS until Ctrl-C (0: print once). With --json, one JSON object per line.")
@click.option("--top", type=click.IntRange(0, 1000), default=10, metavar="N", show_default=True,
              help="How many top names and clients to show.")
def stats(control_socket: str, as_json: bool, watch: float, top: int) -> None:
    """Show what the running agent is doing: queries, cache, upstreams, top names and clients."""
    import json

    from nodecache.stats import render

    try:
        while True:
            result = _call(control_socket, "stats", {"top": top})
            if as_json:
                click.echo(json.dumps(result, sort_keys=True, indent=None if watch else 2))
            else:
                click.echo((CLEAR_SCREEN if watch and sys.stdout.isatty() else "") + render(result), nl=False)
            if not watch:
                return
            sys.stdout.flush()
            time.sleep(watch)
    except KeyboardInterrupt:
        return


@main.command()
@_control_option()
@click.option("--name", metavar="NAME", help="Flush only this name (every type unless --type).")
@click.option("--suffix", metavar="ZONE", help="Flush this name and everything under it, e.g. svc.cluster.local.")
@click.option("--type", "qtype", metavar="TYPE",
              help="Flush only this record type (A, AAAA, SRV...); narrows --name or --suffix.")
def flush(control_socket: str, name: str | None, suffix: str | None, qtype: str | None) -> None:
    """Remove cached answers from the running agent: all of them, or by name, suffix and type."""
    from nodecache.dnstext import type_number

    def checked() -> dict[str, Any]:
        args: dict[str, Any] = {}
        if name is not None:
            args["name"] = canonical_name(name)
        if suffix is not None:
            args["suffix"] = canonical_name(suffix)
        if qtype is not None:
            args["type"] = type_number(qtype)
        return args

    args = _guard(checked)
    removed = _call(control_socket, "flush", args)["removed"]
    what = " ".join(f"--{k} {v}" for k, v in ((k, qtype if k == "type" else v) for k, v in args.items()))
    click.echo(f"removed {removed} cached answer{'' if removed == 1 else 's'}" + (f" ({what})" if what else ""))


@main.command()
@_control_option()
@click.argument("file", type=click.Path(dir_okay=False, writable=True))
def dump(control_socket: str, file: str) -> None:
    """Write the running agent's cache (answers with their remaining lifetimes) to FILE, for `nodecache load`."""
    import base64
    from pathlib import Path

    click.echo(f"dumping the cache of the agent at {control_socket}...", err=True)
    result = _call(control_socket, "dump", {})
    Path(file).write_bytes(base64.b64decode(result.pop("dump")))
    click.echo(f"wrote {file}: " + _counts(result))


@main.command()
@_control_option()
@click.argument("file", type=click.Path(dir_okay=False, exists=True))
def load(control_socket: str, file: str) -> None:
    """Load a cache dump (`nodecache dump`) into the running agent; expired answers and unknown zones are skipped."""
    import base64
    from pathlib import Path

    data = Path(file).read_bytes()
    click.echo(f"loading {len(data)} bytes into the agent at {control_socket}...", err=True)
    click.echo("loaded: " + _counts(_call(control_socket, "load", {"dump": base64.b64encode(data).decode()})))


def _counts(result: dict[str, Any]) -> str:
    return ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in result.items())


# ---------------------------------------------------------------------------- deployment


@main.command()
@click.option("--local-ip", default=DEFAULT_LOCAL_IP, show_default=True, metavar="IP",
              help="The node-local address pods will ask (link-local, the same on every node).")
@click.option("--dns-server", required=True, metavar="IP",
              help="The kube-dns ClusterIP (kubectl -n kube-system get svc kube-dns -o jsonpath={.spec.clusterIP}).")
@click.option("--domain", default=DEFAULT_CLUSTER_DOMAIN, show_default=True, help="The cluster's DNS domain.")
@click.option("--ipvs", is_flag=True, default=False,
              help="kube-proxy in IPVS mode: serve the local IP only; kubelet must then point pods at it.")
@click.option("--image", default=None, metavar="REF",
              help="Container image of nodecache. [default: nodecache:VERSION, as `make image` tags it]")
@click.option("--template", default=None, type=click.Path(dir_okay=False, exists=True), metavar="FILE",
              help="daemonset.yaml to render. [default: the one shipped with nodecache]")
def manifest(local_ip: str, dns_server: str, domain: str, ipvs: bool, image: str | None, template: str | None) -> None:
    """Print daemonset.yaml with every placeholder filled in, ready for kubectl apply -f -."""
    from pathlib import Path

    from nodecache import manifest as rendering

    values = _guard(lambda: rendering.checked_values(local_ip, dns_server, domain, ipvs, image or rendering.DEFAULT_IMAGE))
    click.echo(_guard(lambda: rendering.render_file(values, Path(template) if template else None)), nl=False)
