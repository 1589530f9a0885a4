"""Running one cell: train (in segments, measuring behaviour between them), score, save the
weights or expert, diff the update, and write ``cells/<cell-id>/`` in one rename.

Everything a cell computes lives on its device (``CellJob.device``, dealt by the executor,
:mod:`.devices`): the base, the proxies and every trained model are placed there, and the
trainer trains there.

A cell directory appears complete or not at all (``routekit.io.atomic_directory``);
``cell.json`` is written last inside it, so a directory with a record is a finished cell.
Training runs in ``cells/.work-<cell-id>/`` with a trainer checkpoint after each segment: a
cell killed at any moment resumes from its last complete segment (the trainer's resume is
bit-exact) or starts again when there is none; whatever the kill left half-written
(temporary directories, a checkpoint caught between its two renames, a work directory half
removed) is tidied first (``routekit.io.recover_directory``). The work directory is removed
once the cell is written. A worker writes only while the run directory's lock holds the
token of the run that started it (:func:`check_still_owner`).

What a cell leaves, loadable with routekit's own loaders:

- ``expert/``: an SVF expert (``SVFExpert.from_pretrained``) or a proxy expert
  (``ProxyExpert.from_pretrained``; its ``tuned/`` model is the trained proxy);
- ``adapter/``: a PEFT adapter, LoRA's or a PEFT method's (``PeftModel.from_pretrained``;
  an initialisation that rewrites the base, such as PiSSA's, makes it an adapter of that
  residual base, see docs/compare.md);
- ``weights/``: a plain HF checkpoint of the updated base (full, subnet, LoRA and PEFT
  methods merged by PEFT's ``merge_and_unload()``, SVF adapted via
  ``routekit.svf.save_adapted_checkpoint``), what the update statistics diff;
- ``mask.safetensors`` (subnet_rl): the boolean masks trained;
- ``update_stats.json``: ``routekit.analysis.diff_checkpoints``'s full result;
- ``cell.json``: the :class:`~.results.CellRecord`.
"""

from __future__ import annotations

import copy
import resource
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import RunTakenOverError
from ..io import (
    atomic_directory,
    atomic_save_safetensors,
    atomic_write_json,
    read_json,
    recover_directory,
    storage_bits,
)
from ..locks import describe_holder, lock_holder
from ..tasks.chat import render_task
from ..training import train
from ..training.checkpoint import checkpoint_dir
from ..training.parameterizations import frozen_reference
from .devices import enter_device, place
from .env import Environment
from .measure import Evaluator
from .methods import MethodSpec, train_config
from .results import CellKey, CellRecord, StructureSummary, code_version, read_model, write_model
from .suite import Suite

RECORD = "cell.json"
RUN_LOCK = ".lock"  # the run directory's lock file (routekit.locks), whose token fences workers


@dataclass
class CellJob:
    """Everything a worker process needs to run one cell (picklable)."""

    run_dir: str
    key: CellKey
    suite: dict[str, Any]
    env: Environment  # the world or a local model with its data (routekit.compare.env)
    settings_hash: str
    source_dir: str | None = None  # subnet_rl: the cell whose changed parameters it trains
    threads: int = 1
    heldout: list[str] | None = None  # the environment's held-out text (None: computed by the cell)
    run_token: str | None = None  # the run lock's token when the job was made (None: unchecked)
    device: str | None = None  # where the cell's models live (None: cpu); set by the executor

    @property
    def cell_dir(self) -> Path:
        return Path(self.run_dir) / "cells" / self.key.cell_id


def check_still_owner(job: CellJob) -> None:
    """Refuse to go on writing once the run directory's lock names another run (the run that
    started this job died and a new one took the directory over)."""
    if job.run_token is None:
        return
    holder = lock_holder(Path(job.run_dir) / RUN_LOCK) or {}
    if holder.get("token") != job.run_token:
        raise RunTakenOverError(
            f"cell {job.key.cell_id}: run directory {job.run_dir!r} is now held by "
            f"{describe_holder(holder)}, not by the run that started this cell; stopping "
            "without writing."
        )


