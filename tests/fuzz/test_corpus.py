"""The fuzz harnesses' saved corpora as tests: every input under ``tests/fuzz/corpus/<harness>/``
through the harness's own ``one_input``, without atheris (tests/fuzz/_common.py). The files
named ``regress-*`` are inputs that once broke the contract (each named after its bug; the
regression test in the module's own test file says more); the others are what fuzzing kept
for coverage (``python -m tests.fuzz.run HARNESS --update``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import HARNESSES, corpus_files, load_harness

CASES = [pytest.param(h, f, id=f"{h}/{f.name}") for h in HARNESSES for f in corpus_files(h)]


@pytest.mark.parametrize(("harness", "path"), CASES)
def test_corpus_input(harness: str, path: Path) -> None:
    load_harness(harness).one_input(path.read_bytes())


def test_every_harness_has_a_corpus() -> None:
    for h in HARNESSES:
        assert corpus_files(h), f"tests/fuzz/corpus/{h} is empty"
        assert (Path(__file__).parent / f"fuzz_{h}.py").is_file()
