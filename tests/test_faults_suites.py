"""Suites fail small: a damaged record is done again, a killed worker fails only its run, an interrupt keeps the
finished runs, a plugin that exits is reported like one that raises, empty grids are refused, and two processes
never write one output folder."""

from __future__ import annotations

import importlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from invprior import registry
from invprior.bench import expand_suite, run_one, run_suite
from invprior.cli import main
from invprior.errors import ConfigError, FolderInUseError, PluginError
from invprior.io import LOCK_FILE, folder_lock, read_checked_json

ROOT = Path(__file__).resolve().parent.parent


def _suite(method: str = "tikhonov", seeds: tuple[int, ...] = (0, 1), params: dict | None = None) -> dict:
    return {"name": "tiny", "seeds": list(seeds),
            "problems": [{"operator": "denoising", "image": "ellipses", "size": 8, "noise": 0.1}],
            "methods": [{"name": method, "params": {"weight": 0.1} if params is None else params}]}


def _toml(suite: dict) -> str:
    seeds = ", ".join(map(str, suite["seeds"]))
    method = suite["methods"][0]
    params = ", ".join(f"{k} = {v!r}" for k, v in method["params"].items())
    return (f'name = "tiny"\nseeds = [{seeds}]\n[[problems]]\noperator = "denoising"\nimage = "ellipses"\n'
            f'size = 8\nnoise = 0.1\n[[methods]]\nname = "{method["name"]}"\nparams = {{ {params} }}\n')


def _verified(out: Path) -> dict[str, dict]:
    """Every record in ``out/runs``, each verified against its checksum."""
    return {p.stem: read_checked_json(p, "run record", "") for p in sorted((out / "runs").glob("*.json"))}


