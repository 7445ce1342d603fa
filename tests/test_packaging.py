"""Issue 18: `pip install llm-chaos-harness` without extras is the harness alone (load generator,
faults, proxy, checks, reports, explore), with no torch or transformers; the reference target
comes with `[target]`. Slow: a fresh venv installs from the package registry (minutes)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*cmd: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True,
                          timeout=900, check=False)


@pytest.mark.slow
def test_a_plain_install_runs_the_harness_without_the_target(tmp_path: Path) -> None:
    source = tmp_path / "src"  # a copy: an in-tree build would write into the checkout
    for name in ("harness", "targets"):
        shutil.copytree(ROOT / name, source / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / "bin"
    install = _run(bin_dir / "python", "-m", "pip", "install", "-q", "-c",
                   ROOT / "constraints.txt", source, cwd=tmp_path)
    assert install.returncode == 0, install.stderr[-3000:]
    for missing in ("torch", "transformers", "fastapi", "aiohttp"):
        probe = _run(bin_dir / "python", "-c", f"import {missing}", cwd=tmp_path)
        assert probe.returncode != 0, f"{missing} came with a plain install"

    for command in (("explore", "--help"), ("run", "--help"), ("check", "--help"),
                    ("proxy", "--help"), ("faults", "--help")):
        out = _run(bin_dir / "llm-chaos", *command, cwd=tmp_path)
        assert out.returncode == 0, (command, out.stderr[-2000:])
        assert out.stdout.startswith(f"usage: llm-chaos {command[0]}"), out.stdout[:200]
    locust = _run(bin_dir / "locust", "-f", ROOT / "scenarios", "--help", cwd=tmp_path)
    assert locust.returncode == 0, locust.stderr[-2000:]
    assert "--max-tokens" in locust.stdout and "--dataset" in locust.stdout

    serve = _run(bin_dir / "llm-chaos", "serve", "--help", cwd=tmp_path)
    assert serve.returncode == 2
    assert "pip install 'llm-chaos-harness[target]'" in serve.stderr, serve.stderr


def test_target_usage_lines_say_llm_chaos() -> None:
    for command in ("serve", "worker"):
        out = _run(sys.executable, "-m", "targets.reference", command, "--help", cwd=ROOT)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.startswith(f"usage: llm-chaos {command}"), out.stdout[:200]