def segment_ends(steps: int, n: int) -> list[int]:
    """Where training pauses for a behaviour measurement: ``n`` points up to ``steps``."""
    return sorted({max(1, round(steps * i / n)) for i in range(1, n + 1)})


def changed_masks(base: nn.Module, tuned_dir: Path) -> dict[str, torch.Tensor]:
    """Per parameter of ``base``, where the checkpoint in ``tuned_dir`` differs in its
    stored bits (the tuned checkpoint's dtype: a bf16 result is compared with the base cast
    to bf16)."""
    from ..models import load_model

    tuned, _ = load_model(tuned_dir)
    tp = dict(tuned.named_parameters())
    out = {}
    for name, p in base.named_parameters():
        t = tp[name].detach()
        out[name] = storage_bits(p.detach().to(device=t.device, dtype=t.dtype)) != storage_bits(t)
    return out


def run_cell(job: CellJob) -> CellRecord:
    """Run ``job``'s cell unless its record exists; returns the record."""
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(job.threads)
    hf_logging.disable_progress_bar()  # a bar per saved or loaded model drowns the cells' bar
    target = job.cell_dir
    work = target.parent / f".work-{job.key.cell_id}"
    check_still_owner(job)
    # This run holds the run lock, and only this task runs this cell: every temporary file
    # beside the cell and its checkpoint is a killed writer's, and a kill between the two
    # renames of a checkpoint replacement left the previous checkpoint under another name.
    recover_directory(target, all_stale=True)
    if (target / RECORD).is_file():
        shutil.rmtree(work, ignore_errors=True)  # a kill while it was being removed
        return read_model(target / RECORD, CellRecord, "cell record")
    recover_directory(checkpoint_dir(work), all_stale=True)
    suite = Suite.model_validate(job.suite)
    spec = suite.method(job.key.method)
    device = enter_device(job.device or "cpu")
    base, tok = job.env.load_base()
    place(base, device)
    # rendered once (routekit.tasks.chat): training, evaluation and every metric read the same prompts
    task = render_task(job.env.task(job.key.task), tok)
    ev = Evaluator(job.env, task, base, tok, suite.eval, suite.max_new_tokens, job.heldout)
    with atomic_directory(target) as tmp, warnings.catch_warnings():
        # transformers' deprecation notices (PEFT calls is_gradient_checkpointing) are not
        # the user's to act on, and would repeat once per cell
        warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
        record = _run(job, suite, spec, base, tok, task, ev, work, tmp)
        write_model(tmp / RECORD, record)
        check_still_owner(job)  # the cell lands only for the run that owns the directory
    shutil.rmtree(work, ignore_errors=True)
    return record


def _add_activations(fields: dict[str, Any], scores, measured) -> None:
    """Per-layer sparsity into the record, per-prompt values into the scores they belong to."""
    if measured is not None:
        fields["activations"], per_prompt = measured
        scores.per_prompt.update(per_prompt)


