"""The documentation that ships in docs/ (and the README) runs: every
```python and ```sh block is executed in its own subprocess, in a fresh
directory whose ./data is the test's data dir, and must exit 0. A block
fenced as `python norun` / `sh norun` only shows a shape and is skipped.

The data_dir fixture then fails the test if a supervisor or a region the
example caused outlives it; an example's auto-started supervisor is stopped
here rather than left to its idle timeout."""

from __future__ import annotations

import dataclasses
import inspect
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


def _has(owner, name: str) -> bool:
    """An attribute, a dataclass field, or one __init__ & co. set on self."""
    if hasattr(owner, name):
        return True
    if not isinstance(owner, type):
        return False
    if dataclasses.is_dataclass(owner) and name in {f.name for f in dataclasses.fields(owner)}:
        return True
    return re.search(rf"self\.{name}\b(: [^=]+)? = ", inspect.getsource(owner)) is not None


def test_names_the_docs_use_exist():
    """`cluster.x`, `producer.x`, `consumer.x`, `msg.x`, `batch.x`,
    `view.x` and `shmlog.X` in any page name something real."""
    from shmlog.client.consumer import MessageView

    owners = {"cluster": shmlog.Cluster, "producer": shmlog.Producer, "consumer": shmlog.Consumer,
              "msg": shmlog.Message, "m": shmlog.Message, "batch": shmlog.MessageBatch, "view": MessageView,
              "shmlog": shmlog, "info": shmlog.TopicInfo, "p0": shmlog.PartitionInfo}
    seen = 0
    for path in DOCS:
        text = path.read_text()
        for var, owner in owners.items():
            for name in set(re.findall(rf"(?<![\w.]){var}\.([A-Za-z_]\w*)", text)):
                if var == "shmlog" and not (name[0].isupper() or name == "connect"):
                    continue  # module paths and logger names in prose
                assert _has(owner, name), f"{path.name} uses {var}.{name}, which does not exist"
                seen += 1
    assert seen >= 40, f"only {seen} names found: did the docs' spelling change?"


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
