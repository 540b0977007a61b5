"""``kproxy rules``: restore and save forms, counts, diffs, and the kernel round trip."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from test_cli import ARTICLE, run

import kproxy_core as kp

FLAGS = ["--node", "worker-1", "--cluster-cidr", "100.96.0.0/11"]


def test_rules_restore_matches_engine_render() -> None:
    r = run("rules", "-f", str(ARTICLE), *FLAGS)
    assert r.returncode == 0, r.stderr
    engine = kp.Engine(kp.load(ARTICLE), node="worker-1", cluster_cidr="100.96.0.0/11")
    assert r.stdout == engine.render("iptables")
    assert r.stdout.startswith("*filter\n") and r.stdout.endswith("COMMIT\n")
    assert "-A KUBE-NODEPORTS -m comment --comment default/mynginx -m tcp -p tcp --dport 30379" in r.stdout
    assert "--or-mark 0x00004000" in r.stdout


def test_rules_save_form_and_flags() -> None:
    r = run("rules", "-f", str(ARTICLE), *FLAGS, "--format", "save", "--masquerade-bit", "15")
    assert r.returncode == 0, r.stderr
    assert "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x8000/0x8000" in r.stdout
    assert "-d 100.68.181.31/32 -p tcp -m comment --comment \"default/mynginx cluster IP\"" in r.stdout
    r = run("rules", "-f", str(ARTICLE), *FLAGS, "--nfacct")
    assert "--nfacct-name localhost_nps_accepted_pkts" in r.stdout
    r = run("rules", "-f", str(ARTICLE), *FLAGS, "--iptables-localhost-nodeports", "false")
    assert "! -d 127.0.0.0/8 -j KUBE-NODEPORTS" in r.stdout and "KUBE-FIREWALL" not in r.stdout


def test_rules_count_and_diff(tmp_path: Path) -> None:
    r = run("rules", "-f", str(ARTICLE), *FLAGS, "--count", "--json")
    assert r.returncode == 0, r.stderr
    c = json.loads(r.stdout)
    assert c["per_service"]["default/mynginx"] == 8 and c["rules"] == sum(c["per_table"].values())
    new = tmp_path / "new.yaml"
    new.write_text(ARTICLE.read_text().replace("100.96.2.2", "100.96.2.3"))
    r = run("rules", "--diff", str(ARTICLE), str(new), *FLAGS, "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert len(d["added_chains"]) == 1 and d["added_chains"][0].startswith("nat/KUBE-SEP-")
    assert len(d["removed_chains"]) == 1 and d["changed_chains"] == ["nat/KUBE-SVC-GKLLXIAGC3Y3EQM4"]
    assert "+-A KUBE-SEP-" in d["diff"] and "--to-destination 100.96.2.3:80" in d["diff"]
    r = run("rules", "--diff", str(ARTICLE), str(ARTICLE), *FLAGS)
    assert r.returncode == 0 and "0 added, 0 removed, 0 rewritten" in r.stdout


@pytest.mark.parametrize("args", [["--masquerade-bit", "40"], ["--family", "ipv5"], []])
def test_rules_bad_arguments(args: list[str]) -> None:
    extra = [] if not args else ["-f", str(ARTICLE)]
    r = run("rules", *extra, *args)
    assert r.returncode == 2 and "Traceback" not in r.stderr


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("iptables-restore"), reason="needs root and iptables")
def test_save_form_is_what_the_kernel_prints(tmp_path: Path) -> None:
    """Load the restore form into a fresh netns; iptables-save must print our save form."""
    ns = f"kpr{os.getpid()}{uuid.uuid4().hex[:6]}"
    if subprocess.run(["ip", "netns", "add", ns], capture_output=True).returncode:
        pytest.skip("cannot create a network namespace")
    try:
        for extra in ([], ["--iptables-localhost-nodeports", "false"], ["--nodeport-addresses", "172.20.0.0/16"],
                      ["--detect-local-mode", "BridgeInterface", "--pod-bridge-interface", "cbr0"],
                      ["--detect-local-mode", "InterfaceNamePrefix", "--pod-interface-name-prefix", "veth"]):
            restore = run("rules", "-f", str(ARTICLE), *FLAGS, "--with-jumps", *extra).stdout
            save = run("rules", "-f", str(ARTICLE), *FLAGS, "--with-jumps", "--format", "save", *extra).stdout
            subprocess.run(["ip", "netns", "exec", ns, "iptables", "-F"], check=True)
            subprocess.run(["ip", "netns", "exec", ns, "iptables-restore"], input=restore, text=True, check=True)
            got = subprocess.run(["ip", "netns", "exec", ns, "iptables-save"], capture_output=True, text=True,
                                 check=True).stdout
            kernel = "".join(line + "\n" for line in got.splitlines() if not line.startswith("#"))
            assert kernel == save, extra
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


SERVICE_CIDR = """
apiVersion: networking.k8s.io/v1
kind: ServiceCIDR
metadata: {name: kubernetes}
spec: {cidrs: [100.64.0.0/13]}
"""


def test_rules_nftables_service_cidrs(tmp_path: Path) -> None:
    cidr = tmp_path / "servicecidr.yaml"
    cidr.write_text(SERVICE_CIDR)
    r = run("rules", "-f", str(ARTICLE), "-f", str(cidr), *FLAGS, "--mode", "nftables")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("add table ip kube-proxy")
    assert "100.64.0.0/13" in r.stdout and "100.68.181.31 . tcp . 80" in r.stdout
    flag = run("rules", "-f", str(ARTICLE), *FLAGS, "--mode", "nftables", "--service-cidr", "100.64.0.0/13")
    assert flag.stdout == r.stdout
    r = run("rules", "-f", str(ARTICLE), *FLAGS, "--mode", "nftables", "--format", "save")
    assert r.returncode == 2 and "format" in r.stderr


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("nft"), reason="needs root and nft")
def test_nftables_rules_load(tmp_path: Path) -> None:
    ns = f"kpn{os.getpid()}{uuid.uuid4().hex[:6]}"
    if subprocess.run(["ip", "netns", "add", ns], capture_output=True).returncode:
        pytest.skip("cannot create a network namespace")
    try:
        text = run("rules", "-f", str(ARTICLE), *FLAGS, "--mode", "nftables", "--service-cidr", "100.64.0.0/13").stdout
        subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=text, text=True, check=True)
        listed = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "table", "ip", "kube-proxy"],
                                capture_output=True, text=True, check=True).stdout
        assert "dnat to 100.96.2.2:80" in listed
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.mark.parametrize(("mode", "flag", "iface", "ipt", "nft"), [
    ("BridgeInterface", "--pod-bridge-interface", "cbr0", "! -i cbr0", "iifname != cbr0"),
    ("InterfaceNamePrefix", "--pod-interface-name-prefix", "veth", "! -i veth+", "iifname != veth*"),
])
def test_interface_detectors(mode: str, flag: str, iface: str, ipt: str, nft: str) -> None:
    args = ["-f", str(ARTICLE), "--node", "worker-1", "--detect-local-mode", mode, flag, iface]
    assert f"--dport 80 {ipt} -j KUBE-MARK-MASQ" in run("rules", *args).stdout
    assert f"ip daddr 100.68.181.31 {nft} jump mark-for-masquerade" in run("rules", *args, "--mode", "nftables").stdout
    # for lookups an interface detector stands for this node's podCIDR (100.96.1.0/24 on worker-1)
    kw = {"pod_bridge_interface": iface} if mode == "BridgeInterface" else {"pod_interface_name_prefix": iface}
    engine = kp.Engine(kp.load(ARTICLE), node="worker-1", detect_local_mode=mode, **kw)
    assert not engine.lookup("100.96.1.5", "100.68.181.31", 80, "TCP", sport=1, now=0.0).masquerade
    assert engine.lookup("100.96.2.9", "100.68.181.31", 80, "TCP", sport=1, now=0.0).masquerade
    r = run("rules", "-f", str(ARTICLE), "--detect-local-mode", mode)
    assert r.returncode == 2 and flag in r.stderr
    r = run("rules", "-f", str(ARTICLE), "--detect-local-mode", mode, flag, "bad name!")
    assert r.returncode == 2 and "interface name" in r.stderr
