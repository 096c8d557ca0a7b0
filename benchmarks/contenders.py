"""The servers under test: how each starts, which workloads it runs, what its cache holds.

Every contender is a caching forwarder on 127.0.0.1 in front of the same NSD.
Each class knows only its own command line and how to ask its own server how
many entries it caches; run.py decides what is measured and when.
"""

from __future__ import annotations

import grp
import os
import pwd
import subprocess
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import benchlib as bl
from fillzones import FILL_PER_KIND

from nodecache import PURE_PYTHON_ENV, build

NODECACHE = "nodecache"
#: The workloads every contender runs; "miss-udp" is nodecache's alone (see NodecacheUdp).
COMMON_WORKLOADS = ("fill", "hit", "hit-rate", "miss-rate", "miss")
MISS_UDP = "miss-udp"

#: The agent's four default zones, a success and a denial cache each, full.
FULL_CACHE_ENTRIES = 4 * 2 * FILL_PER_KIND
#: dnsmasq counts entries: as many as the agent's caches hold together.
DNSMASQ_CACHE_SIZE = FULL_CACHE_ENTRIES
#: unbound counts bytes. These hold every fill answer without eviction
#: (checked after the fill: msg.cache.count); more would only add idle headroom.
UNBOUND_MSG_CACHE = "64m"
UNBOUND_RRSET_CACHE = "128m"
#: unbound answers these reverse zones itself (RFC 6303 defaults); the
#: benchmark's upstream serves them, so they must be forwarded and cached.
UNBOUND_FORWARDED_DEFAULT_ZONES = ("254.169.in-addr.arpa.", "2.0.192.in-addr.arpa.", "8.b.d.0.1.0.0.2.ip6.arpa.")
STATS_TIMEOUT_S = 10.0


@dataclass
class Slot:
    """Where a contender runs: its own directory and port, the shared upstream."""

    workdir: Path
    port: int
    upstream_port: int
    cpu: int | None
    node_resolver: str | None = None  # where NSD answers on port 53, for a resolv.conf
    extra_args: list[str] = field(default_factory=list)


class Contender(ABC):
    """A caching forwarder under test. Subclasses build the command line."""

    name: str
    #: The name its figures are reported under (a variant reports as its server).
    reports_as: str = ""
    workloads: tuple[str, ...] = COMMON_WORKLOADS

    @property
    def label(self) -> str:
        return self.reports_as or self.name

    @abstractmethod
    def command(self, slot: Slot) -> list[str]:
        """argv for a foreground process listening on 127.0.0.1:slot.port."""

    def version(self) -> str:
        return "unknown"

    def env(self) -> dict[str, str] | None:
        """Environment for the child; None inherits ours."""
        return None

    def cache_entries(self, slot: Slot) -> dict | None:
        """What the running server says its cache holds: {"held": N, ...}, or None if it cannot say."""
        return None

    def heap_trims(self, slot: Slot) -> dict | None:
        """The server's heap trims so far ({"trims": N, "seconds": S}; each stalls its loop), or None."""
        return None

    def start(self, slot: Slot) -> bl.ManagedProcess:
        argv = bl.pinned(self.command(slot), slot.cpu)
        return bl.ManagedProcess(self.name, argv, slot.workdir / f"{self.name}.log", cwd=bl.REPO,
                                 env=self.env())


def node_resolv_conf(slot: Slot) -> Path:
    """The agent's --node-resolv-conf: NSD's port-53 address, so "." names reach the upstream."""
    resolv = slot.workdir / "resolv.conf"
    # Without a port-53 NSD (not root) "." names go nowhere; the fill then leaves that zone out.
    resolv.write_text(f"nameserver {slot.node_resolver or bl.LOCALHOST}\n")
    return resolv


