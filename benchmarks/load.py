"""bench-load: how much of a pod's DNS load reaches the cluster DNS through each cache.

Real glibc clients (getaddrinfo, see gaiclient.py) in a pod network namespace with a Kubernetes
resolv.conf (search list, ndots:5) look up a Zipf mix of short cluster names and external names.
Every query that leaves the cache goes to a counting proxy in front of NSD (countingupstream.py),
which answers like Kubernetes DNS (TTL 30, SOA MINIMUM 5, NXDOMAIN for search expansions, NODATA
for AAAA of IPv4-only services). No cache, dnsmasq, unbound and nodecache run one after another in
one run, with the same names in the same order. The no-cache run must send exactly what glibc's
search rules predict (loadmix.predict); every cache must answer each lookup as no cache does.
Needs root (network namespaces). See benchmarks/README.md.

    pod  (203.0.113.2)   resolv.conf: nameserver 169.254.20.10 (no cache: 192.0.2.10)
      | veth
    node (203.0.113.1)   the cache on 169.254.20.10:53; the counting proxy on 192.0.2.10:53
                         (UDP and TCP); NSD on 127.0.0.1:5300 behind it
"""

from __future__ import annotations

import argparse
import datetime as dt
import grp
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl  # noqa: E402  (needs the path above)
import loadmix as mix  # noqa: E402
from countingupstream import CountingUpstream  # noqa: E402

from tests.support import netns as ns  # noqa: E402  (benchlib put the checkout on the path)

RESULTS_DIR = Path(__file__).resolve().parent / "results"
CLIENT = Path(__file__).resolve().parent / "gaiclient.py"

CACHE_IP = "169.254.20.10"  # the node-local address pods use
UPSTREAM_IP = "192.0.2.10"  # the counting proxy: "the cluster DNS" and "the node's resolvers" at once
POD_IP, NODE_IP, PREFIX = "203.0.113.2", "203.0.113.1", 24
NSD_PORT = 5300
DNS_PORT = 53
NO_CACHE = "no cache"
CONTENDER_ORDER = (NO_CACHE, "dnsmasq", "unbound", "nodecache")
# The agent's defaults (nodecache/config.py, from node-local-dns's Corefile): success answers at most 30 s,
# denials at most 5 s (cluster domain) or 30 s (elsewhere). dnsmasq and unbound have one cap each.
TTL_CAP = 30
NEGATIVE_TTL_CAP = 30
CACHE_ENTRIES = 10_000
READY_TIMEOUT = 20.0
SETTLE = 0.5  # seconds after the last lookup for answers still on their way to be counted


def pod_resolv_conf(nameserver: str) -> str:
    """The resolv.conf kubelet writes for a pod in namespace `default` (ClusterFirst)."""
    return f"search {' '.join(mix.SEARCH)}\nnameserver {nameserver}\noptions ndots:{mix.NDOTS}\n"


@dataclass
class Topology:
    pod: str
    node: str
    workdir: Path


@contextmanager
def topology(workdir: Path) -> Iterator[Topology]:
    """The pod and node namespaces joined by a veth; deleted on the way out (errors, Ctrl-C too)."""
    with ns.namespace("benchload-pod") as pod, ns.namespace("benchload-node") as node:
        ns.veth(pod, "eth0", node, "pod0")
        ns.ip("-n", pod, "addr", "add", f"{POD_IP}/{PREFIX}", "dev", "eth0")
        ns.ip("-n", node, "addr", "add", f"{NODE_IP}/{PREFIX}", "dev", "pod0")
        for addr in (CACHE_IP, UPSTREAM_IP):
            ns.ip("-n", node, "addr", "add", f"{addr}/32", "dev", "lo")
            ns.ip("-n", pod, "route", "add", f"{addr}/32", "via", NODE_IP)
        ns.write_etc(pod, "nsswitch.conf", "hosts: files dns\n")
        ns.write_etc(pod, "hosts", "127.0.0.1 localhost\n::1 localhost\n")
        yield Topology(pod, node, workdir)


