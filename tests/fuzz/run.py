"""Run a fuzz harness for a while: ``python -m tests.fuzz.run HARNESS --seconds N`` (from the
repository root; ``python tests/fuzz/run.py`` works too).

The harness runs under atheris (libFuzzer) in a subprocess, over a copy of its saved corpus
(``tests/fuzz/corpus/HARNESS``, never written to unless ``--update``), with a per-input
timeout (a hang is a finding) and a memory limit. Prints one line of results: executions,
executions per second, coverage (libFuzzer's ``cov``: Python code edges atheris saw;
``ft``: features), corpus size, findings; exits 1 on any finding, leaving the crashing
input under ``--artifacts``. ``--update`` merges what the run found into the saved corpus,
minimised (``-merge=1``: only inputs that add coverage); ``--merge-only`` just minimises it.
Extra arguments after ``--`` go to libFuzzer (``-- -jobs=2 -workers=2``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
HARNESSES = ("manifests", "engine_api", "dns", "readers")
STAT = re.compile(r"#(\d+)\s+(?:DONE|pulse|NEW|REDUCE|INITED)\s+cov: (\d+) ft: (\d+) corp: (\d+)/(\S+).*?exec/s: (\d+)")


def run(harness: str, seconds: int, artifacts: Path, extra: list[str], update: bool) -> dict[str, object]:
    corpus = HERE / "corpus" / harness
    corpus.mkdir(parents=True, exist_ok=True)
    artifacts.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"kproxy-fuzz-{harness}-") as tmp:
        work = Path(tmp) / "corpus"
        shutil.copytree(corpus, work)
        cmd = [sys.executable, str(HERE / f"fuzz_{harness}.py"), f"-max_total_time={seconds}", "-timeout=20",
               "-rss_limit_mb=4096", "-max_len=4096", "-print_final_stats=1", f"-artifact_prefix={artifacts}/",
               *extra, str(work)]
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        started = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", env=env)
        took = time.monotonic() - started
        log = proc.stdout + proc.stderr
        (artifacts / f"{harness}.log").write_text(log)
        last = STAT.findall(log)
        execs = int(m.group(1)) if (m := re.search(r"stat::number_of_executed_units: (\d+)", log)) else (
            int(last[-1][0]) if last else 0)
        cov, ft = (int(last[-1][1]), int(last[-1][2])) if last else (0, 0)
        crashes = sorted(p.name for p in artifacts.iterdir() if p.name.startswith(("crash-", "timeout-", "oom-",
                                                                                  "leak-", "slow-unit-")))
        if update and proc.returncode == 0:
            merged = Path(tmp) / "merged"
            merged.mkdir()
            subprocess.run([sys.executable, str(HERE / f"fuzz_{harness}.py"), "-merge=1", "-timeout=20",
                            "-rss_limit_mb=4096", str(merged), str(corpus), str(work)],
                           capture_output=True, env=env, check=True)
            _replace(corpus, merged)
    finding = proc.returncode != 0 or bool(crashes)
    result: dict[str, object] = {
        "harness": harness, "seconds": round(took, 1), "executions": execs,
        "exec_per_s": round(execs / took) if took else 0, "cov": cov, "ft": ft,
        "corpus_files": len(list(corpus.iterdir())), "corpus_bytes": sum(p.stat().st_size for p in corpus.iterdir()),
        "findings": len(crashes) or int(finding), "exit": proc.returncode, "artifacts": crashes,
    }
    if finding:
        tail = "\n".join(log.splitlines()[-40:])
        print(f"--- {harness}: FINDING (exit {proc.returncode}); log tail:\n{tail}", file=sys.stderr)
    return result


def _replace(corpus: Path, merged: Path) -> None:
    """The saved corpus becomes the merged one; the regression inputs (``regress-*``, each a
    bug's input, named after it) are kept whether or not they add coverage."""
    kept = {p.read_bytes(): p for p in corpus.glob("regress-*")}
    for dup in list(merged.iterdir()):
        if dup.read_bytes() in kept:
            dup.unlink()
    for p in kept.values():
        shutil.copy(p, merged / p.name)
    shutil.rmtree(corpus)
    shutil.copytree(merged, corpus)


def merge_only(harness: str) -> None:
    corpus = HERE / "corpus" / harness
    with tempfile.TemporaryDirectory() as tmp:
        merged = Path(tmp) / "merged"
        merged.mkdir()
        subprocess.run([sys.executable, str(HERE / f"fuzz_{harness}.py"), "-merge=1", "-timeout=20",
                        "-rss_limit_mb=4096", str(merged), str(corpus)], capture_output=True, check=True)
        _replace(corpus, merged)
    print(f"{harness}: {len(list(corpus.iterdir()))} files after merge")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("harness", choices=(*HARNESSES, "all"))
    ap.add_argument("--seconds", type=int, default=int(os.environ.get("FUZZ_SECONDS", "45")))
    ap.add_argument("--artifacts", type=Path, default=Path(tempfile.gettempdir()) / "kproxy-fuzz-artifacts")
    ap.add_argument("--update", action="store_true", help="merge new coverage into the saved corpus (minimised)")
    ap.add_argument("--merge-only", action="store_true", help="only minimise the saved corpus")
    ap.add_argument("--json", action="store_true", help="print the results as JSON lines")
    ap.add_argument("extra", nargs="*", help="libFuzzer flags (after --)")
    args = ap.parse_args(argv)
    names = HARNESSES if args.harness == "all" else (args.harness,)
    if args.merge_only:
        for name in names:
            merge_only(name)
        return 0
    failed = False
    for name in names:
        r = run(name, args.seconds, args.artifacts, args.extra, args.update)
        failed |= bool(r["findings"])
        if args.json:
            print(json.dumps(r), flush=True)
        else:
            print(f"{name}: {r['executions']:,} executions in {r['seconds']} s ({r['exec_per_s']:,}/s), "
                  f"cov {r['cov']} ft {r['ft']}, corpus {r['corpus_files']} files ({r['corpus_bytes']:,} B), "
                  f"findings {r['findings']}" + (f" -> {args.artifacts}" if r["findings"] else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
