"""README.md is executable documentation: every ```python block runs as written.

Blocks whose first line is ``# file: <path>`` (Python or YAML) are the files a section tells the
reader to create: they are written into a scratch folder, which is the working directory (and on
the Python path) when the other blocks run, each in a fresh namespace, in README order. A block
preceded by ``<!-- skip-test: reason -->`` is skipped with that reason (only for what needs a
cluster, the network or a GPU).
"""

import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[\w-]*)\s*$")
SKIP = re.compile(r"<!--\s*skip-test:\s*(?P<reason>.+?)\s*-->")
FILE = re.compile(r"^# file: (?P<path>\S+)\s*$")


@dataclass
class Block:
    lang: str
    line: int  # 1-based line of the opening fence
    code: str
    skip: str | None
    file: str | None


def readme_blocks(text: str) -> list[Block]:
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match or not match["lang"]:
            i += 1
            continue
        start, indent = i, len(match["indent"])
        i += 1
        body = []
        while not (lines[i].strip() == "```" and len(lines[i]) - len(lines[i].lstrip()) == indent):
            body.append(lines[i])
            i += 1
        previous = next((ln for ln in reversed(lines[:start]) if ln.strip()), "")
        skip = SKIP.search(previous)
        code = textwrap.dedent("\n".join(body)) + "\n"
        file = FILE.match(code.splitlines()[0]) if code.strip() else None
        blocks.append(Block(match["lang"], start + 1, code, skip and skip["reason"], file and file["path"]))
        i += 1
    return blocks


BLOCKS = readme_blocks(README.read_text())
RUNNABLE = [b for b in BLOCKS if b.lang == "python" and b.file is None]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """The scratch folder holding the README's files (my_agents.py, my_configs/…)."""
    root = tmp_path_factory.mktemp("readme")
    for block in BLOCKS:
        if block.file:
            path = root / block.file
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(block.code)
    return root


def test_readme_has_runnable_blocks_and_the_files_they_need():
    assert len(RUNNABLE) >= 6
    files = {b.file for b in BLOCKS if b.file}
    assert {"my_agents.py", "my_rewards.py", "my_configs/agent/my_agent.yaml"} <= files
    assert all(b.skip is None or len(b.skip) > 10 for b in BLOCKS)  # a skip says why


@pytest.mark.parametrize("block", RUNNABLE, ids=[f"README.md:{b.line}" for b in RUNNABLE])
def test_readme_python_block_runs_as_written(block, workdir, monkeypatch):
    if block.skip:
        pytest.skip(block.skip)
    monkeypatch.chdir(workdir)
    monkeypatch.syspath_prepend(str(workdir))
    exec(compile(block.code, f"README.md:{block.line}", "exec"), {"__name__": "__readme__"})


def test_readme_extension_guide_from_the_command_line(workdir):
    """The documented command trains with the README's own agent and reward component."""
    documented = "PYTHONPATH=. crystal-rl-train 'hydra.searchpath=[file://my_configs]' reward=my_reward agent=my_agent"
    assert documented in README.read_text()
    tiny = ["trainer.max_steps=1", "trainer.val_batch_size=0", "env.num_steps=2", "env.batch_size=4"]
    cmd = [sys.executable, "-m", "crystal_rl.cli", "train", "hydra.searchpath=[file://my_configs]"]
    cmd += ["reward=my_reward", "agent=my_agent", "env.group_size=2", "run_dir=runs/cli", *tiny]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(workdir), str(REPO)]), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (workdir / "runs" / "cli" / "checkpoint.pt").is_file()


def test_readme_results_block_is_the_rendered_results_file():
    """The README's results block is a copy of docs/results/results.md (crystal-rl-reproduce --render)."""
    text = README.read_text()
    begin, end = "<!-- results:begin -->\n", "<!-- results:end -->"
    block = text[text.index(begin) + len(begin) : text.index(end)]
    assert block == (REPO / "docs" / "results" / "results.md").read_text()
