"""Shared by the benches in bench/.

docs/benchmarks.md is shared by all benches: each one owns a section between `<!-- bench:NAME -->` and
`<!-- /bench:NAME -->` and rewrites only that (`update_section`); everything else in the file is kept as
it is. A bench's first run appends its section. `environment_lines` gives the common footer: date,
machine, parallax build and library versions.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import shutil
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PARALLAX_BIN = Path(os.environ.get("PARALLAX_BIN", REPO / "target" / "release" / "parallax"))

HEADER = """# Benchmarks

Measured side by side on the machine named in each section. Each section is written by a script in
`bench/` (run them all with `scripts/bench.sh`); text outside the `<!-- bench:... -->` markers is kept.
"""


def publish(body: str, name: str, path: Path, write: bool = True) -> None:
    """Print a bench's section and, when `write`, put it into `path` (see `update_section`)."""
    print(body)
    if write:
        update_section(path, name, body)
        print(f"\nwrote section '{name}' of {path}", file=sys.stderr)


def update_section(path: Path, name: str, body: str) -> None:
    begin, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{begin}\n{body.strip()}\n{end}"
    text = path.read_text() if path.exists() else HEADER
    start = text.find(begin)
    if start >= 0:
        stop = text.find(end, start)
        if stop < 0:
            raise ValueError(f"{path}: '{begin}' without '{end}'")
        text = text[:start] + block + text[stop + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def environment_lines(extra: dict[str, str] | None = None) -> list[str]:
    """Markdown bullet lines saying when, where and with what a bench ran. `extra` adds
    name → version pairs (e.g. the library compared against)."""
    import zmq  # every bench talks ZMQ; imported here so update_section stays dependency-free

    versions = {"ipykernel": _version("ipykernel"), "jupyter_client": _version("jupyter_client")}
    versions.update(extra or {})
    libs = ", ".join(f"{name} {ver}" for name, ver in versions.items())
    return [
        f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {os.cpu_count()} × {_cpu_model()}, {platform.system()} {platform.release()} "
        "(shared; figures are noisy)",
        f"- parallax: {_parallax_version()} (revision {_git_revision()})",
        f"- Python {platform.python_version()}, {libs}, pyzmq {zmq.__version__} (libzmq {zmq.zmq_version()})",
    ]


def _version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _parallax_version() -> str:
    try:
        out = subprocess.run([str(PARALLAX_BIN), "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def _git_revision() -> str:
    if not shutil.which("git"):
        return "unknown"
    out = subprocess.run(
        ["git", "-C", str(REPO), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip() or "no commits yet"
