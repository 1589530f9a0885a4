"""Kill safety: workers die with their parent, one run per directory, any half-written work
directory resumes, and a SIGKILLed ``routekit compare`` resumes to the uninterrupted results
(a short version of ``benchmarks/chaos_compare.py``)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from routekit import cli
from routekit.compare import runner, worker
from routekit.compare.runner import run_suite
from routekit.compare.suite import suite_from_dict
from routekit.errors import LockHeldError
from routekit.io import atomic_directory, recover_directory
from routekit.locks import exclusive_lock, lock_holder
from routekit.training import train, trainable_parameters
from routekit.training.checkpoint import checkpoint_dir
from routekit.world.tokenizer import build_tokenizer as char_tokenizer
from tests.test_compare_harness import comparable, tiny_suite
from tests.test_training import rev_task, tiny_llama

ROOT = Path(__file__).resolve().parent.parent
METHODS = ["base", "svf_sft", "full_sft"]


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


chaos = _load(ROOT / "benchmarks" / "chaos_compare.py", "chaos_compare")


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _wait_gone(pid: int, seconds: float) -> float | None:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        if not _alive(pid):
            return time.perf_counter() - t0
        time.sleep(0.05)
    return None


# ------------------------------------------------------------------ workers die with parent
CHILD = """
import sys, time, threading, importlib.util
spec = importlib.util.spec_from_file_location("lifeline", sys.argv[1])
lifeline = importlib.util.module_from_spec(spec); spec.loader.exec_module(lifeline)
mode, parent, ready = sys.argv[2], int(sys.argv[3]), sys.argv[4]
if mode == "pdeathsig":
    assert lifeline.set_parent_death_signal()
elif mode == "watchdog":
    threading.Thread(target=lifeline._watch, args=(parent, 0.2), daemon=True).start()
else:
    lifeline.bind_to_parent(parent)
open(ready, "w").write("ready")
time.sleep(60)
"""
PARENT = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2], sys.argv[3],
                          str(os.getpid()) if sys.argv[3] != "race" else "1", sys.argv[4]])
print(child.pid, flush=True)
time.sleep(60)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl and /proc are Linux's")
@pytest.mark.parametrize("mode", ["pdeathsig", "watchdog", "bind"])
def test_a_worker_dies_within_a_second_of_its_parents_sigkill(tmp_path, mode):
    lifeline = ROOT / "routekit" / "compare" / "lifeline.py"
    ready = tmp_path / "ready"
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, CHILD, str(lifeline), mode, str(ready)],
        stdout=subprocess.PIPE,
        text=True,
    )
    child = int(parent.stdout.readline())
    deadline = time.time() + 20
    while not ready.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert ready.exists() and _alive(child)
    parent.kill()
    parent.wait()
    took = _wait_gone(child, 5.0)
    if took is None:
        os.kill(child, signal.SIGKILL)
    assert took is not None and took < 1.5, f"{mode}: the orphan outlived its parent"


SPAWNING_PARENT = """
import contextlib, importlib.util, multiprocessing as mp, sys, time
spec = importlib.util.spec_from_file_location("lifeline", sys.argv[1])
lifeline = importlib.util.module_from_spec(spec); spec.loader.exec_module(lifeline)
bound = lifeline.parent_bound_spawning() if sys.argv[2] == "bound" else contextlib.nullcontext()
with bound:
    child = mp.get_context("spawn").Process(target=time.sleep, args=(60,))
    child.start()
    print(child.pid, flush=True)
    time.sleep(60)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl and /proc are Linux's")
@pytest.mark.parametrize("how", ["bound", "plain"])
def test_a_spawned_process_is_bound_before_it_imports_anything(how):
    # Killed the moment the child is spawned, before the child's interpreter has started
    # (let alone imported torch and run the pool's initializer): a plain spawn is orphaned,
    # one through the launcher dies with its parent.
    lifeline = ROOT / "routekit" / "compare" / "lifeline.py"
    parent = subprocess.Popen(
        [sys.executable, "-c", SPAWNING_PARENT, str(lifeline), how],
        stdout=subprocess.PIPE,
        text=True,
    )
    child = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    took = _wait_gone(child, 1.5)
    if took is None:
        os.kill(child, signal.SIGKILL)
    assert (took is not None) == (how == "bound")


