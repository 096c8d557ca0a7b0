"""The configuration: frozen dataclasses, built once and passed down read-only.

Defaults are named constants matching node-local-dns's stock Corefile, so a
reader can compare them with the reference in one place.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from nodecache.errors import ConfigError, ResolvConfError
from nodecache.names import canonical_name, name_to_wire

# The name helpers live in nodecache.names. These re-exports keep `from nodecache.config
# import canonical_zone, name_to_wire` working for code written before the move (the
# Corefile parser, cli, server, pillars, tests); new code imports from nodecache.names.
canonical_zone = canonical_name

DNS_PORT = 53
DEFAULT_LOCAL_IP = "169.254.20.10"
DEFAULT_CLUSTER_DOMAIN = "cluster.local"
DEFAULT_RESOLV_CONF = "/etc/resolv.conf"
REVERSE_ZONES = ("in-addr.arpa.", "ip6.arpa.")

# Cache policy of the reference: `success 9984 30` and `denial 9984 5` for
# the cluster domain, `cache 30` (same capacities) for the other zones.
DEFAULT_CAPACITY = 9984
DEFAULT_CLUSTER_SUCCESS_TTL = 30
DEFAULT_CLUSTER_DENIAL_TTL = 5
DEFAULT_OTHER_TTL = 30
DEFAULT_SERVFAIL_TTL = 5  # CoreDNS caps cached SERVFAIL at 5 s
# Serve-stale (RFC 8767) is on by default, unlike node-local-dns: an expired
# answer stays an hour (CoreDNS's serve_stale default) and is served, with TTL
# 30, when its refresh fails or misses the answer deadline.
DEFAULT_STALE_WINDOW = 3600
STALE_REPLY_TTL = 30  # RFC 8767 section 4
# CoreDNS's serve_stale modes: "verify" asks upstream first and serves stale
# only when that fails (ours: or misses the answer deadline); "immediate"
# answers stale at once and refreshes in the background.
STALE_MODES = ("verify", "immediate")
DEFAULT_STALE_MODE = "verify"
# Every client query is answered within this many seconds of its arrival:
# fresh, stale or SERVFAIL (RFC 8767's client response timer). Clients give up
# at 5 s (glibc's default), so an answer after that helps nobody.
DEFAULT_ANSWER_DEADLINE = 1.8
# Clients waiting on misses, in total and for one name; beyond them SERVFAIL
# at once. A waiter costs a few hundred bytes, so the total stays in single MiB.
DEFAULT_MAX_WAITING = 10_000
DEFAULT_MAX_WAITING_PER_NAME = 1_000
# Prefetch (CoreDNS `cache { prefetch AMOUNT [DURATION [PERCENTAGE%]] }`): off, as in
# node-local-dns. An entry asked AMOUNT times, with no gap of DURATION between two
# asks, is refreshed in the background once at most PERCENTAGE of its TTL is left.
DEFAULT_PREFETCH_AMOUNT = 0  # 0: off
DEFAULT_PREFETCH_DURATION = 60.0  # CoreDNS's default DURATION (1m)
DEFAULT_PREFETCH_PERCENTAGE = 10  # CoreDNS's default PERCENTAGE
PREFETCH_PERCENTAGE_RANGE = (10, 90)  # CoreDNS accepts 10% to 90%
# Prefetches in flight at once over all zones; one more is not started (counted).
DEFAULT_MAX_PREFETCHING = 100
# Cache handover at a rollout (handover.py): a new agent copies the live agent's cache over the
# control socket before it serves, for at most this long (0: never); a dump holds at most this many
# bytes of answers (about 1/10 of what they take in memory, so a full default --cache-memory fits).
DEFAULT_HANDOVER_TIMEOUT = 5.0
DEFAULT_HANDOVER_MAX_BYTES = 8 << 20

# Forwarding, as CoreDNS's forward plugin.
DEFAULT_TRY_TIMEOUT = 2.0
DEFAULT_TIMEOUT = 5.0
DEFAULT_MAX_FAILS = 2
DEFAULT_HEALTH_CHECK = 0.5
DEFAULT_EXPIRE = 10.0  # idle persistent TCP connections are closed after this
DEFAULT_MAX_CONCURRENT = 1000
POLICIES = ("random", "round_robin", "sequential")

DEFAULT_TCP_IDLE_TIMEOUT = 10.0  # RFC 7766 6.2.3 suggests seconds, not minutes
# Client TCP connection caps (RFC 7766 section 10; listeners.TcpClients). glibc and musl open
# a connection only after a truncated UDP reply and close it after the answer, so a node of
# 110 pods (kubelet's default) rarely has more than a few dozen open at once. 1024 leaves ten
# times that headroom while keeping idle connections to a few MiB of agent and kernel memory;
# one address (a pod, or every hostNetwork pod behind the node's IP) gets at most an eighth.
DEFAULT_MAX_TCP_CONNECTIONS = 1024
DEFAULT_MAX_TCP_PER_CLIENT = 128
DEFAULT_MAX_UDP_PAYLOAD = 1232  # DNS flag day 2020: avoids IP fragmentation
UPSTREAM_UDP_PAYLOAD = 1232
# The listening UDP sockets (listeners.py). Batches: up to this many queries are read with one
# recvmmsg and their hits answered with one sendmmsg (0 or 1: the event loop's datagram transport).
# 64 amortises the two system calls and the loop's wake-up to under 1/60 each per query, while one
# batch still takes well under a millisecond, so misses and timers are not held up.
DEFAULT_UDP_BATCH = 64
MAX_UDP_BATCH = 1024  # UIO_MAXIOV: the kernel's limit on messages per recvmmsg/sendmmsg
# Kernel buffers, as unbound's so-rcvbuf/so-sndbuf (0: the system default). 4 MiB of receive buffer
# holds a few thousand queries (each costs ~1 KiB of kernel memory, its skb included), so a burst or a
# garbage collection pause of 10-20 ms at 300k q/s is absorbed instead of dropped. The send buffer only
# holds replies the network has not taken yet, a batch at a time (64 x at most 1232 bytes); 1 MiB is
# ample and bounds what a slow interface can make the pod's memory cgroup pay.
DEFAULT_UDP_RCVBUF = 4 << 20
DEFAULT_UDP_SNDBUF = 1 << 20
LOOPS = ("auto", "uvloop", "asyncio")

DEFAULT_INTERFACE_NAME = "nodelocaldns"
DEFAULT_SYNC_INTERVAL = 60.0  # seconds between full interface/rule checks, as the reference
IPTABLES_BACKENDS = ("auto", "nft", "legacy")  # auto: the backend that already holds the node's rules
MAX_INTERFACE_NAME = 15  # the kernel's IFNAMSIZ, less the terminating NUL
DEFAULT_CONTROL_SOCKET = "/run/nodecache/control.sock"
# The node lock (node.NodeLock): every agent that manages the interface and rules holds it shared, so the
# one leaving a rollout knows whether another still serves. Its directory must be the node's, shared by
# the old and new pod (daemonset.yaml mounts it as a hostPath); one lock per interface name.
DEFAULT_NODE_LOCK_DIR = "/run/nodecache-node"
DEFAULT_METRICS_ADDRESS = "0.0.0.0:9253"
DEFAULT_HEALTH_PORT = 8080
DEFAULT_LAMEDUCK = 5.0
DEFAULT_QUERY_LOG_SAMPLE = 1.0  # with --query-log: the share of queries logged

# Cache memory budget (--cache-memory), over every zone's caches, in bytes as
# cache.footprint counts them (within 1% of tracemalloc's figure). An answer of
# ~100 bytes costs about 420 bytes cached, so the default 4 zones x 2 caches x
# 9984 entries take ~35 MiB resident if all filled. The default leaves room for
# all of them (issue 10: every default cache full), so it binds only on larger
# answers (a big headless service); the agent takes about 29 MiB with empty caches.
DEFAULT_CACHE_MEMORY = 40 * 1024 * 1024
MIN_CACHE_MEMORY = 1024 * 1024  # a few of the largest answers (64 KiB each) must fit
_SIZE_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "ki": 2**10, "mi": 2**20, "gi": 2**30}


# "Off": a Config field naming an endpoint or a file (control_socket, metrics_address, health_address,
# node_lock) is None when nothing is served or used there; never "" or the word. On the command line and
# in the environment an operator writes `off` (or `none`); unless_off() turns that into None.
OFF_WORDS = ("off", "none", "")
ALL_ADDRESSES = "0.0.0.0"  # where an HTTP endpoint written as a bare :PORT listens (as in a Corefile)
OFF_FIELDS = ("control_socket", "metrics_address", "health_address", "node_lock")


def unless_off(value: str) -> str | None:
    """None for `off` (or `none`, or nothing): the endpoint or file is not used; else the value."""
    return None if value.strip().lower() in OFF_WORDS else value


# ---------------------------------------------------------------- addresses: every IP and HOST:PORT is read here


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_ip(text: str, error: str | None = None) -> IPAddress:
    """A bare IPv4 or IPv6 address (no port, no brackets); ConfigError(`error`) when it is not one.

    The one IP parser of the agent's inputs (flags, resolv.conf, kube-dns files, Service variables),
    so every site accepts the same spellings; callers word the error for their operator.
    """
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise ConfigError(error or f"{text!r} is not an IP address") from None


def is_ip(text: str) -> bool:
    """Whether `text` is a bare IP address (parse_ip would accept it)."""
    try:
        parse_ip(text)
    except ConfigError:
        return False
    return True


@dataclass(frozen=True)
class Address:
    """An IP and port; IPv6 literals are written [addr]:port."""

    host: str
    port: int = DNS_PORT

    @classmethod
    def parse(cls, text: str, default_port: int = DNS_PORT) -> Address:
        """Read IP, IP:PORT, [IPv6]:PORT or a bare IPv6 address."""
        text = text.strip()
        host, port = text, default_port
        if text.startswith("["):
            host, sep, rest = text[1:].partition("]")
            if not sep or (rest and not rest.startswith(":")):
                raise ConfigError(f"{text!r} is not an address; write [IPv6]:PORT, e.g. [2001:db8::53]:53")
            if rest:
                port = _port(rest[1:], text)
        elif text.count(":") == 1:
            host, _, p = text.partition(":")
            port = _port(p, text)
        parse_ip(host, f"{text!r} is not an IP address; give IP or IP:PORT, e.g. 192.0.2.10:53")
        return cls(host, port)

    @classmethod
    def parse_http(cls, text: str, default_host: str = ALL_ADDRESSES) -> Address:
        """HOST:PORT, [IPv6]:PORT, or :PORT (on `default_host`) for an HTTP endpoint; port 0 when none is written."""
        text = text.strip()
        if text.startswith(":"):
            text = (f"[{default_host}]" if ":" in default_host else default_host) + text
        return cls.parse(text, default_port=0)

    @property
    def family_v6(self) -> bool:
        return ":" in self.host

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if self.family_v6 else f"{self.host}:{self.port}"


def _port(text: str, whole: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) < 65536:
        raise ConfigError(f"{whole!r}: the port must be a number from 1 to 65535")
    return int(text)


@dataclass(frozen=True)
class ForwardPolicy:
    """Where a zone's misses go and how (CoreDNS `forward`)."""

    upstreams: tuple[Address, ...]
    force_tcp: bool = False  # cluster DNS: TCP, as node-local-dns does
    policy: str = "random"
    max_fails: int = DEFAULT_MAX_FAILS
    health_check: float = DEFAULT_HEALTH_CHECK
    try_timeout: float = DEFAULT_TRY_TIMEOUT
    timeout: float = DEFAULT_TIMEOUT
    expire: float = DEFAULT_EXPIRE
    max_concurrent: int = DEFAULT_MAX_CONCURRENT

    def __post_init__(self) -> None:
        if not self.upstreams:
            raise ConfigError("a zone needs at least one upstream server")
        if self.policy not in POLICIES:
            raise ConfigError(f"policy {self.policy!r} is unknown; use one of {', '.join(POLICIES)}")
        if self.try_timeout <= 0 or self.timeout < self.try_timeout:
            raise ConfigError("timeouts must be positive, and the overall timeout at least the per-try one")
        if self.max_fails < 0 or self.max_concurrent < 1:
            raise ConfigError("max_fails must be 0 or more (0: never mark down) and max_concurrent at least 1")
        if self.health_check <= 0 or self.expire <= 0:
            raise ConfigError("health_check and expire must be positive durations")


