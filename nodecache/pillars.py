"""Pillar placeholders and the kube-dns ConfigMap: what node-cache does to the Corefile.

The stock node-local-dns ConfigMap is not a runnable Corefile: it carries
`__PILLAR__...__` placeholders that the agent fills in on each node, and the
kube-dns ConfigMap (`stubDomains`, `upstreamNameservers`) adds zones and changes
where other names go. Operators should change the image, not their ConfigMaps,
so this module does the same job, with two differences:

- a missing `<NAME>_SERVICE_HOST` is an error naming the variable, where the
  reference writes `<nil>` into the Corefile and CoreDNS fails later, obscurely;
- a stub domain whose nameserver is a host name is reported and skipped, where
  the reference produces a Corefile CoreDNS refuses, and crash-loops.

Everything here is a pure function of its arguments (paths, an environment
mapping): the caller passes `os.environ` and logs the returned warnings.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from nodecache.config import DEFAULT_CLUSTER_DOMAIN, DEFAULT_RESOLV_CONF, Address, parse_ip
from nodecache.corefile import (
    CacheSpec,
    CorefileConfig,
    ForwardSpec,
    ServerBlock,
    ZoneKey,
    parse_corefile,
    read_text,
)
from nodecache.errors import ConfigError
from nodecache.names import canonical_name

PILLAR_LOCAL_DNS = "__PILLAR__LOCAL__DNS__"  # the node-local address (169.254.20.10)
PILLAR_DNS_SERVER = "__PILLAR__DNS__SERVER__"  # the kube-dns ClusterIP, when it is served too
PILLAR_CLUSTER_DNS = "__PILLAR__CLUSTER__DNS__"  # where cluster names go: the upstream Service's IP
PILLAR_UPSTREAM_SERVERS = "__PILLAR__UPSTREAM__SERVERS__"  # where other names go
PILLAR_DNS_DOMAIN = "__PILLAR__DNS__DOMAIN__"  # the cluster domain
PILLARS = (PILLAR_LOCAL_DNS, PILLAR_DNS_SERVER, PILLAR_CLUSTER_DNS, PILLAR_UPSTREAM_SERVERS, PILLAR_DNS_DOMAIN)
_ANY_PILLAR = re.compile(r"__PILLAR__[A-Za-z0-9_]*")

DEFAULT_KUBE_DNS_CONFIG_DIR = "/etc/kube-dns"  # where node-local-dns mounts the kube-dns ConfigMap
STUB_DOMAINS_FILE = "stubDomains"
UPSTREAM_NAMESERVERS_FILE = "upstreamNameservers"
STUB_CACHE_TTL = 30  # node-cache gives each stub domain block `cache 30`
SERVICE_HOST_SUFFIX = "_SERVICE_HOST"  # kubelet's variable for a Service's ClusterIP
_SERVICE_NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")  # a Service name (RFC 1035 label)


@dataclass(frozen=True)
class KubeDnsConfig:
    """The kube-dns ConfigMap's settings, with unusable entries already dropped."""

    stub_domains: tuple[tuple[str, tuple[Address, ...]], ...] = ()  # (canonical zone, servers), file order
    upstream_nameservers: tuple[Address, ...] = ()
    warnings: tuple[str, ...] = ()  # what was skipped and why, for the caller to log
    stub_source: str = STUB_DOMAINS_FILE  # the stubDomains path, for FILE:LINE in later messages
    stub_lines: tuple[int, ...] = ()  # the line of each stub domain's key in that file


@dataclass(frozen=True)
class PillarValues:
    """What each placeholder becomes on this node."""

    local_dns: str  # the first --local-ip
    dns_server: str = ""  # the other --local-ip addresses (the kube-dns ClusterIP), space-separated
    cluster_dns: str | None = None  # None: unknown; using __PILLAR__CLUSTER__DNS__ is then an error...
    cluster_dns_missing: str = "no --upstream-svc was given"  # ...saying this
    upstream_servers: str = DEFAULT_RESOLV_CONF  # IPs, or a resolv.conf path `forward` reads
    dns_domain: str = DEFAULT_CLUSTER_DOMAIN


# ------------------------------------------------------------------ the upstream Service


