"""iptables rules that take DNS to the local IPs out of conntrack, and fail open.

Per local IP, the reference node-local-dns rule set: raw NOTRACK and filter
ACCEPT for queries to IP:53 and replies from it (udp, tcp), NOTRACK for
queries from host-network clients, and NOTRACK for the health port. Two rules
differ, so that a dead agent stops intercepting:

- Queries arriving from pods (raw PREROUTING) carry `-m socket`: they match
  only while a socket is bound to that very address. The agent binds exactly
  its local IPs, never the wildcard, so when it dies the match fails, the
  packet is tracked, and kube-proxy's DNAT sends a ClusterIP query to CoreDNS.
  (`--nowildcard` would do the opposite of what we want: it makes a program
  listening on 0.0.0.0:53 match too, which would keep capturing the traffic.)
- The socket match does not exist in OUTPUT, so queries from host-network
  clients (raw OUTPUT) match an xt_recent list the agent refreshes every
  second (its heartbeat); a dead agent stops matching after ALIVE_WINDOW.

Rules are applied with one `iptables-restore --noflush` per family, which
holds the xtables lock (`-w`), and reconciled from `iptables-save`: missing
rules are inserted at the top, duplicates and stale rules of ours (found by
the comment prefix) are deleted. Nothing ever loops on `iptables -C`.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shlex
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nodecache.config import DNS_PORT, IPTABLES_BACKENDS
from nodecache.errors import ConfigError, FirewallError

log = logging.getLogger(__name__)

COMMENT_PREFIX = "NodeLocal DNS Cache: "
COMMENT_SKIP = COMMENT_PREFIX + "skip conntrack"
COMMENT_SKIP_LISTENING = COMMENT_PREFIX + "skip conntrack while the cache listens"
COMMENT_SKIP_ALIVE = COMMENT_PREFIX + "skip conntrack while the cache is alive"
COMMENT_ALLOW = COMMENT_PREFIX + "allow DNS traffic"

ALIVE_LISTS = {4: "nodecache-alive", 6: "nodecache-alive6"}  # xt_recent lists of the heartbeat
ALIVE_WINDOW = 3  # seconds without a heartbeat before host-network clients fall back to kube-proxy
HEARTBEAT_INTERVAL = 1.0  # seconds between heartbeats; a third of the window
RECENT_DIR = "/proc/net/xt_recent"
LOCK_WAIT = 5  # seconds iptables-restore waits for the xtables lock (-w)
COMMAND_TIMEOUT = 30.0
PROTOCOLS = ("udp", "tcp")
TABLE_ORDER = ("raw", "filter")
_FULL_MASK = {4: "255.255.255.255", 6: "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"}


@dataclass(frozen=True)
class Rule:
    """One rule, written the way iptables-save prints it (after `-A CHAIN`)."""

    family: int  # 4 or 6
    table: str
    chain: str
    args: tuple[str, ...]

    @property
    def text(self) -> str:
        return _join(self.args)

    @property
    def key(self) -> tuple[str, ...]:
        return normalize(self.args)

    def __str__(self) -> str:
        return f"{'ip6tables' if self.family == 6 else 'iptables'} -t {self.table} -A {self.chain} {self.text}"


def family_of(ip: str) -> int:
    return ipaddress.ip_address(ip).version


def rules_for(ip: str, dns_port: int = DNS_PORT, health_port: int | None = None) -> list[Rule]:
    """The rule set for one local IP, in the order it should appear in each chain."""
    fam = family_of(ip)
    ip = str(ipaddress.ip_address(ip))
    host = f"{ip}/{32 if fam == 4 else 128}"
    port = str(dns_port)
    alive = ("-m", "recent", "--rcheck", "--seconds", str(ALIVE_WINDOW), "--name", ALIVE_LISTS[fam],
             "--mask", _FULL_MASK[fam], "--rdest")  # fmt: skip
    rules: list[Rule] = []
    for p in PROTOCOLS:
        to_us = ("-d", host, "-p", p, "-m", p, "--dport", port)
        from_us = ("-s", host, "-p", p, "-m", p, "--sport", port)
        rules += [
            Rule(fam, "raw", "PREROUTING", (*to_us, "-m", "socket", *_comment(COMMENT_SKIP_LISTENING), "-j", "NOTRACK")),
            Rule(fam, "filter", "INPUT", (*to_us, *_comment(COMMENT_ALLOW), "-j", "ACCEPT")),
            Rule(fam, "raw", "OUTPUT", (*from_us, *_comment(COMMENT_SKIP), "-j", "NOTRACK")),
            Rule(fam, "filter", "OUTPUT", (*from_us, *_comment(COMMENT_ALLOW), "-j", "ACCEPT")),
            Rule(fam, "raw", "OUTPUT", (*to_us, *alive, *_comment(COMMENT_SKIP_ALIVE), "-j", "NOTRACK")),
        ]
    if health_port is not None:
        h = str(health_port)
        skip = (*_comment(COMMENT_SKIP), "-j", "NOTRACK")
        rules += [
            Rule(fam, "raw", "OUTPUT", ("-d", host, "-p", "tcp", "-m", "tcp", "--dport", h, *skip)),
            Rule(fam, "raw", "OUTPUT", ("-s", host, "-p", "tcp", "-m", "tcp", "--sport", h, *skip)),
        ]
    return rules


def _comment(text: str) -> tuple[str, ...]:
    return ("-m", "comment", "--comment", text)


def _join(args: Iterable[str]) -> str:
    """Quote as iptables-save does: double quotes around words with spaces."""
    return " ".join(f'"{a}"' if (not a or any(c.isspace() for c in a)) else a for a in args)


def normalize(args: Sequence[str]) -> tuple[str, ...]:
    """A rule's identity, blind to what backends and versions print differently.

    Drops the implicit `-m udp`/`-m tcp` after `-p`, host prefix lengths,
    an all-ones xt_recent mask, and reads `-j CT --notrack` as `-j NOTRACK`.
    """
    out: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        nxt = args[i + 1] if i + 1 < len(args) else None
        if a == "-m" and nxt in PROTOCOLS and len(out) >= 2 and out[-2] == "-p" and out[-1] == nxt:
            i += 2
            continue
        if a in ("-s", "-d", "--source", "--destination") and nxt is not None:
            out += [a[:2] if a.startswith("--") else a, nxt.removesuffix("/32").removesuffix("/128")]
            i += 2
            continue
        if a == "--mask" and nxt in _FULL_MASK.values():
            i += 2
            continue
        if a == "-j" and nxt == "CT" and i + 2 < len(args) and args[i + 2] == "--notrack":
            out += ["-j", "NOTRACK"]
            i += 3
            continue
        out.append(a)
        i += 1
    return tuple(out)


def comment_of(args: Sequence[str]) -> str | None:
    for i, a in enumerate(args[:-1]):
        if a == "--comment":
            return args[i + 1]
    return None


def is_ours(args: Sequence[str]) -> bool:
    comment = comment_of(args)
    return comment is not None and comment.startswith(COMMENT_PREFIX)


def mentions(args: Sequence[str], ips: Iterable[str]) -> bool:
    """Whether a rule's -s or -d is one of `ips`."""
    want = {ipaddress.ip_address(ip) for ip in ips}
    for i, a in enumerate(args[:-1]):
        if a in ("-s", "-d"):
            try:
                if ipaddress.ip_network(args[i + 1], strict=False).network_address in want:
                    return True
            except ValueError:
                continue
    return False


