"""The console script starts without torch: help and usage errors in a fraction of a second."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
HEAVY = ("torch", "timm")


def console_script(*args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run the ``contsup`` entry point that pyproject.toml names, as the installed script
    would, with ``-X importtime``; its result and the top-level packages it imported."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    module, function = re.search(r'^contsup = "([\w.]+):(\w+)"$', pyproject, re.M).groups()
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"from {module} import {function}; {function}()"]
        + list(args),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    imported = {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in proc.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    return proc, imported


@pytest.mark.parametrize(
    "args, code, says",
    [
        (["--help"], 0, "Greedy local learning"),
        (["train", "--help"], 0, "--recipe"),
        (["export", "--help"], 0, "--normalized-input"),
        (["split"], 2, "Missing argument"),
        (["train", "--epochs", "many"], 2, "Invalid value for '--epochs'"),
    ],
)
def test_help_and_usage_errors_do_not_import_torch(args, code, says):
    proc, imported = console_script(*args)
    assert proc.returncode == code, proc.stderr[-2000:]
    assert says in proc.stdout + proc.stderr
    assert "contsup" in imported and not imported & set(HEAVY), sorted(imported & set(HEAVY))


def test_a_command_runs_with_contsup_imported_and_its_models_registered():
    proc, imported = console_script("models", "resnet11")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["resnet110"]  # registered in timm by `import contsup`
    assert set(HEAVY) <= imported
    error, _ = console_script("split", "nope_net")
    assert error.returncode == 2 and "unknown model 'nope_net'" in error.stderr
    assert "Traceback" not in error.stderr
