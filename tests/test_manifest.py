"""daemonset.yaml and `nodecache manifest`: valid Kubernetes objects whose args the real CLI accepts.

Every document is checked against Kubernetes' own schemas (kubernetes-validate,
offline, strict: unknown fields fail), and the DaemonSet's arguments are run
through `nodecache check-config` with the ConfigMap's Corefile, so renaming a
flag or breaking the Corefile breaks these tests, not a cluster.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest

from nodecache import cli
from nodecache import manifest as rendering
from nodecache.config import DEFAULT_NODE_LOCK_DIR
from nodecache.errors import ConfigError
from nodecache.server import DRAIN_TIMEOUT

yaml = pytest.importorskip("yaml")
kv = pytest.importorskip("kubernetes_validate.utils")

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "daemonset.yaml"
NODECACHE = [sys.executable, "-m", "nodecache"]
LOCAL_IP = "169.254.20.10"
KUBE_DNS = "192.0.2.10"  # the kube-dns ClusterIP in these tests
UPSTREAM_SVC_IP = "192.0.2.53"  # what kubelet would put in KUBE_DNS_UPSTREAM_SERVICE_HOST
IMAGE = "registry.example/nodecache:test"
KINDS = [
    ("ServiceAccount", "node-local-dns"),
    ("Service", "kube-dns-upstream"),
    ("ConfigMap", "node-local-dns"),
    ("DaemonSet", "node-local-dns"),
    ("Service", "node-local-dns"),
]


def documents(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d is not None]


def sed_recipe(text: str) -> str:
    """The raw file as operators' sed recipes fill it (iptables mode)."""
    for pillar, value in (
        ("__PILLAR__LOCAL__DNS__", LOCAL_IP),
        ("__PILLAR__DNS__SERVER__", KUBE_DNS),
        ("__PILLAR__DNS__DOMAIN__", "cluster.local"),
        ("__PILLAR__IMAGE__", IMAGE),
    ):
        text = text.replace(pillar, value)
    return text


def rendered(ipvs: bool, local_ip: str = LOCAL_IP, dns_server: str = KUBE_DNS) -> str:
    values = rendering.checked_values(local_ip, dns_server, "cluster.local", ipvs, IMAGE)
    return rendering.render_file(values, TEMPLATE)


VARIANTS = {
    "raw-sed": lambda: sed_recipe(TEMPLATE.read_text()),
    "iptables": lambda: rendered(False),
    "ipvs": lambda: rendered(True),
    "ipv6-ipvs": lambda: rendered(True, "2001:db8:20::10", "2001:db8::a"),
}


def validate_all(text: str) -> None:
    version = kv.latest_version()
    for doc in documents(text):
        kv.validate(doc, version, strict=True)  # raises with the failing field


def daemonset(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == "DaemonSet")


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (only,) = daemonset(docs)["spec"]["template"]["spec"]["containers"]
    return only


def corefile(docs: list[dict[str, Any]]) -> str:
    return next(d for d in docs if d["kind"] == "ConfigMap")["data"]["Corefile"]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_document_is_valid_kubernetes(variant: str) -> None:
    validate_all(VARIANTS[variant]())