def service_host_variable(service: str) -> str:
    """The environment variable kubelet sets to a Service's ClusterIP (`kube-dns-upstream` ->
    `KUBE_DNS_UPSTREAM_SERVICE_HOST`)."""
    if not _SERVICE_NAME.fullmatch(service):
        raise ConfigError(
            f"--upstream-svc {service!r} is not a Service name; give the name of the Service in front of "
            "the cluster DNS, e.g. kube-dns-upstream"
        )
    return service.upper().replace("-", "_") + SERVICE_HOST_SUFFIX


def cluster_dns_ip(service: str, env: Mapping[str, str]) -> str:
    """The upstream Service's IP from the environment, or an error naming the variable."""
    variable = service_host_variable(service)
    value = env.get(variable, "").strip()
    if not value:
        raise ConfigError(
            f"{variable} is not set, so the IP of Service {service!r} (--upstream-svc) is unknown. kubelet sets it "
            "only for Services in the pod's namespace that existed when the pod started: create the Service, "
            "then restart the pod"
        )
    return str(parse_ip(value, f"{variable}={value!r} is not an IP address; it should hold Service {service!r}'s ClusterIP"))


# ------------------------------------------------------------------ kube-dns ConfigMap


def default_kube_dns_dir(candidate: str | Path = DEFAULT_KUBE_DNS_CONFIG_DIR) -> str | None:
    """`candidate` if that directory exists (the ConfigMap is mounted), else None, as node-cache does."""
    return str(candidate) if Path(candidate).is_dir() else None


def read_kube_dns_dir(directory: str | Path | None) -> KubeDnsConfig:
    """Read `stubDomains` and `upstreamNameservers` from a mounted kube-dns ConfigMap directory.

    A missing or empty file means "not set". Bad JSON fails, naming the file; an entry
    that cannot be used (a host name instead of an IP, an invalid domain) is skipped
    with a warning so one bad line does not take the node's DNS down.
    """
    if directory is None:
        return KubeDnsConfig()
    root = Path(directory)
    if not root.is_dir():
        raise ConfigError(f"kube-dns config directory {root} does not exist; mount the kube-dns ConfigMap there or drop the flag")
    warnings: list[str] = []
    stub_path = root / STUB_DOMAINS_FILE
    stub_text, stubs_raw = _json_file(stub_path, dict, '{"example.test": ["192.0.2.53"]}')
    stubs: list[tuple[str, tuple[Address, ...]]] = []
    lines: list[int] = []
    for domain, servers in (stubs_raw or {}).items():
        entry = _stub_domain(stub_path, domain, servers, warnings)
        if entry is not None:
            stubs.append(entry)
            lines.append(_line_of(stub_text, json.dumps(domain)))
    up_path = root / UPSTREAM_NAMESERVERS_FILE
    _, upstream_raw = _json_file(up_path, list, '["192.0.2.53", "198.51.100.53:53"]')
    upstreams = _nameservers(up_path, "upstreamNameservers", upstream_raw or [], warnings)
    if upstream_raw and not upstreams:
        warnings.append(f"{up_path}: no usable upstream nameserver; names outside the cluster use the node's resolv.conf")
    return KubeDnsConfig(tuple(stubs), upstreams, tuple(warnings), str(stub_path), tuple(lines))


def _json_file(path: Path, kind: type, example: str) -> tuple[str, Any]:
    """The text and decoded JSON of an optional ConfigMap key; (\"\", None) when absent or blank."""
    if not path.exists():
        return "", None
    text = read_text(path)
    if not text.strip():
        return text, None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); {path.name} must look like {example}") from None
    if not isinstance(value, kind):
        raise ConfigError(f"{path}: must be a JSON {'object' if kind is dict else 'list'}, like {example}")
    return text, value


def _stub_domain(path: Path, domain: Any, servers: Any, warnings: list[str]) -> tuple[str, tuple[Address, ...]] | None:
    try:
        zone = canonical_name(domain) if isinstance(domain, str) and domain.strip(" .") else None
    except ConfigError:
        zone = None
    if zone is None:
        warnings.append(f"{path}: stub domain {domain!r} is not a domain name; skipped")
        return None
    if not isinstance(servers, list):
        warnings.append(f"{path}: stub domain {zone} must map to a JSON list of nameserver IPs; skipped")
        return None
    addresses = _nameservers(path, f"stub domain {zone}", servers, warnings)
    if not addresses:
        warnings.append(f"{path}: stub domain {zone} has no usable nameserver; skipped, its names go upstream")
        return None
    return zone, addresses