def _run(job: CellJob, suite: Suite, spec: MethodSpec, base, tok, task, ev: Evaluator,
         work: Path, out: Path) -> CellRecord:
    key = job.key
    device = torch.device(job.device or "cpu")
    t0 = time.perf_counter()
    fields: dict[str, Any] = {"notes": [], "artifacts": {}}
    if not spec.trains:
        scores = [ev.scores(base, is_base=True)]
        _add_activations(fields, scores[0], ev.activations(base))
        b = scores[0].behaviour
        fields["behaviour_history"] = [{"step": 0, **b}] if b else []
        fields["total_parameters"] = sum(p.numel() for p in base.parameters())
        return _record(job, None, scores, t0, 0.0, **fields)

    mask_path = None
    if spec.parameterization == "mask":
        masks = changed_masks(base, Path(job.source_dir) / "weights")
        work.mkdir(parents=True, exist_ok=True)
        mask_path = work / "mask.safetensors"
        atomic_save_safetensors(masks, mask_path)
        fields["mask_density"] = sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
    cfg = train_config(spec, task=key.task, lr=key.lr, seed=key.seed, steps=suite.steps,
                       batch_size=suite.batch_size, env=job.env.train_fields(spec.steered),
                       retain_text=job.env.retain_text(), lora_rank=suite.lora_rank,
                       overrides=suite.train.get(spec.name),
                       mask=str(mask_path) if mask_path else None, device=str(device))
    if spec.steered:
        model, _ = job.env.load_proxy()
        untuned, _ = job.env.load_proxy()
        place(untuned, device)
    else:
        model, _ = job.env.load_base()
    place(model, device)  # the trainer trains it there (cfg.device)
    model, history, behaviour, seconds, counts = _train_in_segments(
        model, tok, task, cfg, suite, ev, work, spec, untuned if spec.steered else None,
        before_segment=lambda: check_still_owner(job))
    fields.update(behaviour_history=behaviour, history=history, trainable_parameters=counts[0],
                  total_parameters=counts[1])
    record_cfg = cfg.model_dump(mode="json")
    if mask_path is not None:
        record_cfg["mask"] = "mask.safetensors"
        shutil.copyfile(mask_path, out / "mask.safetensors")
        fields["artifacts"]["mask"] = "mask.safetensors"
    t_eval = time.perf_counter()
    if spec.steered:
        from ..eval import evaluate
        from ..proxy.expert import ProxyExpert

        expert = ProxyExpert(model, untuned, name=key.cell_id, tokenizer=tok)
        scores = [ev.scores(base, steer=(expert, a)) for a in suite.proxy_alphas]
        fields["proxy_own"] = {
            f"{split}_accuracy": evaluate(model, tok, task, split, limit=getattr(suite.eval, split),
                                          max_new_tokens=suite.max_new_tokens).accuracy
            for split in ("test", "ood") if split in task.splits
        }
        expert.save_pretrained(out / "expert")
        fields["artifacts"]["expert"] = "expert"
    else:
        scores = [ev.scores(model)]
        _add_activations(fields, scores[0], ev.activations(model))
        _save_weights(spec, model, tok, out, fields["artifacts"])
        fields["structure"] = _structure(base, out, spec, device)
    return _record(job, record_cfg, scores, t0, seconds, eval_seconds=time.perf_counter() - t_eval,
                   **fields)


def _train_in_segments(model, tok, task, cfg, suite: Suite, ev: Evaluator, work: Path,
                       spec: MethodSpec, untuned, before_segment=lambda: None):
    """Train to ``cfg.steps`` in ``suite.checkpoints`` segments, measuring behaviour after
    each; resumes a killed cell from the last segment its work directory holds."""
    partial = work / "behaviour.json"
    state = checkpoint_dir(work) / "state.json"
    done = int(read_json(state, "checkpoint state")["step"]) if state.is_file() else 0
    behaviour = [b for b in (read_json(partial, "behaviour") if partial.is_file() else [])
                 if b["step"] <= done]
    seconds, res = 0.0, None
    measured = {b["step"] for b in behaviour}
    # The KL anchor is the untrained model, made once here: every segment continues the same
    # (already trained) object, and a resumed cell enters with fresh weights that train()
    # restores, so this copy is always of the base.
    reference = frozen_reference(model, cfg)
    for end in segment_ends(cfg.steps, suite.checkpoints):
        # A segment is done when its checkpoint is; its behaviour may still be missing when
        # the cell was killed between the two (the train call then only restores the model).
        if end < done or (end == done and (end in measured or not ev.has_behaviour)):
            continue
        before_segment()
        res = train(model, tok, task, cfg.model_copy(update={"steps": end}), out_dir=work,
                    resume=state.is_file(), progress=False, reference=reference)
        model, seconds = res.model, seconds + res.seconds
        if spec.steered:
            from ..proxy.expert import ProxyExpert

            shares = ev.behaviour(None, steer=(ProxyExpert(model, untuned, "t", tokenizer=tok), 1.0))
        else:
            shares = ev.behaviour(model)
        if shares is not None:
            behaviour.append({"step": end, **shares})
            atomic_write_json(partial, behaviour)
    if res is None:  # every segment was done before a kill: restore the last one
        res = train(model, tok, task, cfg, out_dir=work, resume=True, progress=False)
        model = res.model
    return model, [_numeric(h) for h in res.history], behaviour, seconds, (
        res.trainable_parameters, res.total_parameters)


