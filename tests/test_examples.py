"""The README's main job and the examples run as documented."""

import os
import runpy

import pytest

EXPECTED = {
    "quickstart.py": ["log_prob from the inverse pass agrees: True", "check_bijector on the chain: passed"],
}
EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


@pytest.mark.parametrize("script", sorted(f for f in os.listdir(EXAMPLES) if f.endswith(".py")))
def test_example_runs(script, capsys):
    runpy.run_path(os.path.join(EXAMPLES, script), run_name="__main__")
    out = capsys.readouterr().out
    for phrase in EXPECTED.get(script, ()):
        assert phrase in out
