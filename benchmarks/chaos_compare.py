"""Chaos test of ``routekit compare``: SIGKILL the run at random moments, resume, compare.

    python benchmarks/chaos_compare.py                  # 10 kills, seed 0
    python benchmarks/chaos_compare.py --kills 3 --seed 1 --json

What it does:

1. Writes a small suite (``base,svf_sft,full_sft`` on ``hop`` of the tiny world, two lrs
   per trained method: five cells, a few training steps in three segments) and runs it once,
   uninterrupted, as ``routekit compare --workers 2`` in a subprocess: the reference, and
   the time T it takes.
2. Starts the same command on a second run directory, in its own process group (its own
   session), and SIGKILLs the ``routekit`` process alone (not its group) at a moment drawn
   uniformly from (0.5 s, T) after its start by a seeded RNG; its two workers and the multiprocessing
   resource tracker are left to fend for themselves, as after an OOM kill or a closed
   terminal.
3. After each kill, looks for survivors: every process whose process group is the killed
   run's (workers and the resource tracker inherit it and keep it when orphaned), read from
   ``/proc/<pid>/stat``. It records how long they took to go and fails the kill if any
   outlives ``--grace`` seconds (then kills them, so that the next resume is not raced).
4. Reruns the command (a resume) until ``--kills`` kills have been dealt, then lets the
   last one finish (a run that completes before its kill moment is compared, and the
   remaining kills go to a fresh run directory).
5. Compares every cell of the resumed run with the reference, figure for figure (the
   records without wall-clock time and peak memory) and every saved tensor bit for bit,
   and writes ``benchmarks/results/chaos_compare.json`` (``--json`` prints it too).

Linux only (``/proc``). ``tests/test_killsafe.py`` runs a short version of this with kills at
chosen moments.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "benchmarks" / "results" / "chaos_compare.json"


def chaos_suite(world: str = "tiny", steps: int = 12) -> dict:
    """The benchmark's suite: five cells (base, two lrs of svf_sft and of full_sft)."""
    return dict(
        name="chaos",
        world=world,
        tasks=["hop"],
        seeds=[0],
        methods=["base", "svf_sft", "full_sft"],
        steps=steps,
        batch_size=4,
        checkpoints=3,
        proxy_alphas=[1.0],
        lora_rank=2,
        max_new_tokens=4,
        eval=dict(
            test=12,
            ood=12,
            probes=12,
            statements=12,
            heldout_text=12,
            kl_prompts=6,
            activations=8,
            behaviour=6,
        ),
    )


def process_group(pgid: int) -> list[tuple[int, str]]:
    """(pid, command line) of every live process in process group ``pgid`` (from /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            # fields after the parenthesised command: state, ppid, pgrp, ...
            fields = stat[stat.rindex(")") + 2 :].split()
            if fields[0] == "Z" or int(fields[2]) != pgid:
                continue
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        out.append((int(entry.name), cmd.strip()))
    return out


def compare_command(suite_file: Path, out: Path, workers: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "routekit.cli",
        "compare",
        "--suite",
        str(suite_file),
        "--out",
        str(out),
        "--workers",
        str(workers),
        "--no-progress",
    ]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _as_on_a_terminal() -> None:
    """In the child, before exec: SIGINT as a terminal's foreground process has it. A shell
    starts background jobs (``cmd &``, CI runners' steps) with SIGINT ignored, and Python then
    never installs its KeyboardInterrupt handler, so a Ctrl-C test would test nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    """The command in a session of its own (its process group id is its pid), with SIGINT's
    default disposition whatever this process inherited."""
    return subprocess.Popen(
        cmd,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env=child_env(),
        start_new_session=True,
        cwd=ROOT,
        preexec_fn=_as_on_a_terminal,
    )


def kill_parent_and_watch(proc: subprocess.Popen, grace: float) -> dict:
    """SIGKILL ``proc`` alone; wait for its process group to empty (at most ``grace`` s).
    Returns what survived and for how long; kills survivors past ``grace``."""
    pgid = proc.pid
    before = len(process_group(pgid)) - 1  # besides the routekit process itself
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    t0 = time.perf_counter()
    at_kill = [cmd for _, cmd in process_group(pgid)]
    left = at_kill
    while left and time.perf_counter() - t0 < grace:
        time.sleep(0.1)
        left = [cmd for _, cmd in process_group(pgid)]
    cleared = time.perf_counter() - t0
    if left:
        for pid, _ in process_group(pgid):
            with _suppress():
                os.kill(pid, signal.SIGKILL)
    return {
        "children_before_kill": before,
        "alive_at_kill": len(at_kill),
        "survivors_after_grace": left,
        "seconds_to_clear": round(cleared, 2),
    }


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], ProcessLookupError)


def run_state(out: Path) -> dict:
    """What a run directory holds: finished cells and cells with a work directory."""
    cells = out / "cells"
    if not cells.is_dir():
        return {"finished": [], "in_progress": []}
    return {
        "finished": sorted(
            p.name
            for p in cells.iterdir()
            if not p.name.startswith(".") and (p / "cell.json").is_file()
        ),
        "in_progress": sorted(
            p.name.removeprefix(".work-") for p in cells.iterdir() if p.name.startswith(".work-")
        ),
    }


def comparable(results_file: Path) -> dict[str, dict]:
    """Each cell's record without what wall-clock time and the machine's load decide."""
    data = json.loads(results_file.read_text())
    out = {}
    for c in data["cells"]:
        for k in ("train_seconds", "eval_seconds", "peak_rss_mb"):
            c.pop(k, None)
        for h in c.get("history", []):
            h.pop("seconds", None)
        out[c["cell_id"]] = c
    return out