def _nameservers(path: Path, what: str, values: list[Any], warnings: list[str]) -> tuple[Address, ...]:
    """IP or IP:PORT entries; anything else is a warning, never a crash."""
    found: list[Address] = []
    for value in values:
        try:
            if not isinstance(value, str):
                raise ConfigError("not a string")
            found.append(Address.parse(value))
        except ConfigError:
            hint = (
                "it is a host name: nodecache, like CoreDNS's forward, needs an IP address; put the server's IP there"
                if isinstance(value, str) and _looks_like_hostname(value)
                else "give an IP or IP:PORT"
            )
            warnings.append(f"{path}: {what}: nameserver {value!r} skipped; {hint}")
    return tuple(dict.fromkeys(found))


def _looks_like_hostname(text: str) -> bool:
    host = text.rsplit(":", 1)[0] if text.count(":") == 1 else text
    return bool(re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9.])?", host)) and any(c.isalpha() for c in host)


def _line_of(text: str, needle: str) -> int:
    at = text.find(needle)
    return text.count("\n", 0, at) + 1 if at >= 0 else 1


# ------------------------------------------------------------------ substitution


def pillar_values(
    local_ips: Sequence[str],
    upstream_svc: str | None,
    env: Mapping[str, str],
    kube_dns: KubeDnsConfig,
    node_resolv_conf: str = DEFAULT_RESOLV_CONF,
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN,
) -> PillarValues:
    """Decide what each placeholder becomes; nothing here fails until a placeholder is used.

    The first --local-ip is `__PILLAR__LOCAL__DNS__`; the others (the kube-dns
    ClusterIP, when the agent intercepts it) are `__PILLAR__DNS__SERVER__`.
    """
    if not local_ips:
        raise ConfigError("no local IP; give --local-ip with the node-local address, e.g. 169.254.20.10")
    for ip in local_ips:
        parse_ip(ip, f"--local-ip {ip!r} is not an IP address")
    cluster_dns: str | None = None
    missing = "no --upstream-svc was given; pass the name of the Service in front of the cluster DNS"
    if upstream_svc:
        try:
            cluster_dns = cluster_dns_ip(upstream_svc, env)
        except ConfigError as exc:
            missing = str(exc)
    upstreams = (
        " ".join(str(a) for a in kube_dns.upstream_nameservers)
        if kube_dns.upstream_nameservers
        else _word(node_resolv_conf)
    )
    return PillarValues(
        local_dns=local_ips[0],
        dns_server=" ".join(local_ips[1:]),
        cluster_dns=cluster_dns,
        cluster_dns_missing=missing,
        upstream_servers=upstreams,
        dns_domain=cluster_domain.strip().rstrip(".") or ".",
    )


def _word(text: str) -> str:
    """`text` as one Corefile word: quoted when it holds spaces, quotes or braces."""
    if text and not re.search(r'[\s"{}#]', text):
        return text
    return '"' + text.replace('"', '\\"') + '"'


def substitute(text: str, values: PillarValues, source: str = "Corefile") -> str:
    """Replace every placeholder, line by line (so FILE:LINE stays true), refusing unknown ones.

    An IPv6 address written before `:PORT` (as in `health __PILLAR__LOCAL__DNS__:8080`)
    is bracketed, so the port stays readable.
    """
    plain = {
        PILLAR_LOCAL_DNS: values.local_dns,
        PILLAR_DNS_SERVER: values.dns_server,
        PILLAR_UPSTREAM_SERVERS: values.upstream_servers,
        PILLAR_DNS_DOMAIN: values.dns_domain,
    }
    out: list[str] = []
    for number, line in enumerate(text.split("\n"), start=1):
        code = line.split("#", 1)[0]  # a placeholder in a comment needs no value
        if PILLAR_CLUSTER_DNS in code:
            if values.cluster_dns is None:
                raise ConfigError(f"{source}:{number}: {PILLAR_CLUSTER_DNS} cannot be filled in: {values.cluster_dns_missing}")
            line = _replace(line, PILLAR_CLUSTER_DNS, values.cluster_dns)
        for pillar, value in plain.items():
            line = _replace(line, pillar, value)
        leftover = _ANY_PILLAR.search(line.split("#", 1)[0])
        if leftover:
            raise ConfigError(
                f"{source}:{number}: unknown placeholder {leftover.group(0)}; nodecache fills in {', '.join(PILLARS)}"
            )
        out.append(line)
    return "\n".join(out)


