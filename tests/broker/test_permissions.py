"""Invariant 6: owner-only by default. Regions and the socket are 0600, the
data dir and its subdirs 0700, every file in it 0600 (even when the user
made the data dir itself 0755) - and a second Unix user (`nobody`, via
setpriv, when the suite runs as root) can neither attach to a region,
connect to the socket, nor read a segment or the offsets."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest
from _broker_helpers import partition_regions, running_cluster, segments_of

SHM = Path("/dev/shm")


def _populate(cluster) -> None:
    cluster.create_topic("d", partitions=1, chunk_bytes=65536, chunk_count=2)
    cluster.create_topic("m", partitions=1, storage="memory", chunk_bytes=65536, chunk_count=2)
    with cluster.producer() as p:
        p.send("d", b"secret")
        p.flush(durable=True)
    with cluster.consumer("d", group="g") as c:
        assert c.consume(max_messages=1, timeout=10)
        c.commit()


@pytest.fixture
def public_dir():
    """A 0755 dir in /tmp (pytest's own tmp dirs are 0700): there the data
    dir's own mode is all that keeps another user out."""
    base = Path(tempfile.mkdtemp(prefix="shmlog-perm-", dir="/tmp"))
    os.chmod(base, 0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("precreate", [False, True], ids=["created-by-shmlog", "user-made-0755"])
def test_everything_is_owner_only(tmp_path, precreate):
    data = tmp_path / "data"
    if precreate:
        data.mkdir(mode=0o755)
        os.chmod(data, 0o755)
    with running_cluster(data) as cluster:
        _populate(cluster)
        if not precreate:
            assert stat.S_IMODE(os.stat(data).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(data / "shmlog.sock").st_mode) == 0o600
        regions = segments_of(data)
        assert partition_regions(data) and any(n.endswith("groups") for n in regions)
        for n in regions:
            assert stat.S_IMODE(os.stat(SHM / n).st_mode) == 0o600, n
        loose = []
        for root, dirs, files in os.walk(data):
            for n in dirs + files:
                p = Path(root) / n
                mode = stat.S_IMODE(os.lstat(p).st_mode)
                if mode & 0o077:
                    loose.append(f"{oct(mode)} {p.relative_to(data)}")
        assert not loose, loose


PROBE = r"""
import json, os, socket, sys
data, regions, files = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
out = {}
def tryit(what, fn):
    try:
        fn()
        out[what] = "ALLOWED"
    except PermissionError:
        out[what] = "denied"
    except OSError as exc:
        out[what] = f"error {exc.errno}"
for r in regions:
    tryit("attach " + r, lambda: os.close(os.open("/dev/shm/" + r, os.O_RDONLY)))
def conn():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(os.path.join(data, "shmlog.sock"))
    finally:
        s.close()
tryit("connect", conn)
tryit("list data dir", lambda: os.listdir(data))
for f in files:
    tryit("read " + f, lambda: open(os.path.join(data, f), "rb").read(1))
print(json.dumps(out))
"""


def _as_nobody(data: Path, regions, files):
    py = shutil.which("python3", path="/usr/bin:/bin") or "/usr/bin/python3"
    r = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", py, "-c", PROBE,
                        str(data), json.dumps(regions), json.dumps(files)],
                       capture_output=True, text=True, timeout=60, cwd="/")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a probe as the user nobody (setpriv)")
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is not installed")
def test_another_user_cannot_attach_connect_or_read(public_dir):
    data = public_dir / "data"
    with running_cluster(data) as cluster:
        _populate(cluster)
        regions = segments_of(data)
        # not the .tmp of an atomic write in flight (memory_offsets.json.tmp): it
        # may be renamed away before the probe reads it
        files = [str(p.relative_to(data)) for p in data.rglob("*")
                 if p.is_file() and p.suffix not in (".sock", ".tmp")]
        assert any(f.endswith(".log") for f in files) and any(f.endswith(".offsets") for f in files)
        got = _as_nobody(data, regions, files)
        assert set(got.values()) == {"denied"}, got
        # were the data dir opened up (0711: others may traverse it), the
        # socket and every file would still keep them out by their own mode
        os.chmod(data, 0o711)
        try:
            got = _as_nobody(data, regions, files)
        finally:
            os.chmod(data, 0o700)
        assert got.pop("list data dir") == "denied"
        leaks = {k: v for k, v in got.items() if v != "denied" and not k.startswith("read topics/")
                 and not k.startswith("read groups/")}
        assert not leaks, leaks
