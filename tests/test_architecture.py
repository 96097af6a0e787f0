"""The house's shape: the import contracts hold, docs/architecture.md draws the contracts' layers,
and the modules the GPU machine runs import neither flwr nor ray."""

from __future__ import annotations

import configparser
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def contract_layers() -> list[str]:
    parser = configparser.ConfigParser()
    parser.read(ROOT / ".importlinter")
    return [line.strip() for line in parser["importlinter:contract:layers"]["layers"].splitlines() if line.strip()]


def documented_layers() -> list[str]:
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = re.search(r"<!-- layers -->\n```text\n(.*?)```", text, flags=re.DOTALL)
    assert block, "docs/architecture.md lost its <!-- layers --> block"
    return [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.split("#")[0].strip()]


def test_the_architecture_page_draws_the_contracted_layers():
    assert documented_layers() == contract_layers()


def test_the_import_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.exists():
        pytest.fail("import-linter is not installed: make install (dev extra) brings it")
    done = subprocess.run(
        [str(lint), "--config", str(ROOT / ".importlinter")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": ""},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]


def test_the_gpu_machines_modules_import_neither_flower_nor_ray():
    code = textwrap.dedent("""
        import importlib, sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("flwr", "ray"):
                    raise ImportError(f"{name} is blocked")
        sys.meta_path.insert(0, Block())
        for name in ("fedmm.models", "fedmm.objectives", "fedmm.training", "fedmm.metrics", "fedmm.facts",
                     "fedmm.config", "fedmm.workspace", "fedmm.strategies.recipes"):
            importlib.import_module(name)
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.stdout.strip() == "ok", done.stderr[-2000:]


def test_every_module_of_the_package_has_a_layer():
    """A new top-level module or package must be placed in the layers (else no rule checks it)."""
    package = ROOT / "fedmm"
    present = {f"fedmm.{p.stem}" for p in package.glob("*.py") if p.stem not in ("__init__", "__main__")}
    present |= {f"fedmm.{p.name}" for p in package.iterdir() if (p / "__init__.py").is_file()}
    layered = {m.strip() for line in contract_layers() for m in line.split("|")}
    assert present - layered == set()


def test_a_module_above_350_lines_says_why_at_its_top():
    import ast

    long = []
    for path in sorted((ROOT / "fedmm").rglob("*.py")):
        text = path.read_text()
        if text.count("\n") > 350:
            doc = ast.get_docstring(ast.parse(text)) or ""
            if "Why one module of this size:" not in doc:
                long.append(str(path.relative_to(ROOT)))
    assert long == []