@dataclass
class Saved:
    """iptables-save output: each (table, chain)'s rules, in order, as printed."""

    chains: dict[tuple[str, str], list[tuple[str, ...]]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Saved:
        saved = cls()
        table = ""
        for line in text.splitlines():
            if line.startswith("*"):
                table = line[1:].strip()
            elif line.startswith("-A ") and table:
                words = shlex.split(line)
                saved.chains.setdefault((table, words[1]), []).append(tuple(words[2:]))
        return saved

    def ours(self) -> list[tuple[str, str, tuple[str, ...]]]:
        return [(t, c, args) for (t, c), rules in self.chains.items() for args in rules if is_ours(args)]


@dataclass
class Plan:
    """What one iptables-restore call must do for one family."""

    delete: list[tuple[str, str, tuple[str, ...]]] = field(default_factory=list)  # as saved
    add: list[Rule] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.delete or self.add)

    def script(self) -> str:
        """iptables-restore input: per table, deletions first, then inserts at the top."""
        lines: list[str] = []
        tables = {t for t, _, _ in self.delete} | {r.table for r in self.add}
        for table in sorted(tables, key=lambda t: (TABLE_ORDER + (t,)).index(t)):
            lines.append(f"*{table}")
            lines += [f"-D {c} {_join(a)}" for t, c, a in self.delete if t == table]
            # Inserting each at position 1 reverses them; go backwards to keep the listed order.
            lines += [f"-I {r.chain} 1 {r.text}" for r in reversed(self.add) if r.table == table]
            lines.append("COMMIT")
        return "\n".join(lines) + "\n"

    def describe(self, family: int) -> list[str]:
        tool = "ip6tables" if family == 6 else "iptables"
        return [f"removed {tool} -t {t} -A {c} {_join(a)}" for t, c, a in self.delete] + [f"added {r}" for r in self.add]


