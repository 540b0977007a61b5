"""What the fuzz harnesses share: a byte-stream provider, the error contract, the libFuzzer entry.

Each harness (``fuzz_*.py`` beside this file) defines ``setup()`` (imports and fixed state,
once per process) and ``one_input(data: bytes)`` (one input; raises :class:`Finding`, or
lets an unexpected exception escape, when the library breaks its contract). The same
function runs under atheris (``python tests/fuzz/fuzz_X.py [libFuzzer flags] CORPUS``) and
under pytest over the saved corpus (``tests/fuzz/test_corpus.py``), which needs no atheris:
:class:`Provider` is ours, not atheris' FuzzedDataProvider, so an input means the same
thing in both.
"""

from __future__ import annotations

import os
import struct
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
CORPUS = HERE / "corpus"
for _p in (str(TESTS), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

# plugins installed in the venv must not change what is fuzzed (as tests/conftest.py)
os.environ.setdefault("KPROXY_DISABLE_PLUGIN_AUTOLOAD", "1")

T = TypeVar("T")


class Finding(AssertionError):
    """The library broke its contract on this input (not an exception it documents)."""


class Provider:
    """Values drawn from the front of the input; past its end every draw is the smallest
    value (0, False, b"", the first choice), so any input is a complete program."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int) -> bytes:
        got = self.data[self.pos:self.pos + n]
        self.pos += len(got)
        return got

    def byte(self) -> int:
        b = self.take(1)
        return b[0] if b else 0

    def bool(self) -> bool:
        return bool(self.byte() & 1)

    def int(self, lo: int, hi: int) -> int:
        """An int in lo..hi (inclusive)."""
        span = hi - lo
        if span <= 0:
            return lo
        nbytes = (span.bit_length() + 7) // 8
        return lo + int.from_bytes(self.take(nbytes).ljust(nbytes, b"\0"), "little") % (span + 1)

    def choice(self, seq: Sequence[T]) -> T:
        return seq[self.int(0, len(seq) - 1)]

    def float(self) -> float:
        """Any double, NaN and infinities included."""
        raw = self.take(8).ljust(8, b"\0")
        return float(struct.unpack("<d", raw)[0])

    def bytes(self, most: int) -> bytes:
        return self.take(self.int(0, most))

    def text(self, most: int) -> str:
        return self.bytes(most).decode("utf-8", "replace")

    def rest(self) -> bytes:
        return self.take(self.remaining)


def expect(call: Callable[[], T], allowed: tuple[type[BaseException], ...], what: str) -> T | None:
    """``call()``; None when it raises one of ``allowed`` (checked to be one line naming
    something), a :class:`Finding` for any other exception."""
    try:
        return call()
    except allowed as e:
        text = str(e)
        if not text.strip():
            raise Finding(f"{what}: {type(e).__name__} with an empty message") from e
        return None
    except Finding:
        raise
    except RecursionError as e:
        raise Finding(f"{what}: RecursionError escaped") from e
    except Exception as e:
        raise Finding(f"{what}: undocumented {type(e).__name__}: {e}") from e


def libfuzzer_main(setup: Callable[[], None], one_input: Callable[[bytes], None], include: Sequence[str]) -> None:
    """``python fuzz_X.py [libFuzzer flags] [CORPUS...]``: setup with ``include``'s modules
    instrumented for coverage, then fuzz."""
    import atheris

    with atheris.instrument_imports(include=list(include)):
        setup()
    atheris.Setup([_self_command(), *sys.argv[1:]], one_input)
    atheris.Fuzz()


def _self_command() -> str:
    """An executable that runs this harness with this Python: libFuzzer starts its argv[0]
    again for -merge, -fork and -jobs (the .py file itself is not executable)."""
    import stat
    import tempfile

    script = Path(tempfile.gettempdir()) / f"kproxy-fuzz-{Path(sys.argv[0]).stem}-{os.getuid()}.sh"
    text = f'#!/bin/sh\nexec "{sys.executable}" "{Path(sys.argv[0]).resolve()}" "$@"\n'
    if not script.exists() or script.read_text() != text:
        tmp = script.with_suffix(f".{os.getpid()}")
        tmp.write_text(text)
        tmp.chmod(stat.S_IRWXU)
        tmp.replace(script)
    return str(script)


def corpus_files(harness: str) -> list[Path]:
    d = CORPUS / harness
    return sorted(p for p in d.iterdir() if p.is_file()) if d.is_dir() else []


def load_harness(name: str) -> Any:
    """The module ``fuzz_<name>.py`` (by path: tests/ is not a package)."""
    import importlib.util

    path = HERE / f"fuzz_{name}.py"
    spec = importlib.util.spec_from_file_location(f"kproxy_fuzz_{name}", path)
    assert spec is not None and spec.loader is not None
    mod = sys.modules.get(spec.name)
    if mod is None:
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
    return mod


HARNESSES = ("manifests", "engine_api", "dns", "readers")