@dataclass(frozen=True)
class CachePolicy:
    """How a zone caches (CoreDNS `cache`): capacities in entries, TTLs in seconds."""

    success_capacity: int = DEFAULT_CAPACITY
    success_max_ttl: int = DEFAULT_OTHER_TTL
    success_min_ttl: int = 0
    denial_capacity: int = DEFAULT_CAPACITY
    denial_max_ttl: int = DEFAULT_OTHER_TTL
    denial_min_ttl: int = 0
    servfail_ttl: int = DEFAULT_SERVFAIL_TTL
    stale_window: int = DEFAULT_STALE_WINDOW
    stale_mode: str = DEFAULT_STALE_MODE
    prefetch_amount: int = DEFAULT_PREFETCH_AMOUNT
    prefetch_duration: float = DEFAULT_PREFETCH_DURATION
    prefetch_percentage: int = DEFAULT_PREFETCH_PERCENTAGE
    keepttl: bool = False  # CoreDNS `keepttl`: replies carry the TTLs as stored, not counted down

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if isinstance(value, int) and value < 0:
                raise ConfigError(f"cache {name.replace('_', ' ')} must not be negative")
        if self.stale_mode not in STALE_MODES:
            raise ConfigError(f"serve_stale mode {self.stale_mode!r} is unknown; use one of {', '.join(STALE_MODES)}")
        if self.success_min_ttl > self.success_max_ttl or self.denial_min_ttl > self.denial_max_ttl:
            raise ConfigError("a cache minimum TTL cannot exceed its maximum TTL")
        low, high = PREFETCH_PERCENTAGE_RANGE
        if self.prefetch_amount and not low <= self.prefetch_percentage <= high:
            raise ConfigError(f"prefetch PERCENTAGE must be {low}% to {high}%, got {self.prefetch_percentage}%")
        if self.prefetch_amount and self.prefetch_duration <= 0:
            raise ConfigError("prefetch DURATION must be more than 0 seconds")


