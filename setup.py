"""Build the compiled core, ``kproxy_core._engine``, from src/ (metadata: pyproject.toml)."""

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

extensions = [
    Extension(
        "kproxy_core._engine",
        ["src/_engine.pyx"],
        include_dirs=["src"],
        depends=["src/kp_core.h", "src/kp_core.pxd"],
        extra_compile_args=extra,
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
