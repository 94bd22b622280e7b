"""The import layering holds: ``lint-imports`` run for real (contracts in pyproject.toml).

ui > statepipe > control_plane > executors > statepipe_api | core_rs, with
statepipe reaching the server side only through control_plane.embed and the
executors never touching the database. The second test checks that the check
bites: a copy of the packages with one bad import added fails it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
PACKAGES = CONFIG["root_packages"]
#: Contract id -> the name lint-imports reports it by.
CONTRACTS = {contract["id"]: contract["name"] for contract in CONFIG["contracts"]}
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(cwd: Path) -> tuple[int, str]:
    """lint-imports' exit status and its report, with lines unwrapped."""
    if not LINT_IMPORTS.exists():
        pytest.fail(f"{LINT_IMPORTS} is missing: pip install -e '.[dev]' (import-linter)")
    result = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return result.returncode, " ".join((result.stdout + result.stderr).split())


def _all_but_sources(directory: str, names: list[str]) -> list[str]:
    """What copytree leaves out: all but the .py files and the folders holding them."""
    here = Path(directory)
    skipped = ("__pycache__", "src", "target", "examples")
    return [n for n in names if n in skipped or not (n.endswith(".py") or (here / n).is_dir())]


def test_the_import_contracts_hold() -> None:
    code, report = lint_imports(ROOT)
    assert code == 0, report
    for name in CONTRACTS.values():
        assert f"{name} KEPT" in report, report
    assert f"Contracts: {len(CONTRACTS)} kept, 0 broken." in report, report


@pytest.mark.parametrize(
    ("module", "statement", "broken"),
    [
        # Upwards, and lazily (inside a function): it counts all the same.
        ("control_plane/__init__.py", "import statepipe.client", "layers"),
        ("executors/__init__.py", "import control_plane", "layers"),
        # The two bottom layers are independent of each other.
        ("core_rs/__init__.py", "import statepipe_api.lifecycle", "layers"),
        # The CLI past its door into the server side.
        ("statepipe/cli.py", "from control_plane.server import ServerConfig", "embedding"),
        ("statepipe/_local.py", "import executors.runners", "embedding"),
        ("ui/__init__.py", "import control_plane.embed", "embedding"),
        ("executors/__init__.py", "import psycopg", "executors-no-database"),
    ],
)
def test_a_new_bad_import_breaks_the_check(
    tmp_path: Path, module: str, statement: str, broken: str
) -> None:
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=_all_but_sources)
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n\ndef _probe() -> None:\n    {statement}\n")
    code, report = lint_imports(tmp_path)
    assert code == 1, report
    assert f"{CONTRACTS[broken]} BROKEN" in report, report
    assert f"Contracts: {len(CONTRACTS) - 1} kept, 1 broken." in report, report