class Nodecache(Contender):
    """The agent, run the way an operator would run it, on the venv's Python."""

    name = NODECACHE

    def command(self, slot: Slot) -> list[str]:
        return [sys.executable, "-m", "nodecache", "run", "--no-setup-interface", "--no-setup-iptables",
                "--listen", bl.LOCALHOST, "--port", str(slot.port),
                "--upstream", f"{bl.LOCALHOST}:{slot.upstream_port}",
                "--cluster-domain", bl.CLUSTER_DOMAIN,
                "--node-resolv-conf", str(node_resolv_conf(slot)), *bl.agent_endpoint_args(slot.workdir),
                *slot.extra_args]

    def env(self) -> dict[str, str]:
        # The CLI reads NODECACHE_* variables; a stray one in the caller's shell
        # would silently change what is measured. Use --nodecache-args instead.
        # NODECACHE_PURE_PYTHON is kept: it is no option, it picks the build to measure
        # (the version column then says "python"; see version()).
        return {k: v for k, v in os.environ.items() if not k.startswith("NODECACHE_") or k == PURE_PYTHON_ENV}

    def version(self) -> str:
        try:
            import nodecache

            return f"{getattr(nodecache, '__version__', 'unknown')} ({build()})"  # compiled, or python
        except ImportError:
            return "unknown"

    def stats(self, slot: Slot) -> dict | None:
        """`nodecache stats --json` of the running agent (its control socket), or None."""
        import json

        p = subprocess.run([sys.executable, "-m", "nodecache", "stats", "--json", "--control-socket",
                            str(slot.workdir / "control.sock")], capture_output=True, text=True,
                           timeout=STATS_TIMEOUT_S, cwd=bl.REPO, env=self.env())  # fmt: skip
        if p.returncode != 0:
            bl.log(f"  {self.name}: no stats ({p.stderr.strip()})")
            return None
        return json.loads(p.stdout)  # type: ignore[no-any-return]

    def heap_trims(self, slot: Slot) -> dict | None:
        stats = self.stats(slot)
        heap = stats.get("heap") if stats else None
        return {"trims": heap["trims"], "seconds": heap["seconds"]} if heap else None

    def cache_entries(self, slot: Slot) -> dict | None:
        """Entries per the agent's own stats (its control socket), summed over zones."""
        stats = self.stats(slot)
        if stats is None:
            return None
        cache = stats["cache"]
        held = cache["entries"]["success"] + cache["entries"]["denial"]
        capacity = cache["capacity"]["success"] + cache["capacity"]["denial"]
        return {"held": held, "capacity": capacity, "memory_evictions": cache.get("memory_evictions"),
                "bytes": cache.get("bytes")}


class NodecacheUdp(Nodecache):
    """The agent with the cluster zone forwarded over UDP: the per-zone choice, from a Corefile.

    The flags have no transport switch, so this variant runs the four default
    zones from a Corefile whose cluster block has `prefer_udp`; the reverse
    zones keep force_tcp and "." the node resolv.conf, as the defaults do.
    """

    name = "nodecache-udp"
    reports_as = NODECACHE
    workloads = (MISS_UDP,)

    def command(self, slot: Slot) -> list[str]:
        upstream = f"{bl.LOCALHOST}:{slot.upstream_port}"
        corefile = slot.workdir / "Corefile"
        corefile.write_text(f"""\
{bl.CLUSTER_DOMAIN} {{
    cache {{
        success 9984 30
        denial 9984 5
    }}
    forward . {upstream} {{
        prefer_udp
    }}
}}
in-addr.arpa {{
    cache 30
    forward . {upstream} {{
        force_tcp
    }}
}}
ip6.arpa {{
    cache 30
    forward . {upstream} {{
        force_tcp
    }}
}}
. {{
    cache 30
    forward . {node_resolv_conf(slot)}
}}
""")
        return [sys.executable, "-m", "nodecache", "run", "--no-setup-interface", "--no-setup-iptables",
                "--listen", bl.LOCALHOST, "--port", str(slot.port), "--config", str(corefile),
                *bl.agent_endpoint_args(slot.workdir), *slot.extra_args]


