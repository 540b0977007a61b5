"""The ``kproxy`` command, run as a user runs it (the installed console script)."""

from __future__ import annotations

import gzip
import json
import subprocess
from pathlib import Path

import cli_run
import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTICLE = ROOT / "examples" / "mynginx.yaml"


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """``kproxy ARGS`` from outside the repository (paths in ARGS are absolute)."""
    return cli_run.kproxy(*args, input=stdin)


def test_console_script_installed() -> None:
    assert cli_run.script().is_file()


def test_demo() -> None:
    r = run("demo")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "100.68.181.31" in out and "30379" in out and "100.96.2.2:80" in out
    # the article's two paths: pod -> ClusterIP (no masquerade), internet -> NodePort (masquerade)
    assert "KUBE-SERVICES -> KUBE-SVC-" in out
    assert "KUBE-SERVICES -> KUBE-NODEPORTS -> KUBE-EXT-" in out
    assert out.count("KUBE-SEP-") >= 2
    assert "worker-1" in out and "worker-2" in out


def test_trace_json() -> None:
    r = run("trace", "-f", str(ARTICLE), "--node", "worker-1", "--cluster-cidr", "100.96.0.0/11",
            "--src", "203.0.113.7:5555", "--dst", "172.20.40.11:30379", "--json")
    assert r.returncode == 0, r.stderr
    t = json.loads(r.stdout)
    assert t["packet"] == {"src": "203.0.113.7", "sport": 5555, "dst": "172.20.40.11", "dport": 30379,
                           "proto": "TCP"}
    assert (t["verdict"], t["service"], t["frontend"], t["endpoint"], t["masquerade"]) == (
        "DNAT", "default/mynginx", "NodePort", "100.96.2.2:80", True)
    assert t["candidates"][0]["probability"] == 1.0 and t["candidates"][0]["node"] == "worker-2"
    assert t["candidates"][0]["local"] is False
    assert t["chains"][:3] == ["KUBE-SERVICES", "KUBE-NODEPORTS", t["chains"][2]]
    assert t["chains"][2].startswith("KUBE-EXT-") and t["chains"][3] == "KUBE-MARK-MASQ"
    assert t["chains"][-1].startswith("KUBE-SEP-") and t["steps"]


def test_trace_text_and_hostname_override() -> None:
    r = run("trace", "-f", str(ARTICLE), "--hostname-override", "worker-2", "--cluster-cidr",
            "100.96.0.0/11", "--src", "100.96.2.9", "--dst", "100.68.181.31:80")
    assert r.returncode == 0, r.stderr
    assert "worker-2" in r.stdout and "DNAT to 100.96.2.2:80" in r.stdout
    assert "masquerade  no" in r.stdout


def test_trace_from_stdin() -> None:
    r = run("trace", "-f", "-", "--src", "10.0.0.1", "--dst", "100.68.181.31:80", stdin=ARTICLE.read_text())
    assert r.returncode == 0, r.stderr
    assert "DNAT" in r.stdout


@pytest.mark.parametrize(("args", "needle"), [
    (["--src", "10.0.0.1", "--dst", "100.68.181.31"], "--dst"),
    (["--src", "10.0.0.1", "--dst", "100.68.181.31:99999"], "not a valid port"),
    (["--src", "bogus", "--dst", "100.68.181.31:80"], "address"),
    (["--src", "10.0.0.1", "--dst", "100.68.181.31:80", "--node", "nope"], "nope"),
    (["--src", "10.0.0.1", "--dst", "100.68.181.31:80", "--cluster-cidr", "10.0.0/33"], "--cluster-cidr"),
])
def test_trace_bad_arguments(args: list[str], needle: str) -> None:
    r = run("trace", "-f", str(ARTICLE), *args)
    assert r.returncode == 2
    assert r.stderr.startswith("kproxy: error: ") and needle in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_bad_manifest_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\n"
        "spec:\n  clusterIP: 10.96.0.1\n  ports:\n  - {name: a, port: 80}\n  - {name: b, port: 70000}\n"
    )
    r = run("trace", "-f", str(bad), "--src", "10.0.0.1", "--dst", "10.96.0.1:80")
    assert r.returncode == 2
    assert r.stderr.strip() == "kproxy: error: Service default/web: spec.ports[1].port: 70000 is not a valid port"
    (tmp_path / "junk.yaml").write_text("kind: [\n")
    r = run("trace", "-f", str(tmp_path / "junk.yaml"), "--src", "10.0.0.1", "--dst", "10.96.0.1:80")
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.startswith("kproxy: error: ")
    r = run("trace", "-f", str(tmp_path / "missing.yaml"), "--src", "10.0.0.1", "--dst", "10.96.0.1:80")
    assert r.returncode == 2 and "Traceback" not in r.stderr