@dataclass(frozen=True)
class Zone:
    """A DNS suffix with its own upstreams and cache policy."""

    name: str  # canonical: lowercase, trailing dot; "." is the root
    forward: ForwardPolicy
    cache: CachePolicy = field(default_factory=CachePolicy)

    @property
    def wire(self) -> bytes:
        """The lowercased name in wire format, for suffix matching on raw queries."""
        return name_to_wire(self.name)


@dataclass(frozen=True)
class Config:
    """Everything the agent needs, decided before it starts."""

    listen: tuple[str, ...]
    port: int
    zones: tuple[Zone, ...]
    tcp_idle_timeout: float = DEFAULT_TCP_IDLE_TIMEOUT
    # Client TCP connections open at once, in all and from one client address (listeners.TcpClients).
    max_tcp_connections: int = DEFAULT_MAX_TCP_CONNECTIONS
    max_tcp_per_client: int = DEFAULT_MAX_TCP_PER_CLIENT
    max_udp_payload: int = DEFAULT_MAX_UDP_PAYLOAD
    # Listening UDP sockets: queries per recvmmsg batch (0 or 1: no batching), kernel buffer bytes.
    udp_batch: int = DEFAULT_UDP_BATCH
    udp_rcvbuf: int = DEFAULT_UDP_RCVBUF
    udp_sndbuf: int = DEFAULT_UDP_SNDBUF
    loop: str = "auto"
    # Misses (resolver.py): the answer deadline and the caps on clients waiting.
    answer_deadline: float = DEFAULT_ANSWER_DEADLINE
    max_waiting: int = DEFAULT_MAX_WAITING
    max_waiting_per_name: int = DEFAULT_MAX_WAITING_PER_NAME
    # Node integration (netif.py, firewall.py). Off unless asked for: a Config
    # built in a test must never touch the host's interfaces or iptables.
    setup_interface: bool = False
    setup_iptables: bool = False
    interface_name: str = DEFAULT_INTERFACE_NAME
    sync_interval: float = DEFAULT_SYNC_INTERVAL
    skip_teardown: bool = False
    iptables_backend: str = "auto"
    node_lock: str | None = None  # lock file shared by the agents of a node; None: none (each tears down alone)
    # Operator endpoints (control.py, metrics.py). None: not served ("" is read as None; see OFF_WORDS).
    # The HTTP addresses are canonical HOST:PORT text (loader.py writes them so); metrics_endpoint and
    # health_endpoint give them as Address for the code that binds them.
    control_socket: str | None = None
    handover_timeout: float = DEFAULT_HANDOVER_TIMEOUT  # 0: start empty, never ask the live agent
    metrics_address: str | None = None
    health_address: str | None = None
    lameduck: float = 0.0
    # Query log (logs.QueryLog): one line per answered query when on.
    query_log: bool = False
    query_log_sample: float = DEFAULT_QUERY_LOG_SAMPLE
    query_log_errors_only: bool = False
    # Reload (server.py): seconds between checks of the config files; 0: only on SIGHUP.
    reload_interval: float = 0.0
    # Loop detection (Resolver.check_loops): zones whose upstreams are probed at start (Corefile `loop`).
    loop_zones: tuple[str, ...] = ()
    # Byte budget over every zone's caches (cache.MemoryBudget); 0: only the entry capacities bound them.
    cache_memory: int = DEFAULT_CACHE_MEMORY

    def __post_init__(self) -> None:
        for name in OFF_FIELDS:  # one spelling of "off": None
            if getattr(self, name) == "":
                object.__setattr__(self, name, None)
        if not self.listen:
            raise ConfigError("nothing to listen on; give at least one --local-ip address")
        for host in self.listen:
            parse_ip(host, f"listen address {host!r} is not an IP address (no port or brackets; use --port)")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port {self.port} is out of range 0-65535")
        if self.max_tcp_connections < 1 or self.max_tcp_per_client < 1:
            raise ConfigError("the TCP connection caps (in total and per client) must be at least 1")
        if self.max_udp_payload < 512:
            raise ConfigError("the largest UDP reply cannot be below 512 bytes (RFC 1035)")
        if not 0 <= self.udp_batch <= MAX_UDP_BATCH:
            raise ConfigError(f"the UDP batch size must be from 0 to {MAX_UDP_BATCH} (0 or 1: no batching)")
        if self.udp_rcvbuf < 0 or self.udp_sndbuf < 0:
            raise ConfigError("UDP socket buffer sizes cannot be negative (0 keeps the system default)")
        names = [z.name for z in self.zones]
        if len(set(names)) != len(names):
            raise ConfigError(f"a zone is configured twice: {sorted(n for n in names if names.count(n) > 1)[0]}")
        if self.loop not in LOOPS:
            raise ConfigError(f"event loop {self.loop!r} is unknown; use one of {', '.join(LOOPS)}")
        if self.sync_interval <= 0:
            raise ConfigError("the sync interval must be a positive number of seconds")
        check_interface_name(self.interface_name)
        if self.iptables_backend not in IPTABLES_BACKENDS:
            raise ConfigError(f"iptables backend {self.iptables_backend!r} is unknown; use one of {', '.join(IPTABLES_BACKENDS)}")
        if not 0 < self.query_log_sample <= 1:
            raise ConfigError("the query log sample rate must be above 0 and at most 1 (1 logs every query)")
        if self.lameduck < 0:
            raise ConfigError("the lameduck delay cannot be negative")
        if self.answer_deadline <= 0:
            raise ConfigError("the answer deadline must be a positive number of seconds (default 1.8)")
        if self.max_waiting < 1 or self.max_waiting_per_name < 1:
            raise ConfigError("the caps on waiting queries must be at least 1")
        if self.cache_memory < 0 or 0 < self.cache_memory < MIN_CACHE_MEMORY:
            raise ConfigError(
                f"the cache memory budget must be 0 (no budget) or at least {MIN_CACHE_MEMORY // 2**20}Mi "
                f"(room for the largest answers), not {self.cache_memory} bytes"
            )

    @property
    def metrics_endpoint(self) -> Address | None:
        """Where /metrics is served, or None; a bare :PORT is every IPv4 address."""
        return None if self.metrics_address is None else Address.parse_http(self.metrics_address)

    @property
    def health_endpoint(self) -> Address | None:
        """Where /health and /ready are served, or None; a bare :PORT is every IPv4 address."""
        return None if self.health_address is None else Address.parse_http(self.health_address)