def counting_upstream(node: str) -> CountingUpstream:
    """The proxy's sockets, made inside the node namespace."""
    udp = ns.socket_in(node, socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((UPSTREAM_IP, DNS_PORT))
    tcp = ns.socket_in(node, socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind((UPSTREAM_IP, DNS_PORT))
    tcp.listen(256)
    up = ns.socket_in(node, socket.AF_INET, socket.SOCK_DGRAM)
    up.connect((bl.LOCALHOST, NSD_PORT))
    return CountingUpstream(udp, tcp, up).start()


# --------------------------------------------------------------------------
# Contenders: argv for a server listening on CACHE_IP:53 in the node namespace.


def dnsmasq_argv(workdir: Path) -> list[str]:
    """A pure cache with negative caching on (its default) and TTLs capped at 30 s."""
    argv = [bl.find_program("dnsmasq"), "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
            "--no-poll", f"--server={UPSTREAM_IP}#{DNS_PORT}", f"--listen-address={CACHE_IP}", "--bind-interfaces",
            f"--port={DNS_PORT}", f"--cache-size={CACHE_ENTRIES}", f"--max-cache-ttl={TTL_CAP}",
            f"--pid-file={workdir / 'dnsmasq.pid'}", "--log-facility=-"]
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        argv += ["--user=nobody", f"--group={grp.getgrgid(nobody.pw_gid).gr_name}"]
    return argv


def unbound_argv(workdir: Path) -> list[str]:
    """A forwarder for every name, no validation, TTLs capped at 30 s (negative ones too)."""
    conf = workdir / "unbound.conf"
    conf.write_text(f"""\
server:
    num-threads: 1
    interface: {CACHE_IP}@{DNS_PORT}
    do-ip6: no
    do-daemonize: no
    chroot: ""
    username: ""
    directory: "{workdir}"
    pidfile: "{workdir / 'unbound.pid'}"
    use-syslog: no
    logfile: ""
    verbosity: 1
    access-control: {POD_IP}/{PREFIX} allow
    access-control: {CACHE_IP}/32 allow
    module-config: "iterator"
    cache-max-ttl: {TTL_CAP}
    cache-max-negative-ttl: {NEGATIVE_TTL_CAP}
    msg-cache-size: 64m
    rrset-cache-size: 64m
remote-control:
    control-enable: no
forward-zone:
    name: "."
    forward-addr: {UPSTREAM_IP}@{DNS_PORT}
""")
    return [bl.find_program("unbound"), "-d", "-c", str(conf)]


def nodecache_argv(workdir: Path) -> list[str]:
    """The agent as benchmarks/run.py runs it, its node resolv.conf naming the counting upstream."""
    resolv = workdir / "node-resolv.conf"
    resolv.write_text(f"nameserver {UPSTREAM_IP}\n")
    return [sys.executable, "-m", "nodecache", "run", "--no-setup-interface", "--no-setup-iptables", "--node-lock", "off",
            "--listen", CACHE_IP, "--port", str(DNS_PORT), "--upstream", f"{UPSTREAM_IP}:{DNS_PORT}",
            "--cluster-domain", mix.CLUSTER_DOMAIN, "--node-resolv-conf", str(resolv),
            "--control-socket", str(workdir / "control.sock"), "--metrics-address", f"{bl.LOCALHOST}:9253",
            "--health-address", f"{bl.LOCALHOST}:8080", "--lameduck", "0"]


BASE = "nodecache-base"  # the agent from --base-src
ARGV = {"dnsmasq": dnsmasq_argv, "unbound": unbound_argv, "nodecache": nodecache_argv, BASE: nodecache_argv}


def query_in(netns: str, address: str, name: str, timeout: float = 0.5) -> tuple[int, int] | None:
    """One A query from inside `netns`: (rcode, answer count), or None without a reply."""
    qid = int.from_bytes(os.urandom(2), "big")
    with ns.socket_in(netns, socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.connect((address, DNS_PORT))
        s.send(bl.encode_query(name, "A", qid))
        try:
            data = s.recv(65535)
        except OSError:
            return None
    if len(data) < 12 or int.from_bytes(data[:2], "big") != qid:
        return None
    return data[3] & 0xF, int.from_bytes(data[6:8], "big")


def wait_ready(netns: str, proc: bl.ManagedProcess) -> None:
    """Until the server answers the probe name (NOERROR with an answer); bounded."""
    end = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < end:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited before answering:\n{proc.log_tail()}")
        got = query_in(netns, CACHE_IP, mix.PROBE_NAME)
        if got is not None and got[0] == 0 and got[1] > 0:
            return
        time.sleep(0.1)
    raise RuntimeError(f"{proc.name} did not answer {mix.PROBE_NAME} within {READY_TIMEOUT:.0f} s:\n{proc.log_tail()}")


# --------------------------------------------------------------------------
# Clients


@dataclass
class ClientRun:
    """What the pod's clients saw: per lookup index (ok, addresses, ms)."""

    results: dict[int, tuple[bool, tuple[str, ...], float]]
    elapsed: float


def run_clients(topo: Topology, label: str, names: list[str], clients: int, rate: float) -> ClientRun:
    """`clients` processes in the pod, lookup i going to client i % clients, together `rate` lookups a second."""
    deadline = len(names) / rate * 2 + 30  # each client stops starting lookups after this
    shards = [[(i, n) for i, n in enumerate(names) if i % clients == c] for c in range(clients)]
    procs = []
    start = time.monotonic()
    for c, shard in enumerate(shards):
        inp = topo.workdir / f"{label}-client{c}.in"
        inp.write_text("".join(f"{i} {n}\n" for i, n in shard))
        out = topo.workdir / f"{label}-client{c}.jsonl"
        with open(inp, "rb") as fin, open(out, "wb") as fout:
            argv = ["ip", "netns", "exec", topo.pod, sys.executable, str(CLIENT), "--rate", f"{rate / clients:g}",
                    "--deadline", f"{deadline:g}"]
            procs.append((subprocess.Popen(argv, stdin=fin, stdout=fout, stderr=subprocess.PIPE), out))
    results: dict[int, tuple[bool, tuple[str, ...], float]] = {}
    try:
        for proc, out in procs:
            remaining = max(start + deadline + 15 - time.monotonic(), 1)
            try:
                _, err = proc.communicate(timeout=remaining)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate(timeout=10)
                bl.log(f"  {label}: a client ran past its bound and was stopped")
            if proc.returncode not in (0, -signal.SIGKILL):
                bl.log(f"  {label}: client exited {proc.returncode}: {err.decode(errors='replace')[-500:]}")
            for line in out.read_text().splitlines():
                r = json.loads(line)
                results[r["i"]] = (r["ok"], tuple(r["addrs"]), r["ms"])
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    return ClientRun(results, time.monotonic() - start)


# --------------------------------------------------------------------------
# The run


def run_contender(topo: Topology, upstream: CountingUpstream, name: str, names: list[str],
                  args: argparse.Namespace) -> tuple[Counter[tuple[str, str]], ClientRun, dict]:
    """Start one contender (none for no cache), run the clients against it, stop it; what the upstream counted."""
    workdir = topo.workdir / name.replace(" ", "-")
    workdir.mkdir()
    extra: dict = {}
    proc = None
    try:
        if name == NO_CACHE:
            ns.write_etc(topo.pod, "resolv.conf", pod_resolv_conf(UPSTREAM_IP))
        else:
            ns.write_etc(topo.pod, "resolv.conf", pod_resolv_conf(CACHE_IP))
            argv = ["ip", "netns", "exec", topo.node, *ARGV[name](workdir)]
            env = {k: v for k, v in os.environ.items() if not k.startswith("NODECACHE_")}
            cwd = args.base_src if name == BASE else bl.REPO
            proc = bl.ManagedProcess(name, argv, workdir / f"{name}.log", cwd=cwd, env=env)
            wait_ready(topo.node, proc)
        upstream.take()  # the readiness probes are not part of the workload
        run = run_clients(topo, name.replace(" ", "-"), names, args.clients, args.rate)
        time.sleep(SETTLE)
        counts = upstream.take()
        if name in ("nodecache", BASE):
            extra["stats"] = agent_stats(workdir / "control.sock")
        return counts, run, extra
    finally:
        if proc is not None:
            proc.stop()


def agent_stats(sock: Path) -> str:
    """`nodecache stats` of the agent under test, for the results file."""
    done = subprocess.run([sys.executable, "-m", "nodecache", "stats", "--control-socket", str(sock)],
                          capture_output=True, text=True, timeout=30, cwd=bl.REPO)
    return done.stdout + done.stderr


def to_row(name: str, counts: Counter[tuple[str, str]], run: ClientRun, reference: list[tuple[str, ...]]) -> mix.Row:
    """One table row; `reference` holds the no-cache answers, per lookup index."""
    failures = mismatches = 0
    latencies = []
    for i, want in enumerate(reference):
        got = run.results.get(i)
        if got is None or not got[0]:
            failures += 1
            continue
        latencies.append(got[2])
        if got[1] != want:
            mismatches += 1
    return mix.Row(name, counts, len(reference), failures, mismatches,
                   mix.percentile(latencies, 0.5), mix.percentile(latencies, 0.99))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Upstream load through each cache, real glibc clients, one run.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--lookups", type=int, default=mix.DEFAULT_LOOKUPS, help="getaddrinfo calls per contender")
    p.add_argument("--seed", type=int, default=mix.DEFAULT_SEED, help="seed of the name mix (same for every contender)")
    p.add_argument("--clients", type=int, default=4, help="client processes in the pod, in parallel")
    p.add_argument("--rate", type=float, default=500.0,
                   help="lookups started per second, all clients together (paced, so TTLs expire alike for all)")
    p.add_argument("--only", action="append", choices=CONTENDER_ORDER[1:], metavar="NAME",
                   help="run only this cache (repeatable); no cache and dnsmasq always run, as model and baseline")
    p.add_argument("--base-src", type=Path, default=None, metavar="DIR",
                   help=f"also run the agent from the nodecache package in DIR (e.g. an export of main) as "
                        f"'{BASE}', before this checkout's, to compare before and after a change in one run")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (configs, logs, client output)")
    args = p.parse_args(argv)
    if args.lookups < 1 or args.clients < 1 or args.rate <= 0:
        p.error("--lookups, --clients and --rate must be positive")
    return args


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("make bench-load needs root: it creates network namespaces and a veth pair (run it as root)",
              file=sys.stderr)
        return 2
    missing = [p for p in ("nsd", "dnsmasq", "unbound", "ip") if bl.which(p) is None]
    if missing:
        print(f"missing: {', '.join(missing)} (Debian packages; `make debs` installs them)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupt)  # so the namespaces and processes go on the way out
    started = dt.datetime.now(dt.UTC)
    workdir = Path(tempfile.mkdtemp(prefix="nodecache-bench-load-"))
    try:
        return bench(args, workdir, started)
    finally:
        if args.keep:
            print(f"kept temporary directory: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def bench(args: argparse.Namespace, workdir: Path, started: dt.datetime) -> int:
    universe = mix.Universe()
    names = mix.lookup_mix(args.lookups, args.seed, universe)
    predicted = mix.predict(names, universe)
    order = [n for n in CONTENDER_ORDER if n in (NO_CACHE, "dnsmasq") or not args.only or n in args.only]
    if args.base_src is not None:
        order.insert(order.index("nodecache") if "nodecache" in order else len(order), BASE)
    measured: dict[str, tuple[Counter[tuple[str, str]], ClientRun, dict]] = {}
    with ExitStack() as stack:
        topo = stack.enter_context(topology(workdir))
        nsd = bl.bench_nsd(universe.zone_texts(), workdir / "nsd", address=bl.LOCALHOST, port=NSD_PORT, netns=topo.node)
        nsd.start()
        stack.callback(nsd.stop)
        upstream = counting_upstream(topo.node)
        stack.callback(upstream.stop)
        for name in order:
            bl.log(f"{name}: {args.lookups} lookups, {args.clients} clients, {args.rate:g}/s ...")
            measured[name] = run_contender(topo, upstream, name, names, args)
            counts = measured[name][0]
            bl.log(f"  {sum(counts.values())} upstream queries in {measured[name][1].elapsed:.1f} s")
    reference = [measured[NO_CACHE][1].results.get(i, (False, (), 0.0))[1] for i in range(len(names))]
    rows = [to_row(n, *measured[n][:2], reference) for n in order]
    model_ok = measured[NO_CACHE][0] == predicted.queries and reference == predicted.answers
    print_report(args, rows, predicted, measured[NO_CACHE][0], model_ok)
    save(args, started, rows, predicted, measured, model_ok)
    return 0 if model_ok else 1


def print_report(args: argparse.Namespace, rows: list[mix.Row], predicted: mix.Prediction,
                 nocache: Counter[tuple[str, str]], model_ok: bool) -> None:
    print(f"\nbench-load: {args.lookups:,} getaddrinfo lookups (AF_UNSPEC) per contender, seed {args.seed}, "
          f"{args.clients} clients, {args.rate:g} lookups/s; search {' '.join(mix.SEARCH)}, ndots:{mix.NDOTS}")
    print(f"model check: glibc's search rules predict {sum(predicted.queries.values()):,} queries "
          f"{predicted.by_kind()}; no cache sent {sum(nocache.values()):,} {mix.kind_totals(nocache)}: "
          f"{'equal' if model_ok else 'DIFFERENT (the harness or the clients are wrong; figures not trustworthy)'}")
    print(mix.report_table(rows))
    print("upstream = queries that reached the upstream during the lookups; (AAAA) = the NXDOMAINs asked for AAAA; "
          "failed = lookups without an address; differ = lookups answered otherwise than with no cache")


def save(args: argparse.Namespace, started: dt.datetime, rows: list[mix.Row], predicted: mix.Prediction,
         measured: dict, model_ok: bool) -> None:
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / f"load-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    report = {
        "started": started.isoformat(),
        "settings": {k: v for k, v in vars(args).items()},
        "versions": {"nsd": bl.tool_version([bl.find_program("nsd"), "-v"], r"NSD version\s+([\w.\-]+)"),
                     "dnsmasq": bl.tool_version([bl.find_program("dnsmasq"), "--version"]),
                     "unbound": bl.tool_version([bl.find_program("unbound"), "-V"])},
        "model_ok": model_ok,
        "predicted": {f"{k}/{t}": n for (k, t), n in sorted(predicted.queries.items())},
        "contenders": {r.name: {"upstream": r.total, "per_lookup": r.total / r.lookups,
                                "by_kind": {f"{k}/{t}": n for (k, t), n in sorted(r.queries.items())},
                                "failures": r.failures, "mismatches": r.mismatches, "p50_ms": r.p50_ms,
                                "p99_ms": r.p99_ms, "elapsed_s": measured[r.name][1].elapsed, **measured[r.name][2]}
                       for r in rows},
    }
    out.write_text(json.dumps(report, indent=2, default=str))
    print(f"raw results: {out.relative_to(bl.REPO)}")


if __name__ == "__main__":
    sys.exit(main())
