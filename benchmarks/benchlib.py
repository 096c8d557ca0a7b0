"""Pieces shared by the benchmark scripts: processes, DNS probes, dnsperf runs.

Kept apart from run.py so that profile_hit.py starts servers, waits for them
and drives dnsperf exactly the way the side-by-side benchmark does.
"""

from __future__ import annotations

import compileall
import dataclasses
import math
import os
import re
import secrets
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    # The upstream (tests.support.nsd) and the sample zone live in the repo,
    # which is not a package on sys.path when this file runs as a script.
    sys.path.insert(0, str(REPO))

LOCALHOST = "127.0.0.1"
CLUSTER_DOMAIN = "cluster.local"

#: CPU the server under test gets to itself; the load side (dnsperf, NSD and
#: this harness) shares the other one.
SERVER_CPU = 0
LOAD_CPU = 1

QTYPES = {"A": 1, "NS": 2, "SOA": 6, "PTR": 12, "MX": 15, "TXT": 16, "AAAA": 28, "SRV": 33}
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}

#: The hit workload: what pods in a cluster ask most, all answered from the
#: sample zone. One search-path expansion (ndots:5) is NXDOMAIN and one AAAA is
#: NODATA on purpose: negative answers are a large share of real cluster traffic.
HIT_QUERIES: tuple[tuple[str, str], ...] = (
    ("kubernetes.default.svc.cluster.local", "A"),
    ("kubernetes.default.svc.cluster.local", "AAAA"),
    ("_https._tcp.kubernetes.default.svc.cluster.local", "SRV"),
    ("kube-dns.kube-system.svc.cluster.local", "A"),
    ("kube-dns.kube-system.svc.cluster.local", "AAAA"),
    ("web.default.svc.cluster.local", "A"),
    ("web.default.svc.cluster.local", "AAAA"),
    ("_http._tcp.web.default.svc.cluster.local", "SRV"),
    ("192-0-2-45.default.pod.cluster.local", "A"),
    ("kubernetes.default.svc.cluster.local.default.svc.cluster.local", "A"),
)

#: The name the readiness probe asks; must be NOERROR in the sample zone.
PROBE_NAME = "kubernetes.default.svc.cluster.local"


def log(msg: str) -> None:
    """Progress goes to stderr so stdout stays the report."""
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# CPU pinning


def compile_agent() -> None:
    """Write the agent's bytecode, as `pip install` does for the container image.

    An editable install with PYTHONDONTWRITEBYTECODE set would otherwise
    compile every module at each start, which leaves about 1 MiB more
    resident than the image's agent has: the idle RSS would measure the
    checkout, not the product.
    """
    compileall.compile_dir(REPO / "nodecache", quiet=1)


def can_pin() -> bool:
    """Pinning needs two CPUs we are allowed to use (0 and 1) and taskset."""
    try:
        allowed = os.sched_getaffinity(0)
    except OSError:
        return False
    return {SERVER_CPU, LOAD_CPU} <= allowed and which("taskset") is not None


def pinned(argv: Sequence[str], cpu: int | None) -> list[str]:
    """Prefix argv with taskset so the exec'd program (same PID) runs on cpu."""
    if cpu is None:
        return list(argv)
    return ["taskset", "-c", str(cpu), *argv]


def which(prog: str) -> str | None:
    """shutil.which, but also looking in the sbin directories where Debian puts servers."""
    for d in os.environ.get("PATH", "").split(os.pathsep) + ["/usr/sbin", "/sbin"]:
        p = Path(d) / prog
        if p.is_file() and os.access(p, os.X_OK):
            return str(p)
    return None


def find_program(prog: str) -> str:
    """Locate a server binary; /usr/sbin is searched even when not on PATH."""
    path = which(prog)
    if path is None:
        raise FileNotFoundError(f"{prog} not found (Debian package: see `make debs`)")
    return path


# --------------------------------------------------------------------------
# Processes