def plan_reconcile(desired: Sequence[Rule], saved: Saved) -> Plan:
    """Insert what is missing; delete duplicates and rules of ours that are no longer wanted."""
    plan = Plan()
    wanted = {(r.table, r.chain, r.key): r for r in desired}
    seen: set[tuple[str, str, tuple[str, ...]]] = set()
    for table, chain, args in saved.ours():
        k = (table, chain, normalize(args))
        if k in wanted and k not in seen:
            seen.add(k)
        else:
            plan.delete.append((table, chain, args))
    plan.add = [r for k, r in wanted.items() if k not in seen]
    return plan


def plan_removal(saved: Saved, ips: Iterable[str] | None = None) -> Plan:
    """Delete every rule of ours (only those for `ips`, when given)."""
    chosen = list(ips) if ips else None
    return Plan(delete=[(t, c, a) for t, c, a in saved.ours() if chosen is None or mentions(a, chosen)])


class Firewall:
    """The rules for a set of local IPs, on one iptables backend, IPv4 and IPv6.

    `command_prefix` runs every command through a wrapper (tests use
    `ip netns exec NAME`); `recent_dir` is where the heartbeat writes.
    """

    def __init__(
        self,
        local_ips: Sequence[str],
        dns_port: int = DNS_PORT,
        health_port: int | None = None,
        backend: str = "auto",
        command_prefix: Sequence[str] = (),
        recent_dir: str = RECENT_DIR,
    ) -> None:
        if backend not in IPTABLES_BACKENDS:
            raise ConfigError(f"iptables backend {backend!r} is unknown; use one of {', '.join(IPTABLES_BACKENDS)}")
        self.local_ips = tuple(str(ipaddress.ip_address(ip)) for ip in local_ips)
        self.dns_port = dns_port
        self.health_port = health_port
        self.prefix = tuple(command_prefix)
        self.recent_dir = Path(recent_dir)
        self.backend = backend if backend != "auto" else self._detect_backend()

    # -- what should be there

    def families(self) -> list[int]:
        return sorted({family_of(ip) for ip in self.local_ips})

    def desired(self, family: int) -> list[Rule]:
        return [r for ip in self.local_ips if family_of(ip) == family for r in rules_for(ip, self.dns_port, self.health_port)]

    def desired_all(self) -> list[Rule]:
        return [r for fam in self.families() for r in self.desired(fam)]

    def describe_backend(self) -> str:
        """For the log: which tools run, and why."""
        tools = " and ".join(self._tool(fam, "restore") for fam in self.families() or [4])
        return f"{tools} ({'the system default' if self.backend == 'default' else self.backend})"

    # -- reconcile and remove

    def reconcile(self) -> list[str]:
        """Make the rules match exactly; returns one line per change (empty: all was in place)."""
        changes: list[str] = []
        for fam in self.families():
            plan = plan_reconcile(self.desired(fam), self.save(fam))
            if plan:
                self.restore(fam, plan)
                changes += plan.describe(fam)
        return changes

    def remove(self, ips: Iterable[str] | None = None, families: Iterable[int] | None = None) -> list[str]:
        """Delete our rules (by comment; only those for `ips` when given). Idempotent."""
        removed: list[str] = []
        for fam in families if families is not None else self.families():
            if fam == 6 and not self._have(self._tool(6, "save")):
                continue  # no ip6tables on this node: nothing of ours can be there
            plan = plan_removal(self.save(fam), ips)
            if plan:
                self.restore(fam, plan)
                removed += plan.describe(fam)
        return removed

    def count(self, family: int) -> int:
        """How many rules of ours are installed (for logs and tests)."""
        return len(self.save(family).ours())

    # -- the heartbeat

    def heartbeat(self) -> list[str]:
        """Refresh each local IP in the xt_recent list; returns the IPs that could not be refreshed.

        A failure usually means the rules are gone (the list goes with the
        last rule naming it): the caller should reconcile.
        """
        failed: list[str] = []
        for ip in self.local_ips:
            path = self.recent_dir / ALIVE_LISTS[family_of(ip)]
            try:
                fd = os.open(path, os.O_WRONLY)
            except OSError:
                failed.append(ip)
                continue
            try:
                os.write(fd, f"+{ip}\n".encode())  # one address per write(), as the kernel reads it
            except OSError:
                failed.append(ip)
            finally:
                os.close(fd)
        return failed

    # -- iptables-save / iptables-restore

    def save(self, family: int) -> Saved:
        done = self._run([self._tool(family, "save")], None)
        return Saved.parse(done.stdout)

    def restore(self, family: int, plan: Plan) -> None:
        self._run([self._tool(family, "restore"), "--noflush", "-w", str(LOCK_WAIT)], plan.script())

    def _tool(self, family: int, verb: str) -> str:
        base = "ip6tables" if family == 6 else "iptables"
        return f"{base}-{verb}" if self.backend == "default" else f"{base}-{self.backend}-{verb}"

    def _run(self, argv: list[str], stdin: str | None) -> subprocess.CompletedProcess[str]:
        try:
            done = subprocess.run([*self.prefix, *argv], input=stdin, capture_output=True, text=True,
                                  timeout=COMMAND_TIMEOUT)  # fmt: skip
        except FileNotFoundError:
            raise FirewallError(
                f"{argv[0]} is not installed; install iptables (Debian package iptables) or pass --no-setup-iptables"
            ) from None
        except subprocess.TimeoutExpired:
            raise FirewallError(f"{argv[0]} did not finish within {COMMAND_TIMEOUT:g} s; is the node overloaded?") from None
        except OSError as exc:
            raise FirewallError(f"cannot run {argv[0]}: {exc.strerror}") from None
        if done.returncode != 0:
            raise classify_failure(argv[0], done.returncode, done.stderr, stdin)
        return done

    @staticmethod
    def _have(tool: str) -> bool:
        return shutil.which(tool) is not None

    def _detect_backend(self) -> str:
        """The backend holding the node's rules (kube-proxy's), else the default `iptables`.

        Rules in the other backend's tables would still be evaluated, but an
        ACCEPT there cannot override a DROP in the tables kube-proxy and the
        node's firewall use, so follow them.
        """
        counts = {}
        for backend in ("nft", "legacy"):
            tool = f"iptables-{backend}-save"
            if not self._have(tool):
                continue
            try:
                done = subprocess.run([*self.prefix, tool], capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
            except (OSError, subprocess.TimeoutExpired):
                continue
            if done.returncode == 0:
                counts[backend] = sum(1 for line in done.stdout.splitlines() if line.startswith("-A "))
        if len(counts) == 2 and counts["nft"] != counts["legacy"]:
            return max(counts, key=lambda b: counts[b])
        return "default"


def classify_failure(tool: str, returncode: int, stderr: str, script: str | None) -> FirewallError:
    """A FirewallError whose message tells the operator what to do."""
    text = " ".join(stderr.split()) or f"exit status {returncode}"
    if "xtables lock" in stderr:
        return FirewallError(
            f"{tool}: another program held the xtables lock for over {LOCK_WAIT} s ({text}); will retry at the next sync",
            lock=True,
        )
    if "Permission denied" in stderr or "you must be root" in stderr:
        return FirewallError(f"{tool}: {text}; run the agent as root (CAP_NET_ADMIN) or pass --no-setup-iptables")
    hint = ""
    if script is not None and ("socket" in stderr or "recent" in stderr or "No chain/target/match" in stderr):
        hint = "; the kernel needs the xt_socket, xt_recent, xt_comment and xt_CT (NOTRACK) matches"
    return FirewallError(f"{tool} failed: {text}{hint}")
