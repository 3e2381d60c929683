"""The layout's two size rules (issue 19): no module of the project's own packages is over 450 lines, and no block of
six or more lines is written twice inside them. A long module is a reader's afternoon; a repeated block is a fact
that two places must keep equal with nothing holding them together.

Repeated blocks are compared as code text, each line stripped of its indentation, blank lines left out, so a block
moved into a function or a class still counts. Docstrings and comments are prose (an `Args:` section says the same
of the same parameter in two places) and do not count. Imports do: six equal import lines are a sign that two
modules do one job.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

from tests.test_import_cycles import PACKAGES, ROOT

MAX_LINES = 450
BLOCK = 6


def _sources(root: Path) -> list[Path]:
    return sorted(p for package in PACKAGES for p in (root / package).rglob("*.py") if "__pycache__" not in p.parts)


def _code_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, stripped text) of each line of code: no blank line, comment or docstring."""
    text = path.read_text()
    prose: set[int] = set()
    for node in ast.walk(ast.parse(text, str(path))):
        if (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
                and node.end_lineno is not None):
            prose.update(range(node.lineno, node.end_lineno + 1))
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1)
            if line.strip() and not line.strip().startswith("#") and n not in prose]


def repeated_blocks(paths: list[Path], base: Path, block: int = BLOCK) -> list[str]:
    """Each run of `block` non-blank lines that stands in more than one place, as 'a.py:L ~ b.py:M' (first lines)."""
    places: dict[tuple[str, ...], list[tuple[str, int]]] = defaultdict(list)
    for path in paths:
        lines = _code_lines(path)
        for i in range(len(lines) - block + 1):
            window = tuple(text for _, text in lines[i:i + block])
            places[window].append((path.relative_to(base).as_posix(), lines[i][0]))
    found = []
    for where in places.values():
        first = where[0]
        # Overlapping windows of one file (e.g. seven equal lines in a row) are one place, not a repeat.
        others = [w for w in where[1:] if w[0] != first[0] or w[1] - first[1] >= block]
        found += [f"{first[0]}:{first[1]} ~ {path}:{line}" for path, line in others]
    return found


def test_no_module_is_over_450_lines() -> None:
    sizes = {p.relative_to(ROOT).as_posix(): len(p.read_text().splitlines()) for p in _sources(ROOT)}
    assert len(sizes) > 80  # the packages were found
    assert {path: n for path, n in sizes.items() if n > MAX_LINES} == {}


def test_no_block_of_six_lines_is_written_twice() -> None:
    assert repeated_blocks(_sources(ROOT), ROOT) == []


def test_a_block_written_twice_is_found(tmp_path: Path) -> None:
    body = "\n".join(f"    value_{i} = compute({i})" for i in range(BLOCK))
    (tmp_path / "a.py").write_text(f'def first():\n    """Prose."""\n{body}\n    return 1\n')
    (tmp_path / "b.py").write_text(f"class Second:\n    def run(self):\n\n{body.replace('    ', '        ')}\n")
    (tmp_path / "c.py").write_text("\n".join(f"value_{i} = compute({i})" for i in range(BLOCK - 1)) + "\n")
    (tmp_path / "d.py").write_text('"""\n' + body + '\n"""\n' + "\n".join(f"# {i}" for i in range(BLOCK)) + "\n")
    found = repeated_blocks(sorted(tmp_path.glob("*.py")), tmp_path)
    # Indentation and blank lines do not hide a block; five lines are not one; a docstring or comment is not code.
    assert found == ["a.py:3 ~ b.py:4"]
