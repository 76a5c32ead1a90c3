"""The package layout: nothing installed as a generic top-level module, no import cycle, the
user-facing environment example runs."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_only_rl_router_is_installed():
    files = importlib.metadata.files("rl-router") or []
    top = {f.parts[0] for f in files if f.suffix == ".py" or f.name == "__init__.py"}
    assert "envs" not in top
    # an editable install maps the package by name: only rl_router is importable from it
    p = subprocess.run([sys.executable, "-c", "import envs"], cwd="/", capture_output=True, text=True)
    assert p.returncode != 0 and "No module named 'envs'" in p.stderr


def test_no_import_cycle_between_packages():
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "import_graph.py")], capture_output=True, text=True)
    assert p.returncode == 0 and "cycles: none" in p.stdout, p.stdout
    # the documented graph is the current one
    assert p.stdout.split("cycles:")[0].strip() in (ROOT / "docs" / "architecture.md").read_text()


def test_the_custom_env_example_runs():
    p = subprocess.run([sys.executable, str(ROOT / "envs" / "custom_env.py")], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-2000:]
    lines = dict(line.split(": ", 1) for line in p.stdout.strip().splitlines())
    assert set(lines) == {"always-mixtral-8x7b", "always-gpt-4-1106"} and all("format errors 0%" in v for v in lines.values())
