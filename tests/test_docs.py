"""The documentation that ships in docs/ (and the README) runs: every
```python and ```sh block is executed in its own subprocess, in a fresh
directory whose ./data is the test's data dir, and must exit 0. A block
fenced as `python norun` / `sh norun` only shows a shape and is skipped.

The data_dir fixture then fails the test if a supervisor or a region the
example caused outlives it; an example's auto-started supervisor is stopped
here rather than left to its idle timeout."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import shmlog

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.S | re.M)
RUNNERS = {"python": [sys.executable, "-"], "sh": ["bash", "-euo", "pipefail", "-s"]}


def blocks():
    out = []
    for path in DOCS:
        text = path.read_text()
        for m in FENCE.finditer(text):
            info = m.group(1).split()
            if not info or info[0] not in RUNNERS or "norun" in info[1:]:
                continue
            line = text.count("\n", 0, m.start()) + 1
            out.append(pytest.param(info[0], m.group(2), id=f"{path.name}:{line}"))
    return out


def test_docs_exist_and_the_readme_points_at_them():
    names = {p.name for p in DOCS}
    assert {"api.md", "cli.md", "configuration.md", "guarantees.md", "operations.md"} <= names
    readme = (ROOT / "README.md").read_text()
    assert "../shared/" not in readme, "the README must not link outside the repository"
    for link in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (ROOT / link).exists(), link
    for path in DOCS:
        for link in re.findall(r"\]\(([\w./-]+\.md)(?:#[\w-]+)?\)", path.read_text()):
            assert (path.parent / link).exists(), (path.name, link)


@pytest.mark.parametrize("lang,code", blocks())
def test_example_runs(data_dir, lang, code):
    cwd = data_dir.parent
    env = dict(os.environ)
    env.pop("SHMLOG_DATA_DIR", None)
    # the `shmlog` of this interpreter's environment, and this checkout's package
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    try:
        r = subprocess.run(RUNNERS[lang], input=code.encode(), cwd=cwd, env=env, capture_output=True,
                           timeout=120)
    finally:
        try:
            shmlog.connect(data_dir, start=False).shutdown()
        except shmlog.BrokerNotRunning:
            pass
    assert r.returncode == 0, f"example failed (exit {r.returncode}):\n{code}\n--- stdout\n" \
                              f"{r.stdout.decode()}\n--- stderr\n{r.stderr.decode()}"
