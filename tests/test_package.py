"""The package's imports flow downward (docs/ARCHITECTURE.md): no circle, and the layering rules.

The graph is read from the source with ``ast``, without importing anything:

* every ``import`` and ``from ... import`` counts, at module level or inside a function (a
  function-level import closes a circle at run time all the same); those under
  ``if TYPE_CHECKING:`` do not (they never run);
* ``from keras_softkd.a import b`` is an edge to the module ``keras_softkd.a.b`` when there is
  one, else to ``keras_softkd.a``; relative imports are resolved first;
* importing ``keras_softkd.a.b`` runs ``keras_softkd/a/__init__.py`` first, so an edge to a
  module is also an edge to each package above it (``keras_softkd.a``), except the packages
  that hold the importer itself (its parent package up to ``keras_softkd``): Python has begun
  those before the importer runs, and a package's ``__init__`` importing its own submodules is
  how it exposes them;
* a package's ``__init__`` importing its submodules is an edge like any other.
"""

from __future__ import annotations

import ast
import os
import pathlib
import platform
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = "keras_softkd"

#: Below ``experiment``: what train.py reaches through the method table, and the modules beside it.
TRAINERS = ("distillation", "memory_replay", "class_wise", "progressive", "beta_smoothing",
            "knowledge_refinery")
LOWER = ("losses", "teachers", "models", "data", "metrics", "precision", "optimizers")


def modules(root: pathlib.Path, package: str) -> dict[str, pathlib.Path]:
    """``{dotted name: file}`` of every module of ``package`` under ``root`` (a package by its name)."""
    found = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(sub) for sub in ast.walk(node))
    return skipped