def _replace(line: str, pillar: str, value: str) -> str:
    if pillar not in line:
        return line
    bracketed = f"[{value}]" if ":" in value and " " not in value and not value.startswith(("/", '"')) else value
    line = re.sub(re.escape(pillar) + r"(?=:\d)", lambda _: bracketed, line)
    return line.replace(pillar, value)


# ------------------------------------------------------------------ stub domains as server blocks


def with_stub_domains(
    parsed: CorefileConfig, kube_dns: KubeDnsConfig, local_ips: Sequence[str]
) -> tuple[CorefileConfig, tuple[str, ...]]:
    """Add a server block per stub domain, as node-cache appends them to the Corefile.

    Each block is what node-cache writes: errors, `cache 30`, bind, `forward . SERVERS`.
    It listens where the Corefile's blocks do (when they agree; else on the local IPs)
    and on their port. A stub domain the Corefile already serves is skipped with a
    warning: the reference would produce a Corefile CoreDNS refuses.
    """
    warnings: list[str] = []
    binds = {frozenset(b.bind) for b in parsed.blocks}
    bind = parsed.blocks[0].bind if len(binds) == 1 else tuple(dict.fromkeys(local_ips))
    port = parsed.blocks[0].keys[0].port
    owners = {k.zone: b for b in parsed.blocks for k in b.keys if k.port == port}
    added: list[ServerBlock] = []
    lines = kube_dns.stub_lines or (1,) * len(kube_dns.stub_domains)
    for (zone, servers), line in zip(kube_dns.stub_domains, lines, strict=True):
        if zone in owners:
            warnings.append(
                f"{kube_dns.stub_source}:{line}: stub domain {zone} is already served by the Corefile block at "
                f"{owners[zone].where}; the stub domain is skipped"
            )
            continue
        ttl = STUB_CACHE_TTL
        added.append(
            ServerBlock(
                source=kube_dns.stub_source,
                line=line,
                keys=(ZoneKey(zone, port),),
                errors=True,
                bind=bind,
                cache=CacheSpec(line, success_max_ttl=ttl, denial_max_ttl=ttl),
                forward=ForwardSpec(line, ".", servers),
            )
        )
    return replace(parsed, blocks=(*parsed.blocks, *added)), tuple(warnings)


def load_node_local_corefile(
    corefile: str | Path,
    *,
    local_ips: Sequence[str],
    upstream_svc: str | None,
    env: Mapping[str, str],
    kube_dns_dir: str | Path | None = None,
    node_resolv_conf: str = DEFAULT_RESOLV_CONF,
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN,
) -> tuple[CorefileConfig, tuple[str, ...]]:
    """The node-local-dns ConfigMap Corefile as this node runs it, and warnings to log.

    Reads everything first (Corefile, kube-dns files), then substitutes, parses and
    adds stub domains: any error leaves nothing half-built.
    """
    text = read_text(corefile)
    kube_dns = read_kube_dns_dir(kube_dns_dir)
    values = pillar_values(local_ips, upstream_svc, env, kube_dns, node_resolv_conf, cluster_domain)
    parsed = parse_corefile(substitute(text, values, str(corefile)), str(corefile))
    if kube_dns.upstream_nameservers:
        parsed = udp_to_custom_upstreams(parsed, _lines_with(text, PILLAR_UPSTREAM_SERVERS))
    merged, stub_warnings = with_stub_domains(parsed, kube_dns, local_ips)
    return merged, (*kube_dns.warnings, *stub_warnings)


def udp_to_custom_upstreams(parsed: CorefileConfig, pillar_lines: set[int]) -> CorefileConfig:
    """Drop force_tcp from forwards to __PILLAR__UPSTREAM__SERVERS__, as node-cache does.

    With `upstreamNameservers` set, node-cache rewrites `forward . __PILLAR__UPSTREAM__SERVERS__
    { force_tcp }` to plain UDP: custom resolvers are often not reachable over TCP.
    `pillar_lines` are the lines where the placeholder was written.
    """
    blocks = []
    for block in parsed.blocks:
        fwd = block.forward
        if fwd is not None and fwd.force_tcp and fwd.line in pillar_lines:
            block = replace(block, forward=replace(fwd, force_tcp=False))
        blocks.append(block)
    return replace(parsed, blocks=tuple(blocks))


def _lines_with(text: str, needle: str) -> set[int]:
    return {n for n, line in enumerate(text.split("\n"), start=1) if needle in line.split("#", 1)[0]}