def parse_size(text: str) -> int:
    """Bytes from an operator's size: 25165824, 24Mi, 64MiB, 32M, 512k, 1.5Gi (Kubernetes' suffixes)."""
    raw = text.strip()
    word = raw.lower().removesuffix("b")
    number = word.rstrip("kmgi")
    unit = _SIZE_UNITS.get(word[len(number) :])
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit is None or not 0 <= value < 2**53 or not number[:1].isdigit():
        raise ConfigError(f"{text!r} is not a size; write bytes or a number with Ki, Mi, Gi, k, M or G, e.g. 24Mi")
    return int(value * unit)


def default_node_lock(interface_name: str) -> str:
    """The node lock's path for agents managing `interface_name`: only they must see each other."""
    return f"{DEFAULT_NODE_LOCK_DIR}/{interface_name}.lock"


def check_interface_name(name: str) -> str:
    """Reject a link name the kernel would refuse, saying what a valid one looks like."""
    unusable = any(c in "/: " or not c.isprintable() for c in name) or name in (".", "..")
    if not name or len(name) > MAX_INTERFACE_NAME or unusable:
        raise ConfigError(
            f"interface name {name!r} is not usable: give 1 to {MAX_INTERFACE_NAME} characters without '/', ':' or spaces"
        )
    return name