def _numeric(h: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in h.items() if isinstance(v, (int, float))}


def _save_weights(spec: MethodSpec, model, tok, out: Path, artifacts: dict[str, str]) -> None:
    if spec.parameterization == "svf":
        from ..svf import save_adapted_checkpoint

        model.export_expert("expert").save_pretrained(out / "expert")
        artifacts["expert"] = "expert"
        save_adapted_checkpoint(model, out / "weights", tokenizer=tok)
    elif spec.parameterization in ("lora", "peft"):
        model.save_pretrained(out / "adapter", safe_serialization=True)
        artifacts["adapter"] = "adapter"
        merged = copy.deepcopy(model).merge_and_unload()
        merged.save_pretrained(out / "weights", safe_serialization=True)
        tok.save_pretrained(out / "weights")
    else:
        model.save_pretrained(out / "weights", safe_serialization=True)
        tok.save_pretrained(out / "weights")
    artifacts["weights"] = "weights"


def _structure(base: nn.Module, out: Path, spec: MethodSpec,
               device: torch.device | None = None) -> StructureSummary:
    """diff_checkpoints of the saved weights against the base (cast to bf16 for a bf16 cell);
    ranks on the cell's GPU when it has one."""
    from ..analysis import diff_checkpoints

    ref, against = base, "base"
    if spec.bf16_storage:
        ref, against = copy.deepcopy(base).to(torch.bfloat16), "base cast to bfloat16"
    on_gpu = device is not None and device.type == "cuda"
    stats = diff_checkpoints(ref, out / "weights", rank="full", device=device if on_gpu else "cpu")
    (out / "update_stats.json").write_text(stats.model_dump_json(indent=1))
    o = stats.overall
    return StructureSummary(
        against=against,
        share_bitwise_unchanged=o.share_bitwise_unchanged,
        atols=list(stats.atols),
        share_unchanged_atol=list(o.share_unchanged_atol),
        mean_rank_fraction=_mean_rank(stats),
        rel_frob_norm=o.rel_frob_norm,
        density_by_layer={str(g.layer): g.density for g in stats.by_layer},
        density_by_matrix_type={str(g.matrix_type): g.density for g in stats.by_matrix_type},
        rank_fraction_by_matrix_type={str(g.matrix_type): g.mean_rank_fraction
                                      for g in stats.by_matrix_type},
    )


def _mean_rank(stats) -> float | None:
    fr = [t.rank_fraction for t in stats.tensors if t.rank_fraction is not None and t.density > 0]
    return sum(fr) / len(fr) if fr else None


def _record(job: CellJob, cfg: dict | None, scores, t0: float, train_seconds: float,
            eval_seconds: float | None = None, **fields: Any) -> CellRecord:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    total = time.perf_counter() - t0
    return CellRecord(
        key=job.key, cell_id=job.key.cell_id, settings_hash=job.settings_hash,
        code_version=code_version(), train_config=cfg, variants=scores, train_seconds=train_seconds,
        device=job.device or "cpu",
        eval_seconds=eval_seconds if eval_seconds is not None else total - train_seconds,
        peak_rss_mb=peak, **fields,
    )