def weight_digests(out: Path) -> dict[str, str]:
    """Per saved tensor file of every cell (weights, experts, masks): its tensors' full
    fingerprint (names, shapes, dtypes, every stored bit) and its metadata. Not the file's
    bytes: safetensors writes the metadata map in no fixed order."""
    from safetensors import safe_open

    from routekit.io import fingerprint_tensors

    digests = {}
    for f in sorted((out / "cells").glob("[!.]*/**/*.safetensors")):
        with safe_open(str(f), "pt") as st:
            tensors = {k: st.get_tensor(k) for k in st.keys()}
            meta = json.dumps(st.metadata() or {}, sort_keys=True)
        digests[str(f.relative_to(out / "cells"))] = (
            f"{fingerprint_tensors(tensors, full=True)} {meta}"
        )
    return digests


def diff_runs(ref: Path, got: Path) -> dict:
    a, b = comparable(ref / "results.json"), comparable(got / "results.json")
    differing = sorted(c for c in a.keys() | b.keys() if a.get(c) != b.get(c))
    wa, wb = weight_digests(ref), weight_digests(got)
    files = sorted(f for f in wa.keys() | wb.keys() if wa.get(f) != wb.get(f))
    return {
        "cells": len(a),
        "cells_differing": differing,
        "tensor_files": len(wa),
        "tensor_files_differing": files,
    }


def chaos(
    work: Path,
    kills: int,
    seed: int,
    workers: int,
    grace: float,
    steps: int,
    world: str = "tiny",
    log=print,
) -> dict:
    """Run the reference, then the killed-and-resumed run; returns the report."""
    suite_file = work / "suite.yaml"
    suite_file.write_text(json.dumps(chaos_suite(world, steps)))  # JSON is YAML
    ref, got, logf = work / "reference", work / "chaos", work / "log.txt"
    t0 = time.perf_counter()
    p = start(compare_command(suite_file, ref, workers), logf)
    if p.wait() != 0:
        raise SystemExit(f"the uninterrupted run failed; see {logf}")
    t_ref = time.perf_counter() - t0
    log(f"uninterrupted run: {t_ref:.1f} s")
    rng = random.Random(seed)
    events, runs, attempts, t_chaos = [], [], 0, time.perf_counter()
    got = work / "chaos-0"
    while True:
        attempts += 1
        p = start(compare_command(suite_file, got, workers), logf)
        try:
            rc = p.wait(timeout=rng.uniform(0.5, t_ref) if len(events) < kills else None)
        except subprocess.TimeoutExpired:
            before = run_state(got)
            ev = {"attempt": attempts, "run": got.name, **before, **kill_parent_and_watch(p, grace)}
            events.append(ev)
            log(
                f"kill {len(events)}/{kills} ({got.name}): {len(before['finished'])} cells "
                f"finished, in progress {before['in_progress']}; {ev['children_before_kill']} "
                f"child process(es) before the kill, {ev['alive_at_kill']} right after, gone in "
                f"{ev['seconds_to_clear']} s, survivors {ev['survivors_after_grace']}"
            )
            continue
        if rc != 0:
            raise SystemExit(f"attempt {attempts} on {got} exited with {rc}; see {logf}")
        runs.append({"run": got.name, **diff_runs(ref, got)})
        log(f"{got.name} complete: {runs[-1]}")
        if len(events) >= kills:
            break
        # The run completed before all kills were dealt: deal the rest to a fresh run.
        got = work / f"chaos-{len(runs)}"
    survived = sum(1 for e in events if not e["survivors_after_grace"])
    differing = [r for r in runs if r["cells_differing"] or r["tensor_files_differing"]]
    return {
        "suite": chaos_suite(world, steps),
        "workers": workers,
        "seed": seed,
        "kills_requested": kills,
        "kills_dealt": len(events),
        "attempts": attempts,
        "kills_without_survivors": survived,
        "grace_s": grace,
        "max_seconds_to_clear": max((e["seconds_to_clear"] for e in events), default=0.0),
        "uninterrupted_seconds": round(t_ref, 1),
        "chaos_seconds": round(time.perf_counter() - t_chaos, 1),
        "cells": runs[0]["cells"],
        "tensor_files": runs[0]["tensor_files"],
        "identical": not differing,
        "runs": runs,
        "events": events,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument(
        "--grace",
        type=float,
        default=5.0,
        help="seconds the killed run's processes may take to go (default 5)",
    )
    ap.add_argument("--dir", default=None, help="work directory (default: a temporary one)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    quiet = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    with tempfile.TemporaryDirectory(prefix="chaos-compare-") as tmp:
        work = Path(args.dir) if args.dir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        report = chaos(work, args.kills, args.seed, args.workers, args.grace, args.steps, log=quiet)
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    from routekit.io import atomic_write_bytes  # a killed run leaves the old file
    atomic_write_bytes(RESULT, (json.dumps(report, indent=1) + "\n").encode())
    if args.json:
        print(json.dumps(report, indent=1))
    print(
        f"{report['kills_without_survivors']} of {report['kills_dealt']} SIGKILLs left no "
        f"process behind (slowest cleared in {report['max_seconds_to_clear']} s); "
        f"{report['cells']} cells and {report['tensor_files']} tensor files "
        f"{'identical to' if report['identical'] else 'DIFFERENT from'} the uninterrupted "
        f"run; {report['attempts']} attempts, {report['chaos_seconds']} s "
        f"(uninterrupted {report['uninterrupted_seconds']} s).",
        file=sys.stderr,
    )
    return (
        0
        if report["identical"] and report["kills_without_survivors"] == report["kills_dealt"]
        else 1
    )


if __name__ == "__main__":
    sys.exit(main())
