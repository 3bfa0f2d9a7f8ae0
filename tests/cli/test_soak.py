"""`shmlog soak` wiring: options, --json figures, exit code, and that it
runs in its own directory (never the user's data dir)."""

from __future__ import annotations

import json

from shmlog.cli import main


def test_soak_fuzz_only_prints_json_figures(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = main(["soak", "--seconds", "0", "--fuzz", "--fuzz-control", "300", "--fuzz-segments", "3000",
               "--fuzz-regions", "50", "--seed", "7", "--json", "--run-dir", str(tmp_path / "run")])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0, out["violations"]
    assert out["ok"] and out["seed"] == 7 and "soak" not in out
    fz = out["fuzz"]
    assert fz["control"]["requests"] == 300 and fz["segments"]["batches"] >= 3000
    assert fz["regions"]["rounds"] == 50
    assert not (tmp_path / "shmlog-data").exists()  # the default data dir was not touched


def test_soak_help_lists_the_reliability_options(capsys):
    try:
        main(["soak", "--help"])
    except SystemExit:
        pass
    text = capsys.readouterr().out
    for opt in ("--minutes", "--seconds", "--seed", "--kill-every", "--json", "--fuzz", "--power-loss",
                "--disk-faults"):
        assert opt in text
