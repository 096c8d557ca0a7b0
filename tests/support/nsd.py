"""NSD, the real authoritative server from Debian, as the upstream in integration tests.

Testing the cache against an independent implementation catches the mistakes a hand-written
responder would share with the code under test. Everything NSD writes stays in `workdir`, it
runs in the foreground as the current user (root or not), and it is stopped by its PID.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Self

from dnslib import QTYPE, DNSRecord

from .clients import udp_client_socket
from .net import free_port

START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
_UNIX_PATH_MAX = 100
"""sun_path holds 108 bytes; pytest's tmp_path can be longer than that."""


class NSDError(RuntimeError):
    """NSD could not be started or queried; the message carries its log."""


class NSD:
    """One NSD process serving `zones` (zone name -> master-file text) on address@port."""

    def __init__(
        self,
        zones: dict[str, str],
        workdir: Path,
        address: str = "127.0.0.1",
        port: int | None = None,
        netns: str | None = None,
    ) -> None:
        """`netns`: run inside that network namespace (`ip netns exec`); the port then defaults to 53."""
        if not zones:
            raise ValueError("NSD needs at least one zone")
        self.zones = {name if name.endswith(".") else name + ".": text for name, text in zones.items()}
        self.workdir = Path(workdir).resolve()
        self.address = address
        self.netns = netns
        if port is None:
            port = 53 if netns is not None else free_port(_family(address), address)
        self.port = port
        self.conf = self.workdir / "nsd.conf"
        self.log = self.workdir / "nsd.log"
        self._control_dir: str | None = None
        self.control_socket = self.workdir / "nsd.ctl"
        self._proc: subprocess.Popen[bytes] | None = None

    # -- lifecycle

    def start(self) -> Self:
        """Write the config and zone files, start NSD, and wait until it answers a SOA query."""
        binary = shutil.which("nsd")
        if binary is None:
            raise NSDError("nsd is not installed (Debian package nsd)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        if len(str(self.control_socket)) > _UNIX_PATH_MAX:
            self._control_dir = tempfile.mkdtemp(prefix="nsd-")
            self.control_socket = Path(self._control_dir) / "ctl"
        self._write_files()
        self._check_zones()
        with self.log.open("wb") as log:
            # `ip netns exec` execs NSD, so the PID stays NSD's own.
            prefix = ["ip", "netns", "exec", self.netns] if self.netns is not None else []
            self._proc = subprocess.Popen(
                [*prefix, binary, "-d", "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Terminate NSD by its PID and wait for it (bounded, then SIGKILL)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(STOP_TIMEOUT)
        if self._control_dir is not None:
            shutil.rmtree(self._control_dir, ignore_errors=True)
            self._control_dir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def processes(self) -> list[int]:
        """NSD's PID and its descendants' (with -d it still forks the processes that serve)."""
        if self.pid is None:
            return []
        parents: dict[int, int] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
        found = [self.pid]
        for pid in found:  # grows while walked: children, grandchildren, ...
            found += [child for child, parent in parents.items() if parent == pid]
        return found

    @contextlib.contextmanager
    def hung(self) -> Iterator[None]:
        """NSD stopped with SIGSTOP (alive, sockets open, answering nothing), then continued."""
        pids = self.processes()
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

    def log_text(self) -> str:
        """NSD's own log (stderr with -d), for error messages and debugging."""
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # -- statistics

    def stats(self) -> dict[str, float]:
        """NSD's counters (`nsd-control stats_noreset`), e.g. {"num.queries": 3.0, ...}."""
        binary = shutil.which("nsd-control")
        if binary is None:
            raise NSDError("nsd-control is not installed (Debian package nsd)")
        done = subprocess.run(
            [binary, "-c", str(self.conf), "stats_noreset"], capture_output=True, text=True, timeout=STOP_TIMEOUT
        )
        if done.returncode != 0:
            raise NSDError(f"nsd-control stats_noreset failed: {done.stdout}{done.stderr}")
        counters: dict[str, float] = {}
        for line in done.stdout.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                try:
                    counters[key.strip()] = float(value)
                except ValueError:
                    continue
        return counters

    def query_count(self) -> int:
        """Queries NSD has received so far (UDP, TCP and TLS added up), readiness probes included."""
        return int(self.stats().get("num.queries", 0))

    # -- internals

    def _write_files(self) -> None:
        zone_blocks = []
        for i, (name, text) in enumerate(self.zones.items()):
            filename = f"zone{i}.{name}zone"
            (self.workdir / filename).write_text(text)
            zone_blocks.append(f'zone:\n    name: "{name}"\n    zonefile: "{filename}"\n')
        w = self.workdir
        conf = f"""# Written by tests/support/nsd.py; everything NSD touches lives in this directory.
server:
    ip-address: {self.address}@{self.port}
    do-ip4: {"no" if ":" in self.address else "yes"}
    do-ip6: {"yes" if ":" in self.address else "no"}
    username: ""
    chroot: ""
    zonesdir: "{w}"
    pidfile: "{w}/nsd.pid"
    database: ""
    zonelistfile: "{w}/zone.list"
    xfrdfile: "{w}/xfrd.state"
    xfrdir: "{w}"
    cookie-secret-file: "{w}/cookiesecrets.txt"
    server-count: 1
    verbosity: 2
    hide-version: yes
    identity: ""
    refuse-any: no
    minimal-responses: yes

remote-control:
    control-enable: yes
    control-interface: "{self.control_socket}"

"""
        self.conf.write_text(conf + "\n".join(zone_blocks))

    def _check_zones(self) -> None:
        """NSD serves SERVFAIL for a zone that failed to load; say why up front instead."""
        checker = shutil.which("nsd-checkzone")
        if checker is None:
            return
        for i, name in enumerate(self.zones):
            path = self.workdir / f"zone{i}.{name}zone"
            done = subprocess.run([checker, name, str(path)], capture_output=True, text=True, timeout=STOP_TIMEOUT)
            if done.returncode != 0:
                raise NSDError(f"zone {name} does not load ({path}):\n{done.stdout}{done.stderr}")

    def _wait_ready(self) -> None:
        """Poll with a SOA query for the first zone until NSD answers it (bounded in time)."""
        first = next(iter(self.zones))
        probe = DNSRecord.question(first, "SOA")
        deadline = time.monotonic() + START_TIMEOUT
        last = "no answer"
        with self._probe_socket() as sock:
            sock.settimeout(0.2)
            while time.monotonic() < deadline:
                assert self._proc is not None
                if self._proc.poll() is not None:
                    raise NSDError(f"nsd exited with status {self._proc.returncode}:\n{self.log_text()}")
                try:
                    sock.send(probe.pack())
                    reply = DNSRecord.parse(sock.recv(65535))
                except (OSError, TimeoutError) as e:
                    last = str(e)
                    time.sleep(0.05)
                    continue
                except Exception as e:  # an unparsable reply is a failure to report, not to crash on
                    last = f"unparsable reply: {e}"
                    continue
                if reply.header.id == probe.header.id and any(rr.rtype == QTYPE.SOA for rr in reply.rr):
                    return
                last = f"unexpected reply:\n{reply}"
                time.sleep(0.05)
        raise NSDError(
            f"nsd did not answer SOA {first} on {self.address}@{self.port} within {START_TIMEOUT} s "
            f"({last}); conf {self.conf}; log:\n{self.log_text()}"
        )

    def _probe_socket(self) -> socket.socket:
        if self.netns is None:
            return udp_client_socket(self.address, self.port)
        from .netns import socket_in

        sock = socket_in(self.netns, _family(self.address), socket.SOCK_DGRAM)
        sock.connect((self.address, self.port))
        return sock


def with_records(zones: dict[str, str], zone: str, lines: Iterable[str]) -> dict[str, str]:
    """A copy of `zones` (zone name -> master-file text) with master-file `lines` added to `zone`.

    For record sets one test needs (e.g. a large headless service), without changing the
    generated zone every other test relies on.
    """
    key = zone if zone.endswith(".") else zone + "."
    if key not in zones:
        raise ValueError(f"no zone {key} among {sorted(zones)}")
    return {**zones, key: zones[key] + "".join(line.rstrip("\n") + "\n" for line in lines)}


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET
