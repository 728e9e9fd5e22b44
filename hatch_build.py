"""Build hook: compiles the native CPU kernels (``native_kernels/*.cc``) into a shared library.

The library is loaded with ctypes and registered as XLA FFI targets at run time, so it does
not depend on the Python version: the wheel is tagged ``py3-none-<platform>``. The FFI
headers come from jaxlib (a build requirement). Without a C++ compiler the build goes on
without the library, and jaxplastic uses its XLA implementations (``impl="auto"``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

SOURCES = ["native_kernels/structural.cc"]
LIBRARY = "native_kernels/libjaxplastic_structural.so"


def _include_dir() -> Path:
    import jaxlib

    return Path(jaxlib.__file__).parent / "include"


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


class NativeKernelsHook(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict) -> None:
        root = Path(self.root)
        target = root / LIBRARY
        compiler = _compiler()
        if compiler is None or not sys.platform.startswith(("linux", "darwin")):
            self.app.display_warning(
                "jaxplastic: no C++ compiler found; the native CPU kernels are not built "
                "(the XLA implementations are used instead)"
            )
            return
        command = [
            compiler,
            "-O3",
            "-std=c++17",
            "-shared",
            "-fPIC",
            "-w",  # the FFI headers warn about switch fall-through under -O3
            f"-I{_include_dir()}",
            *(str(root / s) for s in SOURCES),
            "-o",
            str(target),
        ]
        self.app.display_info("jaxplastic: " + " ".join(command))
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            self.app.display_warning(
                "jaxplastic: compiling the native CPU kernels failed; the XLA implementations "
                f"are used instead.\n{result.stderr[-4000:]}"
            )
            return
        if version != "editable":
            build_data["force_include"][str(target)] = LIBRARY
            platform = sysconfig.get_platform().replace("-", "_").replace(".", "_")
            build_data["tag"] = f"py3-none-{platform}"
            build_data["pure_python"] = False
