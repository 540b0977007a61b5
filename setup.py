"""Build the compiled core, ``kproxy_core._engine``, from src/ (metadata: pyproject.toml)."""

import os
import sys

from setuptools import Extension, setup

try:
    from Cython.Build import cythonize
except ImportError:  # pragma: no cover - build isolation installs Cython (pyproject.toml)
    sys.exit(
        "kproxy-core: building kproxy_core._engine needs Cython >= 3.0 "
        "(pip install Cython, or build with pip / python -m build, which install it)"
    )

extra = ["/O2"] if sys.platform == "win32" else ["-O3", "-fno-strict-aliasing"]
link = []
# KPROXY_SANITIZE=address,undefined: a sanitizer build for tools/sanitize.sh (UB aborts, no recovery)
sanitize = os.environ.get("KPROXY_SANITIZE", "").strip()
if sanitize and sys.platform != "win32":
    flags = [f"-fsanitize={sanitize}", "-fno-omit-frame-pointer", "-g", "-O1"]
    if "undefined" in sanitize.split(","):
        flags.append("-fno-sanitize-recover=undefined")
    extra = ["-fno-strict-aliasing", *flags]
    link = flags

extensions = [
    Extension(
        "kproxy_core._engine",
        ["src/_engine.pyx"],
        include_dirs=["src"],
        depends=["src/kp_core.h", "src/kp_core.pxd"],
        extra_compile_args=extra,
        extra_link_args=link,
    )
]

setup(
    ext_modules=cythonize(
        extensions,
        include_path=["src"],
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "initializedcheck": False,
            "cdivision": True,
        },
    )
)