def test_spawning_falls_back_to_the_plain_interpreter_where_the_launcher_cannot_run(
    monkeypatch,
):
    from multiprocessing import spawn

    from routekit.compare import lifeline

    before = spawn.get_executable()
    with lifeline.parent_bound_spawning() as launcher:
        assert launcher is not None and os.fsdecode(spawn.get_executable()) == str(launcher)
    assert spawn.get_executable() == before and not launcher.exists()
    monkeypatch.setattr(lifeline, "_runs", lambda path: False)  # a noexec temp dir, say
    with lifeline.parent_bound_spawning() as launcher:
        assert launcher is None and spawn.get_executable() == before


def test_a_worker_whose_parent_died_before_binding_dies_at_once(tmp_path):
    # the parent pid it expects (1) is not its parent: the race the getppid check closes
    lifeline = ROOT / "routekit" / "compare" / "lifeline.py"
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(lifeline), "bind", "1", str(tmp_path / "ready")],
        timeout=30,
    )
    assert proc.returncode == -signal.SIGKILL and not (tmp_path / "ready").exists()


# ------------------------------------------------------------------ one run per directory
def _suite(world_dir, methods=METHODS, **over):
    return suite_from_dict(tiny_suite(world_dir, methods, steps=3, checkpoints=3, **over))


def test_a_second_run_on_a_locked_directory_is_refused_naming_the_holder(
    world_dir, tmp_path, capsys
):
    out = tmp_path / "run"
    suite_file = tmp_path / "suite.yaml"
    suite_file.write_text(json.dumps(tiny_suite(world_dir, ["base"])))
    with exclusive_lock(out / worker.RUN_LOCK, "the first run"):
        with pytest.raises(
            LockHeldError,
            match=rf"pid {os.getpid()} on host "
            rf"'{socket.gethostname()}'",
        ):
            run_suite(_suite(world_dir, ["base"]), out, workers=0, progress=False)
        rc = cli.main(
            [
                "compare",
                "--suite",
                str(suite_file),
                "--out",
                str(out),
                "--workers",
                "0",
                "--no-progress",
            ]
        )
    assert rc == cli.EXIT_REFUSED
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert (
        last.startswith("routekit: error: run directory") and f"in use by pid {os.getpid()}" in last
    )
    assert sorted(p.name for p in out.iterdir()) == [worker.RUN_LOCK]  # nothing else written
    assert lock_holder(out / worker.RUN_LOCK) is None  # the holder left it empty


