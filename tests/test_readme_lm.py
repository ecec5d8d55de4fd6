"""The README's language-model snippets run as they are."""

import re
from pathlib import Path

import pytest

#: End-to-end language-model runs (Hugging Face import, whole commands): the slow tier.
pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[1] / "README.md"


def snippets():
    text = README.read_text()
    section = text.split("## Language models", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_section_has_a_hugging_face_and_a_plain_pytorch_snippet():
    found = snippets()
    assert len(found) == 2 and "transformers" in found[0] and "TokenLoss()" in found[1]


@pytest.mark.parametrize("index", [0, 1])
def test_a_snippet_runs(index, capsys):
    code = snippets()[index]
    if "transformers" in code:
        pytest.importorskip("transformers", reason="the Hugging Face extra is not installed")
    exec(compile(code, f"README language-model snippet {index}", "exec"), {"__name__": "x"})
    assert capsys.readouterr().out.strip()