def test_the_raw_file_has_the_objects_in_order_and_only_known_placeholders() -> None:
    text = TEMPLATE.read_text()
    assert [(d["kind"], d["metadata"]["name"]) for d in documents(text)] == KINDS
    assert set(re.findall(r"__PILLAR__[A-Z_]+?__(?![A-Z])", text)) == {
        "__PILLAR__LOCAL__DNS__", "__PILLAR__DNS__SERVER__", "__PILLAR__DNS__DOMAIN__", "__PILLAR__IMAGE__",
        "__PILLAR__CLUSTER__DNS__", "__PILLAR__UPSTREAM__SERVERS__",  # filled in by the agent on the node
    }


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_the_daemonset_fields_that_matter(variant: str) -> None:
    docs = documents(VARIANTS[variant]())
    ds = daemonset(docs)
    pod = ds["spec"]["template"]["spec"]
    c = container(docs)
    assert ds["metadata"]["namespace"] == "kube-system"
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "Default"
    assert pod["priorityClassName"] == "system-node-critical"
    assert {"operator": "Exists"} in pod["tolerations"]  # every taint
    sc = c["securityContext"]
    assert set(sc["capabilities"]["add"]) == {"NET_ADMIN", "NET_BIND_SERVICE"}
    assert sc["privileged"] is False and sc["readOnlyRootFilesystem"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert volumes[mounts["/run/xtables.lock"]]["hostPath"] == {"path": "/run/xtables.lock", "type": "FileOrCreate"}
    assert volumes[mounts["/etc/coredns"]]["configMap"]["name"] == "node-local-dns"
    assert volumes[mounts["/etc/kube-dns"]]["configMap"] == {"name": "kube-dns", "optional": True}
    assert "emptyDir" in volumes[mounts["/run/nodecache"]]  # entry point's symlinks and the control socket
    # The node lock's directory is the node's, so a rollout's old and new agent see each other.
    assert volumes[mounts[DEFAULT_NODE_LOCK_DIR]]["hostPath"] == {"path": DEFAULT_NODE_LOCK_DIR, "type": "DirectoryOrCreate"}
    assert c["image"] == IMAGE
    # Surge needs no declared ports: on a hostNetwork pod they become hostPorts and block the surge pod.
    assert ds["spec"]["updateStrategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    assert "ports" not in c
    assert not any("hostPort" in p for p in c.get("ports", []))


def check_config(docs: list[dict[str, Any]], tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    """The container's args with the pod's mounts mapped into tmp_path, and the env kubelet would give."""
    etc = tmp_path / "etc-coredns"
    etc.mkdir()
    (etc / "Corefile").write_text(corefile(docs))
    kube_dns_dir = tmp_path / "kube-dns"
    kube_dns_dir.mkdir()
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 198.51.100.53\n")
    c = container(docs)
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    args = list(c["args"])
    assert args[0] == "run"
    out = []
    for arg in args[1:]:
        if arg.startswith("--config="):
            assert arg.split("=", 1)[1].startswith("/etc/coredns/") and "/etc/coredns" in mounts
            arg = f"--config={etc / 'Corefile'}"
        elif arg.startswith("--kube-dns-config-dir="):
            assert arg.split("=", 1)[1] in mounts
            arg = f"--kube-dns-config-dir={kube_dns_dir}"
        out.append(arg)
    out.append(f"--node-resolv-conf={resolv}")
    env = {**os.environ, "KUBE_DNS_UPSTREAM_SERVICE_HOST": UPSTREAM_SVC_IP}
    env.update({e["name"]: e["value"] for e in c.get("env", [])})
    return out, env


def test_every_flag_the_daemonset_passes_is_a_real_run_flag() -> None:
    docs = documents(rendered(False))
    help_text = subprocess.run([*NODECACHE, "run", "--help"], capture_output=True, text=True, check=True, timeout=60).stdout
    for arg in container(docs)["args"][1:]:
        assert arg.startswith("--")
        assert re.search(rf"(^|[\s,]){re.escape(arg.split('=', 1)[0])}[\s,=]", help_text), arg
    for var in container(docs)["env"]:
        assert var["name"] in help_text
    ctx = cli.run.make_context("run", list(container(docs)["args"][1:]))  # click parses them: no unknown flag
    assert ctx.params["config"] == "/etc/coredns/Corefile"


@pytest.mark.parametrize("ipvs", [False, True], ids=["iptables", "ipvs"])
def test_check_config_accepts_the_daemonset_command_line(ipvs: bool, tmp_path: Path) -> None:
    docs = documents(rendered(ipvs))
    args, env = check_config(docs, tmp_path)
    done = subprocess.run([*NODECACHE, "check-config", *args], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    head, *rows = done.stdout.splitlines()
    listen = f"listen {LOCAL_IP} port 53" if ipvs else f"listen {LOCAL_IP} {KUBE_DNS} port 53"
    assert head.startswith(listen), head
    pod = daemonset(docs)["spec"]["template"]["spec"]
    probes = container(docs)["livenessProbe"]["httpGet"], container(docs)["readinessProbe"]["httpGet"]
    assert [p["path"] for p in probes] == ["/health", "/ready"]
    for probe in probes:  # the probes ask where the Corefile's health listens
        assert f"health {probe['host']}:{probe['port']}" in head
    metrics = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "node-local-dns")
    (port,) = metrics["spec"]["ports"]
    assert metrics["spec"]["clusterIP"] == "None"
    assert f"metrics 0.0.0.0:{port['targetPort']}" in head
    upstream = next(d for d in docs if d["metadata"]["name"] == "kube-dns-upstream")
    assert {(p["port"], p["protocol"]) for p in upstream["spec"]["ports"]} == {(53, "UDP"), (53, "TCP")}
    zones = {r.split()[0]: r.split()[1] for r in rows[1:]}
    cluster_upstream = KUBE_DNS if ipvs else UPSTREAM_SVC_IP  # iptables mode: not the ClusterIP it intercepts
    assert zones == {
        "cluster.local.": f"{cluster_upstream}:53",
        "in-addr.arpa.": f"{cluster_upstream}:53",
        "ip6.arpa.": f"{cluster_upstream}:53",
        ".": "198.51.100.53:53",
    }
    # The grace period covers the lameduck and the drain that follows it.
    ctx = cli.run.make_context("run", args)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KUBE_DNS_UPSTREAM_SERVICE_HOST", UPSTREAM_SVC_IP)
        config = cli.build_config(ctx.params, cli._explicit_flags(ctx))
    assert config.lameduck == 5
    assert pod["terminationGracePeriodSeconds"] >= config.lameduck + DRAIN_TIMEOUT + 5


def test_ipvs_mode_leaves_the_cluster_ip_to_ipvs_and_says_kubelet_must_change() -> None:
    text = rendered(True)
    c = container(documents(text))
    assert f"--local-ip={LOCAL_IP}" in c["args"]
    assert KUBE_DNS not in corefile(documents(text)).split("forward")[0]  # not in bind
    assert f"--cluster-dns={LOCAL_IP}" in text.split("---")[0]
    iptables = rendered(False)
    assert f"--local-ip={LOCAL_IP},{KUBE_DNS}" in container(documents(iptables))["args"]
    assert "--cluster-dns" not in iptables.split("---")[0]


def test_ipv6_local_ip_is_bracketed_before_a_port() -> None:
    text = rendered(True, "2001:db8:20::10", "2001:db8::a")
    assert "health [2001:db8:20::10]:8080" in text
    assert container(documents(text))["livenessProbe"]["httpGet"]["host"] == "2001:db8:20::10"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dns-server", "kube-dns"], "--dns-server 'kube-dns' is not an IP address"),
        (["--dns-server", KUBE_DNS, "--local-ip", "169.254.20.300"], "--local-ip '169.254.20.300' is not an IP address"),
        (["--dns-server", KUBE_DNS, "--domain", ""], "--domain is empty"),
        (["--dns-server", KUBE_DNS, "--domain", "cluster_local"], "is not a DNS domain"),
        (["--dns-server", KUBE_DNS, "--local-ip", KUBE_DNS], "must be an address of its own"),
        (["--dns-server", KUBE_DNS, "--image", "bad image"], "is not an image reference"),
    ],
)
def test_invalid_values_are_one_line_and_exit_2(args: list[str], message: str) -> None:
    done = subprocess.run([*NODECACHE, "manifest", *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and message in done.stderr, done.stderr


@pytest.mark.parametrize("extra", [[], ["--ipvs"]], ids=["iptables", "ipvs"])
def test_nodecache_manifest_runs_and_its_output_validates(extra: list[str]) -> None:
    done = subprocess.run([*NODECACHE, "manifest", "--dns-server", KUBE_DNS, *extra],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    validate_all(done.stdout)
    assert "__PILLAR__LOCAL__" not in done.stdout and "__PILLAR__IMAGE__" not in done.stdout
    assert container(documents(done.stdout))["image"] == rendering.DEFAULT_IMAGE


def test_the_renderer_reads_the_top_level_file_and_the_package_ships_it() -> None:
    assert rendering.find_template() == TEMPLATE  # a checkout: the one source, no copy
    setup = (ROOT / "setup.cfg").read_text()
    assert re.search(r"\[options\.data_files\]\s*\n\s*share/nodecache\s*=\s*daemonset\.yaml", setup)
    assert "daemonset.yaml" in (ROOT / "Dockerfile").read_text()  # the image installs it too


def test_an_already_rendered_template_is_refused() -> None:
    values = rendering.checked_values(LOCAL_IP, KUBE_DNS, "cluster.local")
    with pytest.raises(ConfigError, match="already rendered"):
        rendering.render(rendered(False), values)


def test_rendering_fills_every_placeholder_it_owns() -> None:
    for text in (rendered(False), rendered(True)):
        assert not [p for p in rendering.RENDERED_PILLARS if p in text]


def test_make_image_says_clearly_when_there_is_no_engine() -> None:
    engines = [e for e in ("docker", "podman") if subprocess.run(
        f"{e} info", shell=True, capture_output=True, timeout=30).returncode == 0]
    if engines:
        pytest.skip(f"{engines[0]} works here; make image would really build")
    done = subprocess.run(["make", "-s", "-C", str(ROOT), "image"], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "neither docker nor podman is available" in done.stdout


def test_click_rejects_an_unknown_flag_as_the_test_above_relies_on() -> None:
    with pytest.raises(click.exceptions.NoSuchOption):
        cli.run.make_context("run", ["--no-such-flag"])