@pytest.fixture
def faulty_plugins(tmp_path, monkeypatch):
    """An installed distribution (on ``sys.path``, which spawned workers inherit) with methods that kill their own
    process, sleep for ten minutes (writing their pid), and a module that calls ``sys.exit`` when imported."""
    root = tmp_path / "site"
    info = root / "faulty_methods-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: faulty-methods\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent("""
        [invprior.api]
        api = faulty_methods:INVPRIOR_API
        [invprior.methods]
        killer = faulty_methods:killer
        sleeper = faulty_methods:sleeper
        quitter = quitting_module:Method
        """))
    (root / "faulty_methods.py").write_text(textwrap.dedent("""
        import os
        import signal
        import time
        from pathlib import Path

        INVPRIOR_API = "1.0"

        def killer(**params):
            os.kill(os.getpid(), signal.SIGKILL)

        def sleeper(**params):
            Path(__file__).with_name(f"sleeper-{os.getpid()}.pid").touch()
            time.sleep(600)
        """))
    (root / "quitting_module.py").write_text("import sys\nsys.exit(3)\n")
    monkeypatch.syspath_prepend(str(root))
    importlib.invalidate_caches()
    return root


def test_damaged_foreign_or_imageless_records_are_run_again_with_a_warning(tmp_path, capsys):
    suite = tmp_path / "tiny.toml"
    suite.write_text(_toml(_suite(seeds=(0, 1, 2, 3, 4, 5))))
    out = tmp_path / "out"
    run_suite(expand_suite(_suite(seeds=(0, 1, 2, 3, 4, 5))), out)
    first = _verified(out)
    assert len(first) == 6 and all(r["status"] == "ok" for r in first.values())
    truncated, empty, tampered, foreign, imageless, intact = (out / "runs" / f"{key}.json" for key in sorted(first))
    truncated.write_bytes(truncated.read_bytes()[:200])
    empty.write_bytes(b"")
    tampered.write_text(tampered.read_text().replace('"psnr": ', '"psnr": 1'))
    foreign.write_bytes(intact.read_bytes())            # an intact record, but of another run
    npz = imageless.with_suffix(".npz")
    npz.write_bytes(npz.read_bytes()[:-20])
    stamp = intact.stat().st_mtime_ns
    with pytest.warns(UserWarning) as caught:
        assert main(["bench", str(suite), "--out", str(out)]) == 0
    messages = sorted(str(w.message) for w in caught if "it is not used" in str(w.message) or ".npz" in str(w.message))
    assert len(messages) == 5
    for path, fault in ((truncated, "truncated or damaged (Expecting"), (empty, "empty run record"),
                        (tampered, "damaged run record (SHA-256 checksum mismatch)"),
                        (foreign, f"holds the record of run '{intact.stem}'"),
                        (npz, "images of a finished run are missing or damaged")):
        assert any(m.startswith(f"{path}: ") and fault in m and m.endswith("its record replaced.") for m in messages)
        assert "\n" not in "".join(messages)
    # the five runs were done again: five progress lines, records intact and equal to the first ones
    assert capsys.readouterr().out.count(" PSNR ") == 5
    again = _verified(out)
    assert {k: r["psnr"] for k, r in again.items()} == {k: r["psnr"] for k, r in first.items()}
    assert intact.stat().st_mtime_ns == stamp          # the intact one was not


def test_a_killed_worker_fails_only_its_run_and_the_pool_goes_on(tmp_path, faulty_plugins):
    killer = expand_suite(_suite("killer", seeds=(0,), params={}))
    fine = expand_suite(_suite(seeds=(0, 1, 2, 3)))
    records = run_suite(killer + fine, tmp_path, workers=2)
    by_key = {r["key"]: r for r in records}
    assert len(records) == 5
    assert by_key[killer[0].key]["status"] == "failed"
    assert by_key[killer[0].key]["error"].startswith("worker lost: its worker process died")
    assert all(by_key[run.key]["status"] == "ok" for run in fine)
    assert {k: r["status"] for k, r in _verified(tmp_path).items()} == {k: r["status"] for k, r in by_key.items()}


def test_sigterm_stops_the_bench_command_promptly_and_keeps_the_finished_runs(tmp_path, faulty_plugins):
    suite = tmp_path / "mixed.toml"
    suite.write_text(_toml(_suite()) + '[[methods]]\nname = "sleeper"\n')   # two fast runs, then two sleepers
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(faulty_plugins), str(ROOT)])}
    process = subprocess.Popen([sys.executable, "-m", "invprior", "bench", str(suite), "--out", str(out),
                                "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        while not list((out / "runs").glob("*.json")) or not list(faulty_plugins.glob("sleeper-*.pid")):
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)  # the sleepers would take ten minutes
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    last = stderr.strip().splitlines()[-1]
    records = _verified(out)                           # whatever was written is intact
    finished = sum(r["status"] == "ok" for r in records.values())
    assert 1 <= finished <= 2
    assert last == (f"invprior: interrupted: {finished} of 4 runs finished and kept in {out / 'runs'}; run the "
                    "suite again to resume (finished runs are skipped)")
    assert "Traceback" not in stderr and stdout.count(" PSNR ") == finished
    # the sleeping workers were stopped, not left behind
    for pid_file in faulty_plugins.glob("sleeper-*.pid"):
        with pytest.raises(ProcessLookupError):
            os.kill(int(pid_file.stem.split("-")[1]), 0)


def test_a_plugin_that_exits_on_import_is_reported_like_one_that_raises(faulty_plugins, capsys):
    with pytest.raises(PluginError, match=r"'quitter' from distribution 'faulty-methods' .*failed to load: "
                                          r"SystemExit: 3"):
        registry.load("methods", "quitter")
    loaded, failed = registry.load_all("methods")
    assert "quitter" in failed and "tikhonov" in loaded
    assert main(["list", "methods"]) == 1              # the command goes on and reports it
    assert "quitter" in capsys.readouterr().out
    (run,) = expand_suite(_suite("quitter", seeds=(0,), params={}))
    record = run_one(run, commit="test")
    assert record["status"] == "failed" and "SystemExit: 3" in record["error"]


@pytest.mark.parametrize("change,match", [
    ({"seeds": []}, r"^suite: seeds is empty; give at least one, e\.g\. seeds = \[0\]$"),
    ({"problems": []}, r"^suite: problems needs at least one \[\[problems\]\] table"),
    ({"methods": []}, r"^suite: methods needs at least one \[\[methods\]\] table"),
    ({"problems": [{"operator": "denoising", "image": [], "size": 8}]},
     r"^suite\.problems\[0\]\.image: an empty list gives no runs; give at least one value$"),
])
def test_empty_seeds_or_grids_are_refused_naming_the_key(change, match):
    with pytest.raises(ConfigError, match=match):
        expand_suite({**_suite(), **change})


def test_an_empty_grid_is_one_line_from_the_command(tmp_path, capsys):
    suite = tmp_path / "empty.toml"
    suite.write_text(_toml(_suite()).replace("seeds = [0, 1]", "seeds = []"))
    assert main(["bench", str(suite), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error == "invprior: error: empty.toml: seeds is empty; give at least one, e.g. seeds = [0]\n"
    assert not (tmp_path / "out").exists()


HOLD = textwrap.dedent("""
    import sys
    from invprior.io import folder_lock
    with folder_lock(sys.argv[1]):
        print("held", flush=True)
        sys.stdin.read()
    """)


def test_an_output_folder_in_use_by_another_process_is_refused_at_once(tmp_path, capsys):
    out = tmp_path / "out"
    suite = tmp_path / "tiny.toml"
    suite.write_text(_toml(_suite(seeds=(0,))))
    config = tmp_path / "run.toml"
    config.write_text('[problem]\noperator = "denoising"\nimage = "ellipses"\nsize = 8\nnoise = { relative = 0.1 }\n'
                      '[method]\nname = "tikhonov"\n')
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        expected = (f"invprior: error: output folder {out} is in use by another invprior process (pid {holder.pid}); "
                    "wait for it or choose another --out\n")
        for argv in (["bench", str(suite), "--out", str(out)], ["run", str(config), "--out", str(out), "--quiet"]):
            start = time.monotonic()
            assert main(argv) == 2
            assert time.monotonic() - start < 30            # refused at once, not queued behind the holder
            assert capsys.readouterr().err == expected
        with pytest.raises(FolderInUseError, match="in use by another invprior process"):
            run_suite(expand_suite(_suite(seeds=(0,))), out)
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]   # nothing was written
    finally:
        holder.kill()
        holder.wait()
    # a killed holder leaves no lock behind, and one process may hold a folder twice (a command, then run_suite)
    with folder_lock(out), folder_lock(out):
        records = run_suite(expand_suite(_suite(seeds=(0,))), out, workers=1)
    assert [r["status"] for r in records] == ["ok"] and len(_verified(out)) == 1


def test_workers_must_be_positive(tmp_path, capsys):
    suite = tmp_path / "tiny.toml"
    suite.write_text(_toml(_suite(seeds=(0,))))
    with pytest.raises(ConfigError, match=r"bench: workers \(--workers\) must be a positive int, got 0"):
        run_suite(expand_suite(_suite(seeds=(0,))), tmp_path / "lib", workers=0)
    assert main(["bench", str(suite), "--out", str(tmp_path / "out"), "--workers", "-1"]) == 2
    assert capsys.readouterr().err == "invprior: error: bench: workers (--workers) must be a positive int, got -1\n"


def test_an_unreachable_dask_scheduler_fails_within_seconds(tmp_path):
    pytest.importorskip("dask.distributed")
    with socket.socket() as probe:                     # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(ConfigError, match=rf"^bench: cannot reach the dask scheduler at 'tcp://127\.0\.0\.1:{port}' "):
        run_suite(expand_suite(_suite(seeds=(0,))), tmp_path, executor="dask", scheduler=f"tcp://127.0.0.1:{port}")
    assert time.monotonic() - start < 20                # dask on its own waits 30 s to connect
