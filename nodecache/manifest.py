"""Render daemonset.yaml for one cluster: what `nodecache manifest` prints.

The top-level `daemonset.yaml` is the single source. In a checkout it sits next
to the package and is read from there; an installed package carries a copy in
`<prefix>/share/nodecache/` (setup.cfg `data_files`), so both paths read the
same bytes and there is no second copy to keep in step.

Rendering is plain text substitution, the same as the sed recipes operators use
for node-local-dns, so a rendered file differs from the source only in the
placeholders and a header comment. Values are checked first: a manifest with a
typo in an IP would apply cleanly and break DNS on every node.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

from nodecache import __version__
from nodecache.config import parse_ip
from nodecache.errors import ConfigError

MANIFEST_NAME = "daemonset.yaml"
DATA_DIR = Path("share") / "nodecache"  # where setup.cfg's data_files installs it, below sys.prefix

PILLAR_LOCAL_DNS = "__PILLAR__LOCAL__DNS__"
PILLAR_DNS_SERVER = "__PILLAR__DNS__SERVER__"
PILLAR_DNS_DOMAIN = "__PILLAR__DNS__DOMAIN__"
PILLAR_IMAGE = "__PILLAR__IMAGE__"
PILLAR_CLUSTER_DNS = "__PILLAR__CLUSTER__DNS__"  # left to the agent in iptables mode
RENDERED_PILLARS = (PILLAR_LOCAL_DNS, PILLAR_DNS_SERVER, PILLAR_DNS_DOMAIN, PILLAR_IMAGE)  # all four, always

DEFAULT_IMAGE = f"nodecache:{__version__}"  # the tag `make image` builds; push it where the nodes can pull it

_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_IMAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@+-]*")


@dataclass(frozen=True)
class Values:
    """What one cluster fills in; checked by `checked_values`."""

    local_ip: str
    dns_server: str
    domain: str
    ipvs: bool = False
    image: str = DEFAULT_IMAGE


def find_template() -> Path:
    """daemonset.yaml: next to the package in a checkout, else the installed copy."""
    here = Path(__file__).resolve().parent
    candidates = [here.parent / MANIFEST_NAME, Path(sys.prefix) / DATA_DIR / MANIFEST_NAME]
    for path in candidates:
        if path.is_file():
            return path
    raise ConfigError(
        f"{MANIFEST_NAME} not found (looked at {', '.join(str(p) for p in candidates)}); "
        "reinstall nodecache, or pass --template with the file from the source tree"
    )


def checked_values(local_ip: str, dns_server: str, domain: str, ipvs: bool = False, image: str = DEFAULT_IMAGE) -> Values:
    """The values in canonical form, or a ConfigError naming the flag and what to give."""
    local = _ip("--local-ip", local_ip, "the node-local address, e.g. 169.254.20.10")
    server = _ip("--dns-server", dns_server, "the kube-dns ClusterIP (kubectl -n kube-system get svc kube-dns)")
    if local == server:
        raise ConfigError(f"--local-ip and --dns-server are both {local}; the local IP must be an address of its own")
    name = domain.strip().rstrip(".").lower()
    if not name:
        raise ConfigError("--domain is empty; give the cluster's DNS domain, e.g. cluster.local")
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in name.split(".")):
        raise ConfigError(
            f"--domain {domain!r} is not a DNS domain; give letters, digits and hyphens in dot-separated labels, "
            "e.g. cluster.local"
        )
    if not _IMAGE.fullmatch(image):
        raise ConfigError(f"--image {image!r} is not an image reference; give e.g. registry.example/nodecache:0.1.0")
    return Values(local, server, name, ipvs, image)


def _ip(flag: str, text: str, what: str) -> str:
    return str(parse_ip(text.strip(), f"{flag} {text!r} is not an IP address; give {what}"))


def render(template: str, values: Values) -> str:
    """The manifest with every placeholder filled, and a header saying how it was made.

    iptables mode: the agent serves the link-local IP and the kube-dns ClusterIP.
    IPVS mode: the link-local IP only (IPVS owns every ClusterIP), so the
    ClusterIP is removed from the bind lines and --local-ip, and cluster names
    go straight to it (nothing intercepts it there), as node-local-dns does.
    """
    missing = [p for p in (PILLAR_LOCAL_DNS, PILLAR_IMAGE) if p not in template]
    if missing:
        raise ConfigError(
            f"the template holds no {' or '.join(missing)}; is it already rendered? give the daemonset.yaml "
            "of the nodecache source"
        )
    text = template
    if values.ipvs:
        text = text.replace("," + PILLAR_DNS_SERVER, "").replace(" " + PILLAR_DNS_SERVER, "")
        text = _fill(text, PILLAR_CLUSTER_DNS, values.dns_server)
    text = _fill(text, PILLAR_DNS_SERVER, values.dns_server)
    text = _fill(text, PILLAR_LOCAL_DNS, values.local_ip)
    text = text.replace(PILLAR_DNS_DOMAIN, values.domain).replace(PILLAR_IMAGE, values.image)
    return header(values) + text


def _fill(text: str, pillar: str, ip: str) -> str:
    """Replace an IP placeholder; an IPv6 address followed by :PORT is bracketed so the port stays readable."""
    if ":" in ip:
        text = re.sub(re.escape(pillar) + r"(?=:\d)", lambda _: f"[{ip}]", text)
    return text.replace(pillar, ip)


def header(values: Values) -> str:
    """Comment lines put before the rendered manifest: the command, and what the mode asks of kubelet."""
    cmd = f"nodecache manifest --local-ip {values.local_ip} --dns-server {values.dns_server} --domain {values.domain}"
    if values.ipvs:
        cmd += " --ipvs"
    cmd += f" --image {values.image}"
    lines = [f"# Rendered by: {cmd}"]
    if values.ipvs:
        lines += [
            f"# IPVS mode: the agent serves {values.local_ip} only; IPVS keeps the kube-dns ClusterIP.",
            f"# Pods use the cache only once kubelet points them at it: --cluster-dns={values.local_ip}",
            f"# (clusterDNS: [{values.local_ip}] in the kubelet config file), or a pod's dnsConfig.",
            f"# To fall back to CoreDNS when the agent is down: --cluster-dns={values.local_ip},{values.dns_server}",
        ]
    else:
        lines += [
            f"# iptables mode: the agent serves {values.local_ip} and takes over the kube-dns ClusterIP",
            f"# {values.dns_server} on each node; kubelet and running pods need no change.",
        ]
    return "\n".join(lines) + "\n"


def render_file(values: Values, template: Path | None = None) -> str:
    """Read the template (found as `find_template` says unless given) and render it."""
    path = template or find_template()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    return render(text, values)