def test_a_stale_lock_is_taken_over_with_a_message(world_dir, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = {
        "pid": dead.pid,
        "host": socket.gethostname(),
        "started": "then",
        "command": "routekit compare",
        "token": "0",
    }
    (out / worker.RUN_LOCK).write_text(json.dumps(stale))  # content, but no flock: its holder died
    outcome = run_suite(_suite(world_dir, ["base"]), out, workers=0, progress=False)
    assert outcome.ran == ["base__hop__lr0__s0"]
    err = capsys.readouterr().err
    assert f"taking over the lock of run directory {str(out)!r} from pid {dead.pid}" in err
    assert lock_holder(out / worker.RUN_LOCK) is None


def test_a_worker_of_a_run_that_lost_its_lock_stops_without_writing(
    world_dir, tmp_path, monkeypatch
):
    out = tmp_path / "run"
    seen = {}
    real = worker.check_still_owner

    def taken_over_before_landing(job):
        seen["n"] = seen.get("n", 0) + 1
        if seen["n"] == 3:  # start, segment 1 fine; then another run takes the directory
            (out / worker.RUN_LOCK).write_text(
                json.dumps({"pid": 1, "host": "elsewhere", "token": "theirs"})
            )
        return real(job)

    monkeypatch.setattr(worker, "check_still_owner", taken_over_before_landing)
    with pytest.raises(
        Exception,
        match=r"RunTakenOverError: cell full_sft.*held by pid 1 on "
        r"host 'elsewhere'.*stopping without writing",
    ):
        run_suite(
            _suite(world_dir, ["full_sft"], lrs={"full_sft": [1e-3]}),
            out,
            workers=0,
            progress=False,
        )
    assert not (out / "cells" / "full_sft__hop__lr0.001__s0").exists()


# ------------------------------------------------------------------ half-written remains
@pytest.fixture(scope="module")
def reference(world_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    return run_suite(_suite(world_dir), out, workers=0, progress=False)


def _kill_in_segment(monkeypatch, cell: str, segment: int):
    """Stop the run (as a kill would: not caught) when ``cell`` starts training ``segment``."""
    real = worker.train
    calls = {"n": 0}

    def train(model, tok, task, cfg, out_dir, **kw):
        if Path(out_dir).name == f".work-{cell}":
            calls["n"] += 1
            if calls["n"] == segment:
                raise KeyboardInterrupt
        return real(model, tok, task, cfg, out_dir=out_dir, **kw)

    monkeypatch.setattr(worker, "train", train)


REMAINS = [
    "between the renames of a checkpoint",
    "no checkpoint at all",
    "a finished cell's work directory half removed",
]


@pytest.mark.parametrize("remains", REMAINS)
def test_any_half_written_work_directory_resumes(
    world_dir, reference, tmp_path, monkeypatch, remains
):
    suite, out = _suite(world_dir), tmp_path / "run"
    cell = "full_sft__hop__lr0.001__s0"
    cells = out / "cells"
    with monkeypatch.context() as m:
        _kill_in_segment(m, cell, segment=3)
        with pytest.raises(KeyboardInterrupt):
            run_suite(suite, out, workers=0, progress=False)
    work = cells / f".work-{cell}"
    ckpt = checkpoint_dir(work)
    assert json.loads((ckpt / "state.json").read_text())["step"] == 2

    def leftovers() -> None:
        (cells / f".tmp-{cell}-99999-abcd").mkdir()  # a cell directory being assembled
        (cells / f".tmp-{cell}-99999-abcd" / "cell.json").write_text("{trunc")
        (work / ".tmp-checkpoint-99999-efgh").mkdir(parents=True)  # a checkpoint being written

    leftovers()
    resumed_at = 2
    if remains == REMAINS[0]:  # the old checkpoint moved aside, the new one not yet in place
        os.replace(ckpt, work / ".old-checkpoint-99999-ijkl")
    elif remains == REMAINS[1]:  # killed in the first segment: behaviour of nothing saved
        for p in work.iterdir():
            if p.name != "behaviour.json":
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        resumed_at = None
    else:  # the cell landed, then its work directory was being removed
        run_suite(suite, out, workers=0, progress=False)
        leftovers()
        (work / "checkpoint").mkdir()
        (work / "checkpoint" / "trainable.safetensors").write_bytes(b"half")
    resumes = []
    real = worker.train

    def spy(model, tok, task, cfg, out_dir, resume=False, **kw):
        res = real(model, tok, task, cfg, out_dir=out_dir, resume=resume, **kw)
        resumes.append(res.resumed_from)
        return res

    monkeypatch.setattr(worker, "train", spy)
    outcome = run_suite(suite, out, workers=0, progress=False)
    assert comparable(outcome.results) == comparable(reference.results)
    if remains == REMAINS[2]:
        assert cell in outcome.reused and resumes == []
    else:
        assert cell in outcome.ran and resumes[0] == resumed_at
    assert not work.exists()
    assert sorted(p.name for p in cells.iterdir() if p.name.startswith(".")) == []


def test_atomic_directory_survives_a_leftover_of_a_killed_writer_with_its_pid(tmp_path):
    target = tmp_path / "checkpoint"
    with atomic_directory(target) as tmp:
        (tmp / "a").write_text("1")
    leftover = tmp_path / f".old-checkpoint-{os.getpid()}"  # the name an older routekit used
    leftover.mkdir()
    (leftover / "half").write_text("x")
    with atomic_directory(target) as tmp:
        (tmp / "a").write_text("2")
    assert (target / "a").read_text() == "2"
    assert not recover_directory(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
    # another target's temporary directory is not this one's, whatever its name begins with
    other = tmp_path / f".tmp-checkpoint-v2-{os.getpid() + 10**6}-abcd"
    other.mkdir()
    recover_directory(target, all_stale=True)
    assert other.is_dir()
    # a kill while a replaced version was being deleted leaves a .del- remnant, not an .old-
    (tmp_path / ".del-checkpoint-99999-efgh").mkdir()
    shutil.rmtree(target)
    assert not recover_directory(target) and not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [other.name]


# ------------------------------------------------------------------ train --resume
def test_train_resume_restarts_a_run_killed_before_its_first_checkpoint(
    tmp_path, monkeypatch, capsys
):
    from routekit.training import sft

    tok, task = char_tokenizer(), rev_task()
    cfg = dict(parameterization="full", steps=3, batch_size=2, checkpoint_every=2)
    full = train(tiny_llama(), tok, task, cfg, out_dir=tmp_path / "a", progress=False)
    real = sft.sft_loss

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # like a kill in the first step: not caught

    with monkeypatch.context() as m:
        m.setattr(sft, "sft_loss", killed)
        with pytest.raises(KeyboardInterrupt):
            train(tiny_llama(), tok, task, cfg, out_dir=tmp_path / "b", progress=False)
    assert sft.sft_loss is real and not checkpoint_dir(tmp_path / "b").exists()
    res = train(tiny_llama(), tok, task, cfg, out_dir=tmp_path / "b", resume=True, progress=False)
    assert "stopped before its first checkpoint; starting it again" in capsys.readouterr().err
    assert res.resumed_from is None
    a, b = trainable_parameters(full.model), trainable_parameters(res.model)
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_train_resume_puts_back_a_checkpoint_caught_between_its_renames(tmp_path):
    tok, task = char_tokenizer(), rev_task()
    cfg = dict(parameterization="full", steps=4, batch_size=2, checkpoint_every=2)
    full = train(tiny_llama(), tok, task, cfg, progress=False)
    train(tiny_llama(), tok, task, {**cfg, "steps": 2}, out_dir=tmp_path, progress=False)
    os.replace(checkpoint_dir(tmp_path), tmp_path / ".old-checkpoint-99999-abcd")
    res = train(tiny_llama(), tok, task, cfg, out_dir=tmp_path, resume=True, progress=False)
    assert res.resumed_from == 2
    a, b = trainable_parameters(full.model), trainable_parameters(res.model)
    assert all(torch.equal(a[n], b[n]) for n in a)


# ------------------------------------------------------------------ the world build
def test_a_world_entry_caught_between_its_renames_is_put_back_and_builds_wait(
    tmp_path, monkeypatch, capsys
):
    import threading

    from routekit import world
    from tests.test_world import MICRO

    monkeypatch.setenv("ROUTEKIT_CACHE", str(tmp_path / "cache"))
    built = world.build(MICRO, progress=False)
    root = world.world_dir(MICRO)
    os.replace(root, root.parent / f".old-{root.name}-99999-abcd")  # a rebuild killed midway
    world.load(MICRO, build_if_missing=False)  # put back, not "not built yet"
    assert root.is_dir() and not list(root.parent.glob(".old-*"))
    lock = root.parent / f".{root.name}.lock"
    held = threading.Event()

    def another_builder():
        with exclusive_lock(lock, "another builder"):
            held.set()
            time.sleep(1.0)

    t = threading.Thread(target=another_builder)
    t.start()
    held.wait()
    t0 = time.perf_counter()
    again = world.build(MICRO, progress=False)
    t.join()
    assert again.cached and again.base_fingerprint == built.base_fingerprint
    assert time.perf_counter() - t0 >= 0.5
    assert "waiting for it to finish" in capsys.readouterr().err


# ------------------------------------------------------------------ Ctrl-C, SIGKILL
def test_ctrl_c_says_how_to_resume_and_exits_130(world_dir, tmp_path, monkeypatch, capsys):
    suite_file = tmp_path / "suite.yaml"
    suite_file.write_text(json.dumps(tiny_suite(world_dir, ["base"])))

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run_suite", interrupted)
    argv = ["compare", "--suite", str(suite_file), "--out", str(tmp_path / "my run")]
    assert cli.main(argv) == 130
    err = capsys.readouterr().err
    assert err.strip().endswith(
        f"Resume with: routekit compare --suite {suite_file} --out '{tmp_path / 'my run'}'"
    )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")
def test_sigkilled_compare_leaves_no_process_and_resumes_to_the_same_results(
    world_dir, reference, tmp_path, capsys
):
    suite_file = tmp_path / "suite.yaml"
    suite_file.write_text(json.dumps(tiny_suite(world_dir, METHODS, steps=3, checkpoints=3)))
    out = tmp_path / "run"
    cmd = chaos.compare_command(suite_file, out, workers=2)
    proc = chaos.start(cmd, tmp_path / "log.txt")
    # the chosen moment: the first training checkpoint of a cell, with two workers busy
    # generous bounds: a loaded CI machine is slow to get there, the checks are what matter
    deadline = time.time() + 300
    while time.time() < deadline and not list((out / "cells").glob(".work-*/checkpoint")):
        assert proc.poll() is None, (tmp_path / "log.txt").read_text()[-2000:]
        time.sleep(0.02)
    assert list((out / "cells").glob(".work-*/checkpoint")), "no cell reached a checkpoint"
    killed = chaos.kill_parent_and_watch(proc, grace=10.0)
    assert killed["children_before_kill"] >= 2  # workers (and the resource tracker) were there
    assert killed["survivors_after_grace"] == [] and killed["seconds_to_clear"] < 10.0
    # the resume, in this process (no worker spawns: the kill was the point above)
    resumed = run_suite(_suite(world_dir), out, workers=0, progress=False).results
    assert f"taking over the lock of run directory {str(out)!r}" in capsys.readouterr().err
    assert comparable(resumed) == comparable(reference.results)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")
def test_ctrl_c_on_the_terminal_stops_every_process_and_exits_130(world_dir, tmp_path):
    suite_file = tmp_path / "suite.yaml"
    suite_file.write_text(json.dumps(tiny_suite(world_dir, METHODS, steps=3, checkpoints=3)))
    out, log = tmp_path / "run", tmp_path / "log.txt"
    proc = chaos.start(chaos.compare_command(suite_file, out, workers=2), log)
    deadline = time.time() + 300
    while time.time() < deadline and not list((out / "cells").glob(".work-*/checkpoint")):
        assert proc.poll() is None, log.read_text()[-2000:]
        time.sleep(0.02)
    assert list((out / "cells").glob(".work-*/checkpoint")), "no cell reached a checkpoint"
    assert len(chaos.process_group(proc.pid)) >= 3  # routekit, its workers, the tracker
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground group
    assert proc.wait(timeout=120) == 130
    assert "Resume with: routekit compare --suite" in log.read_text()
    deadline = time.time() + 10
    while chaos.process_group(proc.pid) and time.time() < deadline:
        time.sleep(0.05)
    assert chaos.process_group(proc.pid) == []
    assert lock_holder(out / worker.RUN_LOCK) is None  # released cleanly, not stale
