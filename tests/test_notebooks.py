"""The notebooks: generated from notebooks/make_notebooks.py, and they run top to bottom.

Each notebook runs in a fresh kernel of *this* interpreter (``sys.executable``),
whatever kernels the machine has installed: the test writes a kernelspec into
a temporary folder and gives nbclient a ``KernelManager`` that only looks
there, so no ``ipykernel install`` is needed and nothing outside the test's
folders is touched. A cell after each notebook's ``parameters`` cell turns the
sizes down; the notebook's own cwd is a temporary folder.
"""

import importlib.util
import json
import os
import pathlib
import sys

import pytest

from conftest import TF_STARTUP

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
from jupyter_client.kernelspec import KernelSpecManager  # noqa: E402  (nbclient depends on it)
from jupyter_client.manager import KernelManager  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
KERNEL_NAME = "keras-softkd-tests"

# Appended after each notebook's parameters cell (DATA_DIR is added by the test).
TINY = {
    "01_losses.ipynb": 'SCALE = 0.02\nEPOCHS = 1\nMODEL = "small_cnn"\n',
    "02_mrkd.ipynb": (
        'SCALE = 0.1\nEPOCHS = 1\nMODEL = "small_cnn"\nCOPIES = 2\nKAPPA_STEPS = 1\n'
        "TIMING_STEPS = 2\nTIMING_ROUNDS = 1\n"
    ),
    "03_reproduce.ipynb": (
        'SCALE = 0.01\nMETHODS = "ce,lsr"\nSEEDS = "0"\nEPOCHS = 1\nWORK_DIR = "work"\n'
    ),
}


def load_generator():
    spec = importlib.util.spec_from_file_location("make_notebooks", NOTEBOOKS / "make_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_notebooks_match_their_generator():
    generator = load_generator()
    assert sorted(generator.NOTEBOOKS) == sorted(TINY)
    for name in generator.NOTEBOOKS:
        committed = (NOTEBOOKS / name).read_text()
        assert committed == generator.render(name), (
            f"notebooks/{name} differs from make_notebooks.py: run python notebooks/make_notebooks.py"
        )
        notebook = nbformat.reads(committed, as_version=4)
        code = [cell for cell in notebook.cells if cell.cell_type == "code"]
        assert "parameters" in code[0].metadata.get("tags", []), f"{name}: first code cell"
        assert all(not cell.outputs and cell.execution_count is None for cell in code)


@pytest.fixture(scope="module")
def kernel_dirs(tmp_path_factory):
    """A folder holding one kernelspec: ipykernel on this interpreter."""
    folder = tmp_path_factory.mktemp("kernels")
    spec = folder / KERNEL_NAME
    spec.mkdir()
    python_path = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    spec.joinpath("kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python (keras-softkd tests)",
        "language": "python",
        "env": {
            "PYTHONPATH": os.pathsep.join(python_path),
            "CUDA_VISIBLE_DEVICES": "",
            "KERAS_BACKEND": "tensorflow",
        },
    }))
    return [str(folder)]


def with_parameters(notebook, text: str):
    """Inserts ``text`` as a cell right after the cell tagged ``parameters``."""
    index = next(
        i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", [])
    )
    cell = nbformat.v4.new_code_cell(text)
    cell.metadata["tags"] = ["injected-parameters"]
    notebook.cells.insert(index + 1, cell)
    return notebook


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TINY))
def test_notebook_runs_top_to_bottom(name, kernel_dirs, real_data_dir, tmp_path):
    if not (real_data_dir / "cifar10_train.npz").exists():
        pytest.skip(f"{real_data_dir} has no cifar10_train.npz")
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    with_parameters(notebook, TINY[name] + f"DATA_DIR = {str(real_data_dir)!r}\n")
    manager = KernelManager(
        kernel_name=KERNEL_NAME, kernel_spec_manager=KernelSpecManager(kernel_dirs=kernel_dirs)
    )
    client = nbclient.NotebookClient(
        notebook, km=manager, timeout=300, startup_timeout=120,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    try:
        client.execute()  # raises CellExecutionError, with the cell and its traceback
    finally:
        if manager.has_kernel:
            manager.shutdown_kernel(now=True)
    outputs = [output for cell in notebook.cells for output in cell.get("outputs", [])]
    assert not [output for output in outputs if output.output_type == "error"]
    streams = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert not TF_STARTUP.search(streams), TF_STARTUP.search(streams).group(0)
    images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.data]
    assert images, f"{name} showed no figure"
