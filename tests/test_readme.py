"""Every command block of the README and the guides runs as written after the README's two commands.

CI runs the test command itself (``.ci/run``). The ```bash blocks after it, and
those of the guides in ``docs/``, are run here as bash scripts from the repository
root, cheaply: ``train.py`` and the grid with ``--dry_run`` (flags, flagfiles and
defaults checked, nothing trained), the report for real on the committed results
(its files written to a temporary folder, not over the committed ones). ``DIR`` is
a data folder. The README's Python block runs for real, in a fresh process in a
temporary folder. Every relative link of the README and the guides resolves.
"""

import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PYTHON = ".venv/bin/python"

# The pages whose ```bash blocks run here, and how many each has at least (so a block
# that stops being found, e.g. by a changed fence, fails a test instead of passing unseen).
PAGES = {
    "README.md": 0,  # its two commands only; CI runs them (the blocks after the test command run here)
    "docs/training.md": 4,
    "docs/results.md": 5,
    "docs/text.md": 3,
    "docs/clusters.md": 2,
    "benchmarks/README.md": 5,
}


def bash_blocks(page: str) -> list[str]:
    """The page's ```bash blocks; for the README those after the test command (the two commands come first)."""
    text = (ROOT / page).read_text()
    if page == "README.md":
        after = text.split("<!-- test-command -->", 1)[1]
        return re.findall(r"```bash\n(.*?)```", after, flags=re.S)[1:]  # [0] is the test command
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def all_blocks() -> list[tuple[str, int]]:
    return [(page, index) for page in PAGES for index in range(len(bash_blocks(page)))]


BLOCKS = all_blocks()


def skip_reason(page: str, block: str):
    """Why a block is not run here, or None."""
    if "jupyter lab" in block:
        return ("installs JupyterLab and starts a notebook server; tests/test_notebooks.py "
                "executes the notebooks themselves")
    if "benchmarks/" in block and re.search(r"benchmarks/\w+\.(py|sh)", block):
        return ("runs a benchmark for minutes (each prints a timing table); benchmarks/README.md "
                "records their runs; tests/test_backends.py runs gpu_backends.sh, shrunk, and "
                "tests/test_gpu_fidelity.py gpu_fidelity.py's device command on a tiny queue")
    if ".[bench]" in block:
        return "installs PyTorch for the benchmarks only"
    if "keras.models.load_model" in block:
        return ("loads a trained run's model.keras; tests/test_train.py runs it on one, where "
                "keras_softkd cannot be imported")
    return None


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


@pytest.mark.parametrize("page", list(PAGES))
def test_the_blocks_are_found_and_use_the_environments_python(page):
    blocks = bash_blocks(page)
    assert len(blocks) >= PAGES[page], f"{page}: {len(blocks)} ```bash blocks, expected >= {PAGES[page]}"
    text = (ROOT / page).read_text()
    if page == "README.md":
        text = text.split("<!-- test-command -->", 1)[1].split("```", 2)[2]  # after the two commands
    for block in re.findall(r"```(?:bash|sh)\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            assert not re.search(r"(^|[\s;&|(\"'=])python3? ", line), f"bare python in {page}: {line}"
            assert not re.search(r"(^|[\s;&|(\"'=])pip3? ", line), f"bare pip in {page}: {line}"


@pytest.mark.slow
@pytest.mark.parametrize("page,index", BLOCKS, ids=[f"{p}:{i}" for p, i in BLOCKS])
def test_block_runs_as_written(page, index, tmp_path):
    block = bash_blocks(page)[index]
    reason = skip_reason(page, block)
    if reason:
        pytest.skip(reason)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    script = runnable(block, data_dir, tmp_path)
    result = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, f"{script}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    if "keras_softkd.report" in script:
        assert (tmp_path / "curves.png").read_bytes().startswith(b"\x89PNG")
        assert "Top-1 test error" in (tmp_path / "report.md").read_text()


@pytest.mark.slow
def test_the_readme_python_runs_as_written(tmp_path):
    """The API screenful, as one script, in a fresh process in an empty folder (so what it saves
    lands there, not in the repository)."""
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert blocks, "no ```python block in the README"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env.setdefault("KERAS_BACKEND", "tensorflow")
    result = subprocess.run([sys.executable, "-c", "\n\n".join(blocks)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, f"{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    assert (tmp_path / "resnet20.keras").stat().st_size > 0


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: pathlib.Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {slug(h) for h in re.findall(r"^#{1,6} (.*)$", text, flags=re.M)}


LINKED_PAGES = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")),
                "benchmarks/README.md"]


@pytest.mark.parametrize("page", LINKED_PAGES)
def test_relative_links_resolve(page):
    path = ROOT / page
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)  # code blocks hold no links
    text = re.sub(r"`[^`\n]*`", "", text)  # nor code spans
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # http(s):, mailto:
        file, _, anchor = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path
        relative = os.path.relpath(resolved, ROOT)
        if not resolved.exists():
            broken.append(f"{target} (no {relative})")
            continue
        if anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target} (no heading #{anchor} in {relative})")
    assert not broken, f"{page}: " + "; ".join(broken)


def test_the_readme_lists_every_method_of_the_table():
    from keras_softkd import methods

    listed = re.search(r"\*\*Methods\*\* `([a-z_ ]+)`", README).group(1).split()
    assert listed == methods.names()
    table = README.split("| method | loss per example |", 1)[1].split("\n\n", 1)[0]
    rows = re.findall(r"^\| `([a-z_]+)` \|", table, flags=re.M)
    assert sorted(rows) == sorted(methods.names())