def test_many_problems_are_summarised(tmp_path: Path) -> None:
    # a dump with one systematic problem printed it once per object (84 lines for 03)
    docs = [
        f"apiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: default}}\n"
        f"spec:\n  clusterIP: 10.96.0.{i + 1}\n  ports:\n  - {{name: a, port: 70000}}\n"
        for i in range(25)
    ]
    (tmp_path / "bad.yaml").write_text("---\n".join(docs))
    r = run("rules", "-f", str(tmp_path / "bad.yaml"))
    lines = r.stderr.splitlines()
    assert r.returncode == 2 and len(lines) == 11, r.stderr
    assert lines[0] == "kproxy: error: Service default/s0: spec.ports[0].port: 70000 is not a valid port"
    assert lines[-1] == "kproxy: error: ... and 15 more problems (--all-problems prints every one)"
    r = run("rules", "-f", str(tmp_path / "bad.yaml"), "--all-problems")
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 25
    # warnings the same way: 25 orphan slices
    (tmp_path / "orphans.yaml").write_text("---\n".join(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\naddressType: IPv4\n"
        f"metadata: {{name: o{i}, namespace: default, labels: {{kubernetes.io/service-name: gone}}}}\n"
        "endpoints: []\nports: []\n" for i in range(25)))
    r = run("rules", "-f", str(tmp_path / "orphans.yaml"))
    lines = r.stderr.splitlines()
    assert r.returncode == 0 and len(lines) == 11 and lines[-1].startswith("kproxy: warning: ... and 15 more warnings")


PACKETS = [
    ("100.96.1.5", 40000, "100.68.181.31", 80, "TCP"),
    ("203.0.113.9", 40001, "172.20.40.11", 30379, "TCP"),
    ("203.0.113.9", 40002, "172.20.40.11", 22, "TCP"),
    ("100.96.1.5", 40003, "100.68.181.31", 80, "UDP"),
    ("2001:db8::1", 40004, "2001:db8::2", 80, "TCP"),
]


def _csv(path: Path, gz: bool = False) -> Path:
    text = "src,sport,dst,dport,proto\n" + "".join(",".join(map(str, p)) + "\n" for p in PACKETS)
    if gz:
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


@pytest.mark.parametrize("fmt", ["csv", "csv.gz", "jsonl"])
def test_classify_counts(tmp_path: Path, fmt: str) -> None:
    if fmt == "jsonl":
        f = tmp_path / "p.jsonl"
        f.write_text("".join(json.dumps(dict(zip(["src", "sport", "dst", "dport", "proto"], p, strict=True))) + "\n"
                             for p in PACKETS))
    else:
        f = _csv(tmp_path / f"p.{fmt}", gz=fmt.endswith("gz"))
    r = run("classify", "-f", str(ARTICLE), "--node", "worker-1", "--packets", str(f))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "5 packets"
    assert any(ln.split()[:2] == ["DNAT", "2"] for ln in lines)
    assert any(ln.split()[:2] == ["PASS", "3"] for ln in lines)
    assert any(ln.split()[:2] == ["default/mynginx", "2"] for ln in lines)
    assert any(ln.split()[:2] == ["NodePort", "1"] for ln in lines)


def test_classify_per_packet(tmp_path: Path) -> None:
    f = _csv(tmp_path / "p.csv")
    out = tmp_path / "out.jsonl"
    r = run("classify", "-f", str(ARTICLE), "--node", "worker-1", "--packets", str(f), "--out", str(out))
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["verdict"] for x in rows] == ["DNAT", "DNAT", "PASS", "PASS", "PASS"]
    assert rows[1]["endpoint"] == "100.96.2.2:80" and rows[1]["frontend"] == "NodePort"
    assert rows[4]["src"] == "2001:db8::1"
    r = run("classify", "-f", str(ARTICLE), "--node", "worker-1", "--packets", str(f), "--json")
    assert [json.loads(x)["verdict"] for x in r.stdout.splitlines()] == ["DNAT", "DNAT", "PASS", "PASS", "PASS"]


def test_classify_bad_rows(tmp_path: Path) -> None:
    f = tmp_path / "p.csv"
    f.write_text("src,sport,dst,dport,proto\n10.0.0.1,1,10.0.0.2,80,TCP\n10.0.0.1,1,10.0.0.2,99999,TCP\n")
    r = run("classify", "-f", str(ARTICLE), "--packets", str(f))
    assert r.returncode == 2 and "line 3" in r.stderr and "dport" in r.stderr and "Traceback" not in r.stderr
    f.write_text("a,b\n1,2\n")
    r = run("classify", "-f", str(ARTICLE), "--packets", str(f))
    assert r.returncode == 2 and "header" in r.stderr


def test_classify_streams_in_chunks(tmp_path: Path) -> None:
    """More rows than one chunk: counts add up across chunks."""
    f = tmp_path / "big.csv.gz"
    rows = "".join(f"100.96.1.{i % 200 + 1},{1024 + i % 60000},100.68.181.31,80,TCP\n" for i in range(150_000))
    f.write_bytes(gzip.compress(("src,sport,dst,dport,proto\n" + rows).encode()))
    r = run("classify", "-f", str(ARTICLE), "--packets", str(f))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "150000 packets"
    assert any(ln.split()[:2] == ["DNAT", "150000"] for ln in r.stdout.splitlines())


def test_bench_json_small() -> None:
    r = run("bench", "--services", "50", "--endpoints", "3", "--packets", "2000", "--flows", "500",
            "--min-time", "0.01", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    rates = res["lookups_per_second"]
    assert set(rates) >= {"compiled_batch_track", "python_batch_track", "numpy_batch_stateless",
                          "compiled_per_call", "python_per_call"}
    assert all(v > 0 for v in rates.values())
    assert res["ratios"]["batch_compiled_vs_python"] > 0


def test_bench_bad_argument() -> None:
    r = run("bench", "--services", "0")
    assert r.returncode == 2 and r.stderr.startswith("kproxy: error: --services")
