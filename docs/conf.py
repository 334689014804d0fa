"""Sphinx configuration for the nflow_np documentation.

Build with ``sphinx-build -W -b html docs docs/_build/html`` (warnings are errors).
"""

import importlib
import inspect
import os
import re
import sys

from docutils import nodes
from docutils.parsers.rst import Directive
from docutils.parsers.rst.states import RSTStateMachine, state_classes
from docutils.utils import new_document
from sphinx.ext import autosummary
from sphinx.util import logging
from sphinx.util.docutils import NullReporter

# Document this checkout, installed or not.
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

import nflow_np  # noqa: E402

project = "nflow_np"
author = "the nflow_np developers"
copyright = "the nflow_np developers"
release = nflow_np.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "matplotlib.sphinxext.plot_directive",
]

exclude_patterns = ["_build"]
html_theme = "alabaster"
html_static_path = []
# Cross-references to NumPy/matplotlib types in docstrings are plain text: no intersphinx (the
# build must work offline), so a nitpicky build would flag every `ndarray`.
nitpicky = False

autodoc_member_order = "bysource"
autodoc_typehints = "none"   # the docstrings' Parameters sections carry the types
autosummary_generate = False   # api.rst documents everything in place; no stub pages

# numpydoc's member tables would need one autosummary stub page per method; the API page lists
# methods through autodoc instead.
numpydoc_show_class_members = False
numpydoc_show_inherited_class_members = False
numpydoc_class_members_toctree = False
numpydoc_validation_checks = set()

# Figures of the user guide: the ``.. plot::`` blocks run at build time (tests/test_docs.py runs
# the same code without Sphinx).
plot_include_source = True
plot_html_show_source_link = False
plot_html_show_formats = False
plot_formats = [("png", 90)]
plot_rcparams = {"figure.dpi": 90}
plot_apply_rcparams = True
# The guide's code imports what it uses, as the tests run it; no hidden preamble.
plot_pre_code = ""

# The top-level names other parts of the package provide: these, plus any other non-module name in
# ``nflow_np.__all__``. The API page documents those that import and lists the rest, so the reference
# builds while they are being written.
EXPECTED_TOP_LEVEL = ["FlowDensity", "save", "load", "set_backend", "get_backend", "backend"]
DOCUMENTED_ELSEWHERE = {"TransformedDistribution", "__version__"}


def _top_level_names():
    names = list(EXPECTED_TOP_LEVEL)
    for name in getattr(nflow_np, "__all__", []):
        obj = getattr(nflow_np, name, None)
        if name not in names and name not in DOCUMENTED_ELSEWHERE and not inspect.ismodule(obj):
            names.append(name)
    return names


logger = logging.getLogger(__name__)


class TopLevelAPI(Directive):
    """``.. nflow-top-level::``: autodoc entries for the top-level names that import, a note for the rest."""

    has_content = False

    def run(self):
        package = importlib.import_module("nflow_np")
        lines, missing = [], []
        for name in _top_level_names():
            obj = getattr(package, name, None)
            if obj is None:
                missing.append(name)
                continue
            if inspect.isclass(obj):
                kind = "autoclass"
            elif inspect.ismodule(obj):
                kind = "automodule"
            elif callable(obj):
                kind = "autofunction"
            else:
                kind = "autodata"
            target = obj.__name__ if kind == "automodule" else f"nflow_np.{name}"
            lines += [f".. {kind}:: {target}", "   :members:" if kind != "autofunction" else "", ""]
        if missing:
            logger.info("nflow_np top-level names not importable in this build: %s", ", ".join(missing))
            listed = ", ".join(f"``nflow_np.{name}``" for name in missing)
            lines += [".. note::", "", f"   Not available in this build of the package: {listed}.", ""]
        source, _ = self.state_machine.get_source_and_line(self.lineno)
        self.state_machine.insert_input(lines, source)
        return []


# ---- docstring fixes that belong to the build, not to the docstrings

_BACKQUOTED = re.compile(r"(``.*?``|`[^`]*`)")
# reST reads |text| as a substitution reference; in a docstring it is an absolute value or a norm.
_BARS = re.compile(r"(?<!\\)\|(?=\S)([^|]*?\S)\|")


def _escape_bars(line):
    parts = _BACKQUOTED.split(line)
    for i in range(0, len(parts), 2):   # even items lie outside backquotes
        parts[i] = _BARS.sub(r"\\|\1\\|", parts[i])
    return "".join(parts)


def _process_docstring(app, what, name, obj, options, lines):
    """Drop a builtin's docstring inherited by a module constant; escape |x| outside literals."""
    inherited = type(obj).__doc__
    if what in ("data", "attribute") and inherited and "\n".join(lines).strip() == inspect.cleandoc(inherited):
        lines[:] = []
        return
    lines[:] = [line if line.lstrip().startswith((">>>", "...")) else _escape_bars(line) for line in lines]


_extract_summary = autosummary.extract_summary


def _summary_that_parses(doc, settings):
    """autosummary's one-line summary, kept whole when its cut at the first '. ' breaks markup.

    Sphinx cuts a summary at the first period followed by a space even inside ``...``, as in
    ``x -> act(x W0 + b0) -> ... -> h``; such a cut leaves an unterminated literal (a warning).
    The first paragraph is used instead.
    """
    summary = _extract_summary(doc, settings)
    # parsed as autosummary parses, with the build's settings, so that Sphinx's roles resolve
    parsed = new_document("", settings)
    parsed.reporter = NullReporter()
    RSTStateMachine(state_classes, "Body").run([summary], parsed)
    if not any(parsed.findall(nodes.problematic)) and not any(parsed.findall(nodes.system_message)):
        return summary
    paragraph = []
    for line in doc:
        if not line.strip():
            if paragraph:
                break
            continue
        paragraph.append(line.strip())
    return " ".join(paragraph)


autosummary.extract_summary = _summary_that_parses


def setup(app):
    app.add_directive("nflow-top-level", TopLevelAPI)
    # before numpydoc (priority 500) rewrites the docstring into reST
    app.connect("autodoc-process-docstring", _process_docstring, priority=100)
    return {"parallel_read_safe": True}
