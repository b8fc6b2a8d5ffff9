"""The package metadata: the licence file matches the declared licence, every imported distribution is
declared (with the bound the code needs), and the wheel carries ``py.typed``. CI's ``.ci/package_smoke_test``
builds the wheel and runs it from a fresh environment."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
tomllib = pytest.importorskip("tomllib") if sys.version_info >= (3, 11) else pytest.importorskip("tomli")


@pytest.fixture(scope="module")
def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _requirement_names(requirements: list[str]) -> dict[str, str]:
    """Normalised distribution name -> its requirement string."""
    names = {}
    for requirement in requirements:
        name = re.match(r"[A-Za-z0-9_.-]+", requirement).group(0)
        names[re.sub(r"[-_.]+", "-", name).lower()] = requirement
    return names


def _imported_top_level_modules() -> set[str]:
    modules = set()
    for folder in ("nnunet_topkdice", "dataset_conversion"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    modules.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules.add(node.module.split(".")[0])
    return modules - set(sys.stdlib_module_names) - {"nnunet_topkdice", "dataset_conversion"}


def test_licence_file_is_the_declared_licence(project: dict) -> None:
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert text.split()[:5] == ["Apache", "License", "Version", "2.0,", "January"]
    assert "END OF TERMS AND CONDITIONS" in text and len(text.splitlines()) == 201  # the full text


def test_every_imported_distribution_is_declared(project: dict) -> None:
    declared = _requirement_names(project["dependencies"])
    for extra in ("monai", "stats"):  # imported where they are used, with a message naming the extra
        declared.update(_requirement_names(project["optional-dependencies"][extra]))
    distributions = importlib.metadata.packages_distributions()
    imported = {re.sub(r"[-_.]+", "-", distributions[m][0]).lower() for m in _imported_top_level_modules()}
    assert imported <= set(declared), f"imported but not declared: {sorted(imported - set(declared))}"
    assert {"batchgenerators", "batchgeneratorsv2", "matplotlib", "nnunetv2"} <= imported


def test_bounds_the_code_needs(project: dict) -> None:
    declared = _requirement_names(project["dependencies"])
    assert declared["nnunetv2"] == "nnunetv2>=2.8,<2.9"
    assert declared["matplotlib"] == "matplotlib>=3.7"  # plots.py: fig.legend(loc="outside lower center")
    assert importlib.metadata.version("nnunetv2").startswith("2.8.")  # the range the tests cover
    extras = project["optional-dependencies"]
    assert not any(r.startswith("ruff") for r in extras["test"]) and any(r.startswith("ruff") for r in extras["dev"])


def test_wheel_has_py_typed() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert (ROOT / "nnunet_topkdice" / "py.typed").is_file()
    assert config["package-data"]["nnunet_topkdice"] == ["py.typed"]