def read_resolv_conf(path: str | Path) -> tuple[Address, ...]:
    """The `nameserver` entries of a resolv.conf, in order, port 53."""
    try:
        # latin-1 maps every byte: a stray non-UTF-8 byte in a comment must not stop the agent.
        text = Path(path).read_bytes().decode("latin-1")
    except OSError as exc:
        raise ResolvConfError(
            f"cannot read node resolv.conf {path}: {exc.strerror}; point --node-resolv-conf at a readable file"
        ) from None
    servers: list[Address] = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(words) >= 2 and words[0] == "nameserver":
            host = words[1]  # a link-local IPv6 server keeps its %interface: it needs one
            try:
                servers.append(Address(str(parse_ip(host))))
            except ConfigError:
                continue  # resolv(5) ignores what it cannot parse; so do we
    if not servers:
        raise ResolvConfError(f"{path} names no usable nameserver; add a 'nameserver IP' line")
    return tuple(servers)


def default_zones(
    cluster_domain: str,
    cluster_upstreams: tuple[Address, ...],
    node_upstreams: tuple[Address, ...],
    cluster_cache: CachePolicy,
    other_cache: CachePolicy,
) -> tuple[Zone, ...]:
    """The four zones of node-local-dns's stock Corefile.

    The cluster domain and the reverse zones go to the cluster DNS over TCP;
    everything else goes to the node's resolvers over UDP, retried over TCP
    when truncated.
    """
    cluster = ForwardPolicy(upstreams=cluster_upstreams, force_tcp=True)
    zones = [Zone(canonical_name(cluster_domain), cluster, cluster_cache)]
    zones += [Zone(z, cluster, other_cache) for z in REVERSE_ZONES]
    zones.append(Zone(".", ForwardPolicy(upstreams=node_upstreams), other_cache))
    return tuple(zones)


def without_self(servers: tuple[Address, ...], listen: tuple[str, ...], port: int) -> tuple[Address, ...]:
    """Drop resolvers that are this agent itself: forwarding to them would loop."""
    own = {(parse_ip(h), port) for h in listen}
    kept = tuple(s for s in servers if (parse_ip(s.host), s.port) not in own)
    if not kept:
        raise ResolvConfError(
            "every node resolver is this agent's own address; the node's resolv.conf must name "
            "the real upstream resolvers (set kubelet --resolv-conf or --node-resolv-conf)"
        )
    return kept