class Dnsmasq(Contender):
    """dnsmasq as a pure cache: no resolv.conf, no hosts, no DHCP, one upstream."""

    name = "dnsmasq"

    def command(self, slot: Slot) -> list[str]:
        argv = [bl.find_program("dnsmasq"), "--keep-in-foreground", "--conf-file=/dev/null",
                "--no-resolv", "--no-hosts", "--no-poll",
                f"--server={bl.LOCALHOST}#{slot.upstream_port}",
                f"--listen-address={bl.LOCALHOST}", "--bind-interfaces",
                f"--port={slot.port}", f"--cache-size={DNSMASQ_CACHE_SIZE}",
                f"--pid-file={slot.workdir / 'dnsmasq.pid'}", "--log-facility=-"]
        if os.geteuid() == 0:
            # As root dnsmasq drops to its compiled-in user, which may not
            # exist everywhere; name one that does.
            nobody = pwd.getpwnam("nobody")
            argv += ["--user=nobody", f"--group={grp.getgrgid(nobody.pw_gid).gr_name}"]
        return argv

    def version(self) -> str:
        return bl.tool_version([bl.find_program("dnsmasq"), "--version"])

    def cache_entries(self, slot: Slot) -> dict | None:
        """dnsmasq's counters, asked in the DNS (CHAOS TXT insertions.bind, evictions.bind).

        They count insertions (SOA records of negative answers too) and
        evictions, not the entries held, so "held" stays unknown.
        """
        counts = {k: chaos_counter(slot.port, f"{k}.bind") for k in ("insertions", "evictions")}
        return None if None in counts.values() else counts


def chaos_counter(port: int, name: str) -> int | None:
    """An integer a server publishes as a CHAOS TXT record (dnsmasq's cache statistics)."""
    import socket

    from dnslib import DNSRecord

    q = DNSRecord.question(name, "TXT", "CH")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2.0)
        try:
            s.sendto(q.pack(), (bl.LOCALHOST, port))
            reply = DNSRecord.parse(s.recv(4096))
        except OSError:
            return None
    for rr in reply.rr:
        text = str(rr.rdata).strip('"')
        if text.isdigit():
            return int(text)
    return None


class Unbound(Contender):
    """unbound as a forwarder: one thread, no validation, caches sized for the fill."""

    name = "unbound"

    def command(self, slot: Slot) -> list[str]:
        conf = slot.workdir / "unbound.conf"
        upstream = f"{bl.LOCALHOST}@{slot.upstream_port}"
        nodefault = "".join(f'    local-zone: "{z}" nodefault\n' for z in UNBOUND_FORWARDED_DEFAULT_ZONES)
        conf.write_text(f"""\
server:
    num-threads: 1
    interface: {bl.LOCALHOST}@{slot.port}
    port: {slot.port}
    do-ip6: no
    do-daemonize: no
    chroot: ""
    username: ""
    directory: "{slot.workdir}"
    pidfile: "{slot.workdir / 'unbound.pid'}"
    use-syslog: no
    logfile: ""
    verbosity: 1
    access-control: 127.0.0.0/8 allow
    do-not-query-localhost: no
    # No DNSSEC: the other contenders do not validate either.
    module-config: "iterator"
    domain-insecure: "{bl.CLUSTER_DOMAIN}."
    msg-cache-size: {UNBOUND_MSG_CACHE}
    rrset-cache-size: {UNBOUND_RRSET_CACHE}
    key-cache-size: 4m
{nodefault}remote-control:
    control-enable: yes
    control-interface: "{self.control_socket(slot)}"
    control-use-cert: no
forward-zone:
    name: "{bl.CLUSTER_DOMAIN}."
    forward-addr: {upstream}
forward-zone:
    name: "."
    forward-addr: {upstream}
""")
        return [bl.find_program("unbound"), "-d", "-c", str(conf)]

    @staticmethod
    def control_socket(slot: Slot) -> Path:
        return slot.workdir / "unbound.ctl"

    def version(self) -> str:
        return bl.tool_version([bl.find_program("unbound"), "-V"])

    def cache_entries(self, slot: Slot) -> dict | None:
        """Messages in unbound's cache, counted in `unbound-control dump_cache` (its control socket).

        The counters in `stats` need extended-statistics, which would cost every query.
        """
        prog = bl.which("unbound-control")
        if prog is None:
            return None
        p = subprocess.run([prog, "-c", str(slot.workdir / "unbound.conf"), "dump_cache"],
                           capture_output=True, text=True, timeout=STATS_TIMEOUT_S)  # fmt: skip
        if p.returncode != 0:
            bl.log(f"  {self.name}: no cache dump ({p.stderr.strip()[:200]})")
            return None
        lines = p.stdout.splitlines()
        return {"held": sum(1 for x in lines if x.startswith("msg ")),
                "rrsets": sum(1 for x in lines if x.startswith(";rrset "))}


CONTENDERS: dict[str, type[Contender]] = {c.name: c for c in (Nodecache, Dnsmasq, Unbound)}
VARIANTS: dict[str, type[Contender]] = {NodecacheUdp.name: NodecacheUdp}
