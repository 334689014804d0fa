"""The documentation: its code runs, its API page covers every public name, and Sphinx builds it.

Every ``.. code-block:: python`` and ``.. plot::`` block of the executed pages runs in order, one
fresh namespace per page, with matplotlib's Agg backend; blocks in other languages (``bash``)
and plain ``::`` literal blocks are shown, not run.
"""

import importlib
import inspect
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
GUIDE_PAGES = sorted(p.relative_to(DOCS).as_posix() for p in (DOCS / "guide").glob("*.rst") if p.name != "index.rst")
EXECUTED_PAGES = ["getting_started.rst", "conventions.rst"] + GUIDE_PAGES
# Pages whose examples train for several seconds; `pytest -m "slow or not slow"` runs them.
SLOW_PAGES = {"guide/text_flow.rst"}
# Pages that need optional packages, skipped without them.
NEEDS = {"guide/scale.rst": ("dask.array", "distributed", "zarr")}

_DIRECTIVE = re.compile(r"^(?P<indent>\s*)\.\. (?:code-block:: python|plot::)\s*$")


def code_blocks(text):
    """``(line_number, source)`` of every executable block of an reST page, in order."""
    lines = text.splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        match = _DIRECTIVE.match(lines[i])
        if not match:
            i += 1
            continue
        indent = len(match.group("indent"))
        i += 1
        # directive options (":context: reset") come first, then a blank line, then the body
        while i < len(lines) and lines[i].strip().startswith(":") and len(lines[i]) - len(lines[i].lstrip()) > indent:
            i += 1
        while i < len(lines) and not lines[i].strip():
            i += 1
        start = i
        while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
            i += 1
        body = textwrap.dedent("\n".join(lines[start:i])).strip("\n")
        if body and start > 0 and len(lines[start]) - len(lines[start].lstrip()) > indent:
            blocks.append((start + 1, body + "\n"))
    return blocks


def test_code_blocks_are_found():
    text = "Title\n\n.. code-block:: python\n\n   x = 1\n\n   y = x\n\nText.\n\n" \
           ".. plot::\n   :context: close-figs\n\n   z = y\n\n.. code-block:: bash\n\n   ls\n"
    assert code_blocks(text) == [(5, "x = 1\n\ny = x\n"), (14, "z = y\n")]


@pytest.fixture
def agg_backend():
    matplotlib = pytest.importorskip("matplotlib", reason="the guide's figures need matplotlib (the plot extra)")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    yield
    plt.close("all")


PAGE_PARAMS = [pytest.param(page, marks=[pytest.mark.slow] if page in SLOW_PAGES else [], id=page)
               for page in EXECUTED_PAGES]


@pytest.mark.parametrize("page", PAGE_PARAMS)
def test_page_code_runs(page, agg_backend, capsys):
    for module in NEEDS.get(page, ()):
        pytest.importorskip(module, reason=f"{page} needs {module} (the dask extra)")
    path = DOCS / page
    blocks = code_blocks(path.read_text(encoding="utf-8"))
    if page.startswith("guide/") or page == "getting_started.rst":
        assert blocks, f"{page} has no executable code block"
    namespace = {"__name__": f"docs_{Path(page).stem}"}
    for lineno, source in blocks:
        # padded so that a traceback's line numbers are those of the .rst file
        exec(compile("\n" * (lineno - 1) + source, str(path), "exec"), namespace)


def test_getting_started_quotes_the_readme_commands():
    readme = (DOCS.parent / "README.md").read_text(encoding="utf-8")
    commands = [line.strip() for line in readme.splitlines() if line.startswith("    python")]
    assert len(commands) == 2, commands
    page = (DOCS / "getting_started.rst").read_text(encoding="utf-8")
    for command in commands:
        assert f"   {command}\n" in page, f"getting_started.rst does not quote the README's {command!r}"


def test_every_guide_page_is_executed():
    assert {"bijectors_and_chains", "realnvp", "affine_prelu", "text_flow", "flow_objects"} <= \
        {Path(p).stem for p in GUIDE_PAGES}


# ---------------------------------------------------------------- the API page
MODULES = ["bijectors", "distributions", "flows", "train", "nn", "datasets", "testing", "plot"]


def public_names(module):
    """``__all__``, or else the functions and classes the module defines without a leading underscore."""
    if hasattr(module, "__all__"):
        return list(module.__all__)
    return [name for name, obj in vars(module).items()
            if not name.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj))
            and obj.__module__ == module.__name__]


@pytest.mark.parametrize("name", MODULES)
def test_api_page_lists_every_public_name(name):
    module = importlib.import_module(f"nflow_np.{name}")
    api = (DOCS / "api.rst").read_text(encoding="utf-8")
    section = api.split(f".. currentmodule:: nflow_np.{name}\n", 1)
    assert len(section) == 2, f"api.rst has no section for nflow_np.{name}"
    table = section[1].split(".. automodule::", 1)[0]
    listed = set(re.findall(r"^   (\w+)\s*$", table, flags=re.MULTILINE))
    missing = sorted(set(public_names(module)) - listed)
    assert not missing, f"api.rst does not list nflow_np.{name}: {missing}"


# ---------------------------------------------------------------- the Sphinx build
@pytest.mark.slow
def test_sphinx_build_has_no_warnings(tmp_path):
    pytest.importorskip("sphinx", reason="Sphinx is not installed (pip install '.[test]' or '.[docs]')")
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(DOCS), str(tmp_path / "html")],
        capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"sphinx-build failed:\n{result.stdout}\n{result.stderr}"
    assert (tmp_path / "html" / "index.html").exists()