class ManagedProcess:
    """A child we started, stopped by PID: SIGTERM, then SIGKILL after a grace period."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path,
                 cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self._logf = open(log_path, "wb")
        self.proc = subprocess.Popen(self.argv, stdout=self._logf, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=cwd, env=env)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, grace: float = 5.0) -> int | None:
        """Stop the process and return its exit status (negative: killed by signal)."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(sig)
                try:
                    self.proc.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    log(f"  {self.name} (pid {self.pid}) ignored signal {sig} for {grace:.0f}s; killing")
                    self.proc.kill()
                    self.proc.wait(timeout=grace)
            return self.proc.returncode
        finally:
            self._logf.close()

    def log_tail(self, lines: int = 15) -> str:
        """Last lines of the child's output, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])


def proc_tree(pid: int) -> list[int]:
    """pid and all its descendants, so memory of forked workers is counted too."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo and len(out) < 1000:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def memory_kib(pid: int) -> dict[str, int]:
    """VmHWM (peak RSS) and VmRSS in KiB, summed over the process tree."""
    total = {"VmHWM": 0, "VmRSS": 0}
    for p in proc_tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                key, _, value = line.partition(":")
                if key in total:
                    total[key] += int(value.split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total


#: How often, and how long unchanged, RSS is sampled before it counts as settled.
RSS_SAMPLE_S = 0.25
RSS_STABLE_S = 1.0
RSS_SETTLE_MAX_S = 5.0
#: After the fill: what a server keeps once the burst is over (nodecache gives freed heap back a second
#: or two after its misses stop; see nodecache/heap.py), not a transient of the burst. The peak is
#: reported apart (VmHWM).
RSS_AFTER_BURST_STABLE_S = 3.0
RSS_AFTER_BURST_MAX_S = 10.0


def udp_port_bound(port: int) -> bool:
    """Whether some IPv4 UDP socket on this machine is bound to port (/proc/net/udp)."""
    suffix = f":{port:04X}"
    try:
        lines = Path("/proc/net/udp").read_text().splitlines()[1:]
    except OSError:
        return False
    return any(line.split()[1].endswith(suffix) for line in lines if len(line.split()) > 1)


def wait_bound(port: int, proc: ManagedProcess, timeout: float = 20.0) -> None:
    """Block until proc's DNS port is bound, without sending it a query.

    Idle memory is read before the first query, so readiness cannot be
    checked with a probe here.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited with {proc.proc.returncode} before binding:\n{proc.log_tail()}")
        if udp_port_bound(port):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{proc.name} did not bind UDP port {port} within {timeout:.0f}s\n{proc.log_tail()}")


def settled_rss_kib(pid: int, stable_s: float = RSS_STABLE_S, max_s: float = RSS_SETTLE_MAX_S) -> int:
    """RSS (KiB, process tree) once it has not changed for `stable_s` (at most `max_s`): a started
    server finishing its setup, or a filled one settling after the burst."""
    last, stable_since = -1, time.monotonic()
    deadline = stable_since + max_s
    while True:
        now_rss = memory_kib(pid)["VmRSS"]
        now = time.monotonic()
        if now_rss != last:
            last, stable_since = now_rss, now
        elif now - stable_since >= stable_s or now >= deadline:
            return now_rss
        time.sleep(RSS_SAMPLE_S)


def cpu_seconds(pid: int) -> float:
    """User+system CPU time of the process tree so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p in proc_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


# --------------------------------------------------------------------------
# A minimal DNS client: enough to probe readiness and fill caches. Hand-made
# so the harness measures the servers, not a client library.


def encode_query(name: str, qtype: str, qid: int) -> bytes:
    """A plain recursive query (RD=1) without EDNS."""
    labels = b"".join(bytes([len(x)]) + x.encode("ascii") for x in name.strip(".").split(".") if x)
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + b"\0" + struct.pack(
        "!HH", QTYPES[qtype], 1)


def query(address: str, port: int, name: str, qtype: str = "A",
          timeout: float = 1.0) -> tuple[str, int] | None:
    """Send one UDP query; return (rcode name, answer count) or None on timeout."""
    qid = secrets.randbelow(65536)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.connect((address, port))
        s.send(encode_query(name, qtype, qid))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = s.recv(65535)
            except (TimeoutError, ConnectionRefusedError, OSError):
                return None
            if len(data) >= 12 and struct.unpack("!H", data[:2])[0] == qid:
                flags, _qd, an = struct.unpack("!HHH", data[2:8])
                return RCODES.get(flags & 0xF, str(flags & 0xF)), an
    return None


def wait_ready(address: str, port: int, proc: ManagedProcess | None = None,
               timeout: float = 20.0) -> float:
    """Block until the server answers the probe with NOERROR; return seconds waited.

    Raises RuntimeError with the child's log tail if it dies or never answers.
    """
    start = time.monotonic()
    last: tuple[str, int] | None = None
    while time.monotonic() - start < timeout:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited with {proc.proc.returncode} before answering:\n"
                               f"{proc.log_tail()}")
        last = query(address, port, PROBE_NAME, "A", timeout=0.5)
        if last is not None and last[0] == "NOERROR" and last[1] > 0:
            return time.monotonic() - start
        time.sleep(0.1)
    tail = proc.log_tail() if proc is not None else ""
    raise RuntimeError(f"no NOERROR answer for {PROBE_NAME} on {address}:{port} within "
                       f"{timeout:.0f}s (last reply: {last})\n{tail}")


