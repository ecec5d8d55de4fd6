"""No module of the package, and no script, imports a private name (``_name``) of a package
module: what modules share is public, documented, and stays importable."""

import ast
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_no_private_name_is_imported_across_modules():
    found = []
    for folder in ("lanczos_hessian", "scripts"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, ast.ImportFrom):
                    continue
                if node.level == 0 and not (node.module or "").startswith("lanczos_hessian"):
                    continue
                found += [f"{path.relative_to(ROOT)}:{node.lineno} {alias.name}"
                          for alias in node.names
                          if alias.name.startswith("_") and not alias.name.startswith("__")]
    assert not found, found