def _imported_names(name: str, path: pathlib.Path, tree: ast.AST) -> list[str]:
    """Every dotted name an import in ``tree`` asks for (``a.b`` and ``a.b.c`` for ``from a.b import c``)."""
    skipped = _type_checking_nodes(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    asked = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            asked += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            asked += [base] + [f"{base}.{alias.name}" for alias in node.names]
    return asked


def import_graph(root: pathlib.Path, package: str = PACKAGE) -> dict[str, set[str]]:
    """``{module: the package's modules it imports}``, as the module docstring says."""
    found = modules(root, package)
    graph = {name: set() for name in found}
    for name, path in found.items():
        holders = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        for asked in _imported_names(name, path, ast.parse(path.read_text())):
            parts = asked.split(".")
            if parts[0] != package:
                continue
            # Each package on the way down, then the module itself.
            for i in range(2, len(parts) + 1):
                target = ".".join(parts[:i])
                if target in found and target != name and target not in holders:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles: each strongly connected set of two or more modules, sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def reach(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every module that importing ``start`` imports, directly or not."""
    seen, todo = set(), [start]
    while todo:
        for other in graph[todo.pop()]:
            if other not in seen:
                seen.add(other)
                todo.append(other)
    return seen


def _under(names: set[str], *tops: str) -> list[str]:
    """The ``names`` that are one of ``keras_softkd.<top>`` or inside it."""
    prefixes = [f"{PACKAGE}.{top}" for top in tops]
    return sorted(n for n in names if any(n == p or n.startswith(p + ".") for p in prefixes))


def _write(root: pathlib.Path, files: dict[str, str]) -> None:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


# -- the finder, on tiny packages ---------------------------------------------------------------


def test_the_finder_sees_a_circle_closed_by_a_function_level_import(tmp_path):
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from pkg import b\n",
        "pkg/b.py": "def f():\n    from pkg.c import x\n    return x\n",
        "pkg/c.py": "import pkg.a\nx = 1\n",
        "pkg/d.py": "from pkg import a\n",  # imports into the circle, not part of it
    })
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.b"] == {"pkg.c"}
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.c"]]
    assert reach(graph, "pkg.d") == {"pkg.a", "pkg.b", "pkg.c"}


def test_the_finder_skips_type_checking_and_a_package_holding_the_importer(tmp_path):
    _write(tmp_path, {
        "pkg/__init__.py": "from pkg import low\n",
        "pkg/low.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import high\n",
        "pkg/high.py": "from pkg import low\n",
        "pkg/sub/__init__.py": "from pkg.sub.leaf import g\n",
        "pkg/sub/leaf.py": "from pkg.sub import other\nfrom . import other as same\ng = 1\n",
        "pkg/sub/other.py": "",
        "pkg/user.py": "from pkg.sub.leaf import g\n",
    })
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.low"] == set()
    assert graph["pkg.sub.leaf"] == {"pkg.sub.other"}  # pkg.sub holds leaf: no edge back
    assert graph["pkg.user"] == {"pkg.sub", "pkg.sub.leaf"}  # pkg.sub's __init__ runs first
    assert cycles(graph) == []


def test_the_finder_sees_a_circle_through_another_package_s_init(tmp_path):
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/top.py": "from pkg.sub.leaf import g\n",
        "pkg/sub/__init__.py": "from pkg import top\n",
        "pkg/sub/leaf.py": "g = 1\n",
    })
    assert cycles(import_graph(tmp_path, "pkg")) == [["pkg.sub", "pkg.top"]]


# -- keras_softkd ---------------------------------------------------------------------------------


def test_keras_softkd_has_no_import_circle():
    found = cycles(import_graph(ROOT))
    assert found == [], "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_method_table_declares_and_imports_nothing_above_the_trainers():
    graph = import_graph(ROOT)
    for name in ("methods", *TRAINERS, *LOWER):
        above = _under(reach(graph, f"{PACKAGE}.{name}"),
                       "config", "experiment", "grid", "report", "methods")
        assert above == [], f"{name} imports {above}"


def test_config_is_below_experiment_and_grid_and_report_never_import_experiment():
    graph = import_graph(ROOT)
    assert _under(reach(graph, f"{PACKAGE}.config"), "experiment", "grid", "report") == []
    for name in [n for n in graph if _under({n}, "grid", "report")]:
        assert _under(reach(graph, name), "experiment") == [], name


def test_the_protocols_share_the_lifecycle_and_the_runners_share_the_cells():
    graph = import_graph(ROOT)
    pairs = [("experiment.image", "experiment.text"), ("grid.local", "grid.on_ray")]
    for one, other in pairs:
        assert f"{PACKAGE}.{other}" not in reach(graph, f"{PACKAGE}.{one}"), (one, other)
        assert f"{PACKAGE}.{one}" not in reach(graph, f"{PACKAGE}.{other}"), (other, one)
    assert f"{PACKAGE}.experiment.lifecycle" in graph[f"{PACKAGE}.experiment.text"]
    assert f"{PACKAGE}.grid.cells" in graph[f"{PACKAGE}.grid.on_ray"]


def test_the_flags_modules_import_no_keras_and_the_package_imports_tensorflow_quietly():
    """train.py's flags and checks (config, the method table, the model and dataset names)
    load without Keras; a trainer loads Keras (and TensorFlow) without TensorFlow's lines."""
    from conftest import TF_STARTUP

    code = (
        "import sys\n"
        "import keras_softkd.config, keras_softkd.methods, keras_softkd.models, keras_softkd.data\n"
        "heavy = sorted({'keras', 'tensorflow', 'jax', 'torch'} & set(sys.modules))\n"
        "assert not heavy, heavy\n"
        "keras_softkd.config.ExperimentConfig(method='mrkd', model='resnet56').resolved\n"
        "import keras_softkd, os\n"
        "print(keras_softkd.MrKDModel.__name__, 'tensorflow' in sys.modules)\n"
        "print(os.environ.get('TF_ENABLE_ONEDNN_OPTS'))\n"
    )
    env = {key: value for key, value in os.environ.items()
           if key not in ("TF_CPP_MIN_LOG_LEVEL", "KERAS_SOFTKD_TF_LOGS", "TF_ENABLE_ONEDNN_OPTS")}
    env["KERAS_BACKEND"] = "tensorflow"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    # TensorFlow loaded with its oneDNN kernels on x86-64 (keras_softkd._onednn).
    onednn = "1" if platform.machine().lower() in ("x86_64", "amd64") else "None"
    assert result.stdout.split() == ["MrKDModel", "True", onednn], result.stdout
    assert not TF_STARTUP.search(result.stderr), result.stderr[-3000:]


def test_tensorflows_onednn_default_is_set_unless_the_user_or_tensorflow_came_first(monkeypatch):
    """``TF_ENABLE_ONEDNN_OPTS=1`` on x86-64 under the TensorFlow backend before TensorFlow
    loads; the user's value, an earlier TensorFlow, another backend or processor leave it
    unset; the record says which."""
    from keras_softkd import _onednn

    monkeypatch.setattr(_onednn, "_origin", _onednn._origin)
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    monkeypatch.setattr(_onednn.platform, "machine", lambda: "x86_64")
    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)
    _onednn.default_onednn("tensorflow")
    assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == "1"
    assert _onednn.onednn_record().startswith("1 (set by keras_softkd: ")

    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    _onednn.default_onednn("tensorflow")
    assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == "0"
    assert _onednn.onednn_record() == "0 (the user's)"

    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS")
    for backend, why in {"jax": "Keras's backend is jax", "tensorflow": "imported before"}.items():
        if backend == "tensorflow":
            monkeypatch.setitem(sys.modules, "tensorflow", sys)  # any module: imported already
        _onednn.default_onednn(backend)
        assert "TF_ENABLE_ONEDNN_OPTS" not in os.environ
        assert _onednn.onednn_record().startswith("(unset) (unset; ") and why in _onednn.onednn_record()
    monkeypatch.delitem(sys.modules, "tensorflow")
    monkeypatch.setattr(_onednn.platform, "machine", lambda: "aarch64")
    _onednn.default_onednn("tensorflow")
    assert "TF_ENABLE_ONEDNN_OPTS" not in os.environ and "aarch64" in _onednn.onednn_record()
