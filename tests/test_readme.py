"""Every command block of the README runs as written after its two commands.

CI runs the test command itself (``.ci/run``). The later blocks are run here as
bash scripts from the repository root, cheaply: ``train.py`` and the grid with
``--dry_run`` (flags, flagfiles and defaults checked, nothing trained), the
report for real on the committed results (its files written to a temporary
folder, not over the committed ones). ``DIR`` is a data folder.
"""

import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PYTHON = ".venv/bin/python"


def bash_blocks() -> list[str]:
    """The README's ```bash blocks after the test command (the two commands come first)."""
    after = README.split("<!-- test-command -->", 1)[1]
    blocks = re.findall(r"```bash\n(.*?)```", after, flags=re.S)
    return blocks[1:]  # [0] is the test command


def runnable(block: str, data_dir: pathlib.Path, out: pathlib.Path) -> str:
    """The block as a cheap script: dry runs, report files sent to ``out``."""
    commands = []
    for command in block.replace("\\\n", " ").splitlines():
        command = re.sub(r"\s+", " ", command).strip()
        if not command or command.startswith("#"):
            continue
        command = re.sub(r"\bDIR\b", str(data_dir), command)
        if "train.py" in command or "keras_softkd.grid" in command:
            command += " --dry_run"
        if "keras_softkd.report" in command:
            command = re.sub(r"--plot( \S+\.png)?", f"--plot {out}/curves.png", command)
            command += f" --markdown {out}/report.md"
        commands.append(command.replace(PYTHON, sys.executable))
    return "set -euo pipefail\n" + "\n".join(commands) + "\n"


def test_the_blocks_are_found_and_use_the_environments_python():
    blocks = bash_blocks()
    assert len(blocks) >= 5
    for block in blocks:
        for line in block.splitlines():
            assert not re.match(r"\s*python3? ", line), f"bare python in README: {line}"


@pytest.mark.parametrize("index", range(len(bash_blocks())))
def test_readme_block_runs_as_written(index, tmp_path):
    block = bash_blocks()[index]
    if "jupyter lab" in block:
        pytest.skip("installs JupyterLab and starts a notebook server; tests/test_notebooks.py "
                    "executes the notebooks themselves")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    script = runnable(block, data_dir, tmp_path)
    result = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, f"{script}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    if "keras_softkd.report" in script:
        assert (tmp_path / "curves.png").read_bytes().startswith(b"\x89PNG")
        assert "Top-1 test error" in (tmp_path / "report.md").read_text()


def test_the_readme_lists_every_method_of_the_table():
    from keras_softkd import methods

    listed = re.search(r"\*\*Methods\*\* `([a-z_ ]+)`", README).group(1).split()
    assert listed == methods.names()
    table = README.split("| method | loss per example |", 1)[1].split("\n\n", 1)[0]
    rows = re.findall(r"^\| `([a-z_]+)` \|", table, flags=re.M)
    assert sorted(rows) == sorted(methods.names())
