"""Executes every notebook in notebooks/ so that they never rot.

Each notebook checks itself with ``assert`` (hand computations against the package, the
relative-position identity, trained accuracies), so a regression in the package fails the
cell and with it this test. The kernel is the ``python3`` kernel of this interpreter
(jupyter_client runs its ``python`` as ``sys.executable``) on one CPU device.
"""

import os
import pathlib
import re
import time

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
NAMES = ["01_attention", "02_positions", "03_train_and_translate",
         "04_encoder_and_decoder_only"]
CELL_TIMEOUT_SECONDS = 900  # one cell at most; a hung kernel fails instead of blocking CI

# Printed numbers checked here as well, so that an edited-away notebook assert is noticed.
PRINTED_MINIMUMS = {
    "03_train_and_translate": (r"validation exact match after \d+ steps: ([\d.]+)%", 60.0),
    "04_encoder_and_decoder_only": (r"exact match on 100 held-out numbers: ([\d.]+)%", 50.0),
}


def _kernel_env(workdir: pathlib.Path) -> dict[str, str]:
    """This process's environment on one CPU device (not conftest's 4 simulated ones)."""
    env = dict(os.environ)
    flags = [flag for flag in env.get("XLA_FLAGS", "").split()
             if not flag.startswith("--xla_force_host_platform_device_count")]
    # No MPLBACKEND: the kernel's inline backend really renders every figure to PNG.
    env.pop("MPLBACKEND", None)
    env.update(XLA_FLAGS=" ".join(flags), JAX_PLATFORMS="cpu", NOTEBOOK_WORKDIR=str(workdir))
    return env


def _stdout(notebook) -> str:
    return "".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                   for output in cell.get("outputs", []) if output.get("name") == "stdout")


def test_the_four_notebooks_are_there_and_committed_without_outputs():
    assert sorted(path.stem for path in NOTEBOOKS.glob("*.ipynb")) == NAMES
    for name in NAMES:
        notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
        nbformat.validate(notebook)
        code = [cell for cell in notebook.cells if cell.cell_type == "code"]
        assert code, name
        assert all(not cell.outputs and cell.execution_count is None for cell in code), (
            f"{name}.ipynb has outputs; clear them before committing.")


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_without_errors(name, tmp_path, record_property):
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    client = NotebookClient(notebook, kernel_name="python3", timeout=CELL_TIMEOUT_SECONDS,
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    start = time.perf_counter()
    client.execute(env=_kernel_env(tmp_path / "run"))  # raises CellExecutionError on any error
    record_property("seconds", round(time.perf_counter() - start, 1))
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.execution_count is not None for cell in code)
    if name in PRINTED_MINIMUMS:
        pattern, minimum = PRINTED_MINIMUMS[name]
        found = re.search(pattern, _stdout(notebook))
        assert found, f"{name} no longer prints {pattern!r}"
        assert float(found.group(1)) >= minimum
