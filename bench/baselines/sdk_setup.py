"""The ``sdk`` baseline's Node side: where it lives, whether Node can run it, and ``npm ci`` on demand.

``bench/baselines/sdk/`` holds ``server.mjs`` (the bridge: the OpenAI Agents SDK's
``TwilioRealtimeTransportLayer`` behind one HTTP port), ``package.json`` and ``package-lock.json``
(exact versions of ``@openai/agents``, ``@openai/agents-extensions``, ``ws`` and everything they pull
in). The packages are installed from the npm registry with ``npm ci`` into
``bench/baselines/sdk/node_modules`` (git-ignored) the first time the baseline runs, and again
whenever ``package-lock.json`` changes (a stamp in ``node_modules`` holds the lock's SHA-256).
"""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

SDK_DIR = Path(__file__).resolve().parent / "sdk"
SERVER = SDK_DIR / "server.mjs"
LOCK = SDK_DIR / "package-lock.json"
STAMP = SDK_DIR / "node_modules" / ".bench-lock-sha256"
NODE_MAJOR_MIN = 20
PINNED = ("@openai/agents", "@openai/agents-extensions", "@openai/agents-realtime", "ws")


def node_version() -> str | None:
    """``node --version`` (e.g. ``v20.20.2``), or None without a working node."""
    node = shutil.which("node")
    if node is None:
        return None
    try:
        out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def unavailable() -> str | None:
    """Why the sdk baseline cannot run on this machine (None: it can)."""
    version = node_version()
    if version is None:
        return "node is not installed (the sdk baseline needs Node.js >= 20 and npm)"
    try:
        major = int(version.lstrip("v").split(".")[0])
    except ValueError:
        return f"cannot read node's version ({version!r})"
    if major < NODE_MAJOR_MIN:
        return f"node {version} is too old (the sdk baseline needs Node.js >= {NODE_MAJOR_MIN})"
    if shutil.which("npm") is None and not installed():
        return "npm is not installed (needed once, to install the sdk baseline's packages)"
    return None


def _lock_digest() -> str:
    return hashlib.sha256(LOCK.read_bytes()).hexdigest()


def installed() -> bool:
    """node_modules was installed by ``npm ci`` from the current package-lock.json."""
    try:
        return STAMP.read_text(encoding="ascii").strip() == _lock_digest()
    except OSError:
        return False


def ensure_installed(progress: Callable[[str], None]) -> None:
    """``npm ci`` in bench/baselines/sdk unless node_modules already matches the lock; npm's output
    is passed to ``progress`` line by line. Raises RuntimeError if npm fails."""
    if installed():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is not installed: cannot install the sdk baseline's packages")
    progress(f"[sdk] installing the SDK baseline's pinned packages: npm ci in {SDK_DIR} (first use only) ...")
    proc = subprocess.Popen([npm, "ci", "--no-audit", "--no-fund", "--loglevel=warn"], cwd=SDK_DIR,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.strip():
            progress(f"[sdk] npm: {line.rstrip()}")
    if proc.wait() != 0:
        raise RuntimeError(f"npm ci in {SDK_DIR} failed (exit {proc.returncode})")
    STAMP.write_text(_lock_digest() + "\n", encoding="ascii")
    progress(f"[sdk] installed: {describe()}")


def versions() -> dict[str, str]:
    """Installed versions of the packages that make up the bridge (from the lock file)."""
    try:
        packages = json.loads(LOCK.read_text(encoding="utf-8"))["packages"]
    except (OSError, ValueError, KeyError):
        return {}
    return {name: packages[f"node_modules/{name}"]["version"] for name in PINNED
            if f"node_modules/{name}" in packages}


def describe() -> str:
    """One line: what the sdk baseline runs."""
    pkgs = ", ".join(f"{name} {version}" for name, version in versions().items())
    return f"bench/baselines/sdk/server.mjs (Node {node_version() or '?'}; {pkgs})"
