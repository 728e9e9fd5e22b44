"""Runs the README's Python examples (the blocks after a `<!-- doctest -->` marker), in order,
in one namespace, so the documentation stays true."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks():
    text = README.read_text()
    return re.findall(r"<!-- doctest -->\s*```python\n(.*?)```", text, flags=re.DOTALL)


@pytest.mark.standard_promotion
def test_readme_examples_run(capsys):
    blocks = _blocks()
    assert len(blocks) >= 4
    namespace: dict = {}
    for i, block in enumerate(blocks):
        try:
            exec(compile(block, f"README.md[block {i}]", "exec"), namespace)
        except Exception as exc:  # pragma: no cover - the message is the point
            raise AssertionError(f"README block {i} failed:\n{block}") from exc