def warm(address: str, port: int, queries: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Ask every query once (a cache fill); return 'name type' -> rcode seen."""
    seen = {}
    for name, qtype in queries:
        r = query(address, port, name, qtype, timeout=2.0)
        seen[f"{name} {qtype}"] = "timeout" if r is None else r[0]
    return seen


# --------------------------------------------------------------------------
# The upstream


def sample_zones() -> dict[str, str]:
    """The sample cluster zone(s), from the product so tests and bench agree."""
    from tests.support.samplezone import zone_texts

    return zone_texts(domain=CLUSTER_DOMAIN)


#: NSD enables response rate limiting (RRL) by default: about 200 answers a
#: second per client /24 and per wildcard. The miss workload sends tens of
#: thousands of wildcard names a second from 127.0.0.1, so with RRL on NSD
#: drops or truncates most of them and every contender looks broken.
NSD_SERVER_EXTRA = ("rrl-ratelimit: 0", "rrl-whitelist-ratelimit: 0")


#: Where the node's resolver (the agent's --node-resolv-conf) listens: an
#: address in 127.53.0.0/16 on port 53, since a resolv.conf names no port.
NODE_RESOLVER_NET = "127.53"
DNS_PORT = 53


def pick_node_resolver() -> str | None:
    """A loopback address whose port 53 is free for UDP and TCP, or None (not root, or taken).

    NSD listens there too, so the agent's "." zone reaches the benchmark's
    upstream through an ordinary resolv.conf, as on a node.
    """
    for _ in range(8):
        address = f"{NODE_RESOLVER_NET}.{secrets.randbelow(254) + 1}.{secrets.randbelow(254) + 1}"
        try:
            for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                with socket.socket(socket.AF_INET, kind) as s:
                    s.bind((address, DNS_PORT))
        except OSError:
            continue
        return address
    return None


def start_upstream(workdir: Path, node_resolver: str | None = None):
    """Start NSD (RRL off) with the sample and fill zones on a free 127.0.0.1 port; return it.

    With node_resolver, NSD also answers on node_resolver:53, where the
    agent's node resolv.conf points.
    """
    from fillzones import upstream_zones

    nsd = bench_nsd(upstream_zones(sample_zones()), workdir, node_resolver, address=LOCALHOST)
    nsd.start()
    conf = Path(getattr(nsd, "conf", workdir / "nsd.conf"))
    if not conf.is_file() or "rrl-ratelimit: 0" not in conf.read_text():
        log("warning: could not turn NSD's rate limiting off; the miss workload will suffer")
    return nsd


def bench_nsd(zones: dict[str, str], workdir: Path, node_resolver: str | None = None, **where):
    """The test suite's NSD (not started) with RRL turned off in its generated config.

    `node_resolver`: a second address NSD answers on, port 53. `where`: NSD's
    address, port and netns keywords (tests.support.nsd.NSD).
    """
    from tests.support.nsd import NSD

    class BenchNSD(NSD):
        """The test suite's NSD with RRL turned off, and a second address, in its generated config."""

        def _write_files(self) -> None:
            super()._write_files()
            text = self.conf.read_text()
            lines = list(NSD_SERVER_EXTRA)
            if node_resolver is not None:
                lines.append(f"ip-address: {node_resolver}@{DNS_PORT}")
            extra = "".join(f"    {line}\n" for line in lines)
            if "\nserver:\n" in "\n" + text:
                head, sep, tail = text.partition("server:\n")
                self.conf.write_text(head + sep + extra + tail)

    return BenchNSD(zones, workdir, **where)


def agent_endpoint_args(workdir: Path) -> list[str]:
    """nodecache's operator endpoints where a benchmark may have them.

    The CLI defaults are a node agent's (/run/nodecache/control.sock, 0.0.0.0:9253,
    LOCAL_IP:8080, 5 s lameduck). Here: the control socket in the run's temporary
    directory, metrics and health on free loopback ports, no lameduck. They stay on,
    as in production; `--nodecache-args "--metrics-address off"` (later flags win)
    measures without them.
    """
    return ["--control-socket", str(workdir / "control.sock"),
            "--metrics-address", f"{LOCALHOST}:{free_port()}", "--health-address", f"{LOCALHOST}:{free_port()}",
            "--lameduck", "0"]  # fmt: skip


def free_port() -> int:
    """A port that is free for both UDP and TCP on 127.0.0.1."""
    from tests.support.net import free_port as _free_port

    return _free_port()


# --------------------------------------------------------------------------
# Datafiles


def write_hit_file(path: Path) -> Path:
    """The hit workload's dnsperf datafile; dnsperf loops over it until -l."""
    path.write_text("".join(f"{n} {t}\n" for n, t in HIT_QUERIES))
    return path


def write_questions(path: Path, questions: Iterable[tuple[str, str]]) -> int:
    """A dnsperf datafile with these (name, type) questions in order; returns how many."""
    n = 0
    with open(path, "w") as f:
        for name, qtype in questions:
            f.write(f"{name} {qtype}\n")
            n += 1
    return n


def write_miss_file(path: Path, count: int) -> str:
    """count unique names under the wildcard; returns the random run id used.

    A fresh id per file means no contender or repetition ever sees a name it
    (or anyone) has cached before.
    """
    run_id = secrets.token_hex(4)
    suffix = f".wild.{CLUSTER_DOMAIN} A\n"
    with open(path, "w") as f:
        chunk = 50_000
        for start in range(0, count, chunk):
            f.write("".join(f"{run_id}-{n}{suffix}" for n in range(start, min(count, start + chunk))))
    return run_id


# --------------------------------------------------------------------------
# dnsperf


@dataclasses.dataclass(frozen=True)
class DnsperfOptions:
    """The bounded load shape used for every run; printed with the results."""

    clients: int = 4
    outstanding: int = 100
    timeout: float = 2.0

    def argv(self) -> list[str]:
        return ["-c", str(self.clients), "-q", str(self.outstanding), "-t", f"{self.timeout:g}"]


@dataclasses.dataclass
class DnsperfResult:
    """What one dnsperf run reported, plus latency quantiles from its verbose lines."""

    argv: list[str]
    sent: int = 0
    completed: int = 0
    lost: int = 0
    qps: float = 0.0
    run_time_s: float = 0.0
    avg_latency_ms: float = 0.0
    min_latency_ms: float = 0.0
    max_latency_ms: float = 0.0
    stddev_latency_ms: float = 0.0
    p50_latency_ms: float | None = None
    p99_latency_ms: float | None = None
    p999_latency_ms: float | None = None
    rcodes: dict[str, int] = dataclasses.field(default_factory=dict)
    #: Questions dnsperf gave up on ("name type"), at most MAX_LOST_KEPT of them.
    lost_questions: list[str] = dataclasses.field(default_factory=list)
    dnsperf_cpu_pct: float | None = None  # of one CPU, over the run time
    server_cpu_pct: float | None = None  # filled in by the caller, which knows the server
    stopped_by: str = ""  # "time limit" or "end of file" (dnsperf's own words)
    exit_code: int = 0
    summary_text: str = ""

    @property
    def bad_responses(self) -> int:
        """Answers that are neither data nor a proper negative answer."""
        return sum(v for k, v in self.rcodes.items() if k not in ("NOERROR", "NXDOMAIN"))


MAX_LOST_KEPT = 10_000

_SUMMARY = {
    "sent": re.compile(r"Queries sent:\s+(\d+)"),
    "completed": re.compile(r"Queries completed:\s+(\d+)"),
    "lost": re.compile(r"Queries lost:\s+(\d+)"),
    "qps": re.compile(r"Queries per second:\s+([\d.]+)"),
    "run_time_s": re.compile(r"Run time \(s\):\s+([\d.]+)"),
}
_LATENCY = re.compile(r"Average Latency \(s\):\s+([\d.]+) \(min ([\d.]+), max ([\d.]+)\)")
_STDDEV = re.compile(r"Latency StdDev \(s\):\s+([\d.]+)")
_RCODES = re.compile(r"Response codes:\s+(.*)")
_STOPPED = re.compile(r"\[Status\] Testing complete \((.*)\)")


def run_dnsperf(datafile: Path, port: int, out_dir: Path, label: str, opts: DnsperfOptions,
                duration: float | None = None, max_runs: int | None = None,
                cpu: int | None = None, rate: int | None = None) -> DnsperfResult:
    """Run dnsperf against 127.0.0.1:port and parse its report.

    dnsperf 2.10 has no latency histogram option, so it runs with -v (one line
    per answer with its latency) into a file on disk; the quantiles are
    computed from those lines and the file is deleted, keeping only the summary.
    rate (dnsperf -Q) caps the queries sent per second: a fixed offered load.
    """
    argv = ["dnsperf", "-s", LOCALHOST, "-p", str(port), "-d", str(datafile), *opts.argv(), "-v"]
    if duration is not None:
        argv += ["-l", f"{duration:g}"]
    if max_runs is not None:
        argv += ["-n", str(max_runs)]
    if rate is not None:
        argv += ["-Q", str(rate)]
    verbose = out_dir / f"{label}.dnsperf.out"
    bound = (duration or 0) + 10 * opts.timeout + 60  # generous, but bounded
    with open(verbose, "wb") as out, open(out_dir / f"{label}.dnsperf.err", "wb") as err:
        p = subprocess.Popen(pinned(argv, cpu), stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        code, cpu_s = _wait_with_rusage(p, bound)
    try:
        result = parse_dnsperf(verbose, argv)
    finally:
        verbose.unlink(missing_ok=True)
    result.exit_code = code
    if result.run_time_s > 0:
        result.dnsperf_cpu_pct = 100 * cpu_s / result.run_time_s
    (out_dir / f"{label}.dnsperf.summary").write_text(result.summary_text)
    if code != 0 or result.sent == 0:
        err_text = (out_dir / f"{label}.dnsperf.err").read_text(errors="replace")
        raise RuntimeError(f"dnsperf failed (exit {code}):\n{result.summary_text}\n{err_text}")
    return result


def _wait_with_rusage(p: subprocess.Popen, bound: float) -> tuple[int, float]:
    """Reap p within bound seconds; return (exit code, its user+system CPU seconds).

    The CPU time tells whether dnsperf itself was the bottleneck (near 100% of
    its one CPU) rather than the server.
    """
    deadline = time.monotonic() + bound
    while True:
        pid, status, usage = os.wait4(p.pid, os.WNOHANG)
        if pid:
            p.returncode = os.waitstatus_to_exitcode(status)
            return p.returncode, usage.ru_utime + usage.ru_stime
        if time.monotonic() > deadline:
            p.kill()
            p.wait(timeout=10)
            raise RuntimeError(f"dnsperf did not finish within {bound:.0f}s")
        time.sleep(0.05)


def parse_dnsperf(path: Path, argv: list[str]) -> DnsperfResult:
    """Parse dnsperf -v output: per-answer latency lines, then the statistics block."""
    latencies: dict[bytes, int] = {}  # the printed latency string -> how many
    lost: list[str] = []
    summary: list[str] = []
    with open(path, "rb") as f:
        for line in f:
            if line.startswith(b"> "):
                parts = line.split()
                # "> RCODE name type latency"; timeouts ("> T name type") have no latency
                if len(parts) == 5 and parts[1] not in (b"T", b"I"):
                    latencies[parts[4]] = latencies.get(parts[4], 0) + 1
                elif parts[1:2] == [b"T"] and len(lost) < MAX_LOST_KEPT:
                    lost.append(b" ".join(parts[2:4]).decode(errors="replace"))
            elif len(summary) < 200:
                summary.append(line.decode(errors="replace").rstrip())
    text = "\n".join(summary)
    r = DnsperfResult(argv=argv, summary_text=text, lost_questions=lost)
    for field, rx in _SUMMARY.items():
        if m := rx.search(text):
            value = m.group(1)
            setattr(r, field, float(value) if field in ("qps", "run_time_s") else int(value))
    if m := _LATENCY.search(text):
        r.avg_latency_ms, r.min_latency_ms, r.max_latency_ms = (float(x) * 1000 for x in m.groups())
    if m := _STDDEV.search(text):
        r.stddev_latency_ms = float(m.group(1)) * 1000
    if m := _RCODES.search(text):
        for name, count in re.findall(r"([A-Z]+) (\d+)", m.group(1)):
            r.rcodes[name] = int(count)
    if m := _STOPPED.search(text):
        r.stopped_by = m.group(1)
    r.p50_latency_ms, r.p99_latency_ms, r.p999_latency_ms = quantiles_ms(latencies, (0.5, 0.99, 0.999))
    return r


def quantiles_ms(hist: dict[bytes, int], qs: Sequence[float]) -> list[float | None]:
    """Nearest-rank quantiles of a {latency-seconds-string: count} histogram, in ms."""
    total = sum(hist.values())
    if total == 0:
        return [None for _ in qs]
    items = sorted((float(k), v) for k, v in hist.items())
    out: list[float | None] = []
    for q in qs:
        rank = max(1, math.ceil(q * total))
        seen = 0
        for value, count in items:
            seen += count
            if seen >= rank:
                out.append(value * 1000)
                break
    return out


def tool_version(argv: Sequence[str], pattern: str = r"[Vv]ersion\s+([\w.\-]+)") -> str:
    """A program's version string, or 'unknown'; for the results file."""
    try:
        p = subprocess.run(list(argv), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    m = re.search(pattern, p.stdout + p.stderr)
    return m.group(1) if m else "unknown"
