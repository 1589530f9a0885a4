"""Devices: a suite's or ``--device``'s device is resolved once per run (auto: cuda where a GPU
exists), ``cuda`` deals running cells one per GPU with one worker per GPU by default, and a
cell puts the base, the proxies and every trained model on its device, whatever device the
accelerator would pick. No GPU exists here: the GPUs are faked (torch.cuda monkeypatched),
and the accelerator's device is made ``meta`` so that a model sent there by the trainer
would be caught."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from routekit.compare import devices, executors, worker
from routekit.compare.devices import cell_devices, default_workers, resolve_device
from routekit.compare.executors import _schedule
from routekit.compare.results import CellKey
from routekit.compare.runner import run_suite
from routekit.compare.suite import narrow, suite_from_dict
from routekit.compare.worker import CellJob
from routekit.errors import ConfigError
from routekit.training import TrainConfig
from routekit.training.trainer import training_device
from tests.test_compare_env import local_data, local_suite  # noqa: F401  (the fixture)

torch.set_num_threads(1)


def fake_gpus(monkeypatch, n: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)


def test_auto_means_every_gpu_with_a_worker_each(monkeypatch):
    fake_gpus(monkeypatch, 4)
    assert resolve_device(None) == resolve_device("auto") == "cuda"
    assert cell_devices("cuda") == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert default_workers(cell_devices("cuda")) == 4
    assert cell_devices(resolve_device("cuda:2")) == ["cuda:2"]
    assert default_workers(["cuda:2"]) == 1
    assert default_workers(["cpu"]) == default_workers()  # --device cpu: one per core
    with pytest.raises(ConfigError, match=r"has 4 CUDA GPU\(s\), cuda:0 to cuda:3"):
        resolve_device("cuda:4")


def test_without_a_gpu_auto_is_the_cpu_and_cuda_is_refused(monkeypatch):
    fake_gpus(monkeypatch, 0)
    assert resolve_device(None) == "cpu"
    assert default_workers(cell_devices("cpu")) >= 1
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match="'gpu0' is not a torch device"):
        resolve_device("gpu0")


def _jobs(n: int) -> list[CellJob]:
    return [CellJob(run_dir="r", key=CellKey(method="m", task="t", lr=0.0, seed=s), suite={},
                    env=None, settings_hash="h") for s in range(n)]  # type: ignore[arg-type]


def test_running_cells_have_a_gpu_each():
    """Four GPUs, four slots, seven cells finishing in turn: no two running cells share a
    GPU, and a finished cell's GPU takes the next one."""
    gpus = ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    running: list[tuple[str, str]] = []  # (cell id, device), in submission order
    seen: list[str] = []

    def submit(job: CellJob):
        assert job.device not in {d for _, d in running}, (job.device, running)
        running.append((job.key.cell_id, job.device))
        seen.append(job.device)
        return running[-1]

    def wait_any(handles):
        first = running.pop(0)  # the oldest running cell finishes first
        return [first], [h for h in handles if h != first]

    records, failed = _schedule(_jobs(7), {}, submit, wait_any,
                                lambda h: (h[0], object(), None), False, slots=4, devices=gpus)
    assert not failed and len(records) == 7
    assert seen == gpus + ["cuda:0", "cuda:1", "cuda:2"]


def test_the_executor_gives_workers_one_per_gpu(monkeypatch):
    fake_gpus(monkeypatch, 3)
    got = {}

    def schedule(jobs, deps, submit, wait_any, result_of, progress, slots, devices=None):
        got.update(slots=slots, devices=devices)
        return {}, {}

    monkeypatch.setattr(executors, "_schedule", schedule)

    class Pool:  # no processes: only the slot count matters here
        def __init__(self, max_workers, **kw):
            got["processes"] = max_workers

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(executors, "ProcessPoolExecutor", Pool)
    executors.execute(_jobs(1), {}, devices=cell_devices("cuda"), progress=False)
    assert got == {"slots": 3, "processes": 3, "devices": ["cuda:0", "cuda:1", "cuda:2"]}


def test_a_named_device_wins_over_the_accelerators(monkeypatch):
    monkeypatch.setattr(Accelerator, "device", property(lambda self: torch.device("meta")))
    acc = Accelerator()
    assert training_device(TrainConfig(), acc) == torch.device("meta")  # the fake works
    assert training_device(TrainConfig(device="cpu"), acc) == torch.device("cpu")


def test_every_model_and_input_tensor_of_a_cell_lands_on_its_device(
    local_data, tmp_path, monkeypatch  # noqa: F811
):
    """A proxy cell (the base steered by a tuned/untuned proxy pair: the case that fed CPU
    ids to a CUDA proxy) and a PEFT cell run with the accelerator's device faked to meta:
    every module call, in training and in every metric, sees its own parameters and every
    input tensor on the cell's device, and the cell placed every model it made there."""
    monkeypatch.setattr(Accelerator, "device", property(lambda self: torch.device("meta")))
    named = torch.device("cpu")
    placed: list[tuple[str, torch.device]] = []
    real_place = devices.place

    def place(model, device):
        placed.append((type(model).__name__, torch.device(device)))
        return real_place(model, device)

    monkeypatch.setattr(worker, "place", place)
    wrong: list[str] = []
    calls = {"n": 0}

    def check(module, args):
        calls["n"] += 1
        tensors = [*module.parameters(recurse=False), *module.buffers(recurse=False),
                   *(a for a in args if isinstance(a, torch.Tensor))]
        wrong.extend(f"{type(module).__name__}: {t.device}" for t in tensors
                     if t.device != named)

    data = local_suite(local_data, ["base"], model={"proxy": "small"})
    data["methods"] = ["proxy_sft", {"name": "peft_lora", "peft": {
        "peft_type": "LORA", "r": 2, "target_modules": "all-linear"}}]
    data["lrs"] = {"proxy_sft": [1e-3], "peft_lora": [1e-3]}
    data["proxy_alphas"] = [1.0]
    suite = narrow(suite_from_dict(data), device="cpu")
    handle = torch.nn.modules.module.register_module_forward_pre_hook(check)
    try:
        outcome = run_suite(suite, tmp_path / "run", workers=0, progress=False)
    finally:
        handle.remove()
    assert not wrong, wrong[:5]
    assert calls["n"] > 1000  # training, generation and every likelihood metric ran
    assert sorted(c.key.method for c in outcome.results.cells) == ["peft_lora", "proxy_sft"]
    assert all(c.device == "cpu" and c.train_config["device"] == "cpu"
               for c in outcome.results.cells)
    # proxy cell: the base, the untuned and the tuned proxy; PEFT cell: the base and the model
    assert len(placed) == 5 and {d for _, d in placed} == {named}


def test_a_run_refuses_a_device_this_machine_lacks(local_data, tmp_path, monkeypatch):  # noqa: F811
    fake_gpus(monkeypatch, 0)
    suite = suite_from_dict(local_suite(local_data, ["base"]))
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        run_suite(suite, tmp_path / "run", workers=0, progress=False, device="cuda:0")
    assert not Path(tmp_path / "run").exists()  # refused before the run directory is made
    with pytest.raises(ConfigError, match="not a torch device"):
        suite_from_dict({**local_suite(local_data, ["base"]), "device": "gpu0"})


def test_the_gpu_suite_is_the_smollm2_suite_sized_up(monkeypatch):
    from routekit.compare.cells import first_phase
    from routekit.compare.suite import load_suite

    cpu, gpu = load_suite("smollm2"), load_suite("smollm2_gpu")
    assert gpu.device == "cuda" and gpu.model.path == cpu.model.path == "smollm2"
    assert gpu.tasks == cpu.tasks and gpu.model.tasks == cpu.model.tasks
    assert len(gpu.seeds) > len(cpu.seeds)
    assert gpu.steps * gpu.batch_size >= 25 * cpu.steps * cpu.batch_size
    for key in ("test", "ood", "probes", "heldout_text", "kl_prompts"):
        assert getattr(gpu.eval, key) > getattr(cpu.eval, key), key
    assert set(cpu.methods) < set(gpu.methods)
    assert gpu.method("pissa_sft").peft["init_lora_weights"] == "pissa_niter_4"
    assert gpu.method("osf_sft").peft["peft_type"] == "OSF"
    assert len(first_phase(gpu)) == 31  # the count docs/compare.md's time estimate uses
    fake_gpus(monkeypatch, 0)
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        run_suite(gpu, "unused", workers=0, progress=False)


def test_the_command_line_names_the_device_and_peft_methods(local_data, tmp_path, monkeypatch):  # noqa: F811
    """--device reaches run_suite through the suite; --methods adds a peft:FILE method whose
    rates --lrs names."""
    import yaml

    from routekit import cli
    from routekit.compare import runner

    (tmp_path / "osf.yaml").write_text(yaml.safe_dump(
        {"peft_type": "OSF", "effective_rank": 12, "target_modules": ["q_proj"]}))
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(local_suite(local_data, ["base"])))
    seen = {}

    def run(suite, out, **kw):
        seen.update(suite=suite, kw=kw)
        raise SystemExit(0)

    monkeypatch.setattr(runner, "run_suite", run)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        cli.main(["compare", "--suite", "suite.yaml", "--device", "cpu", "--methods",
                  "base,peft:osf.yaml", "--lrs", "peft_osf=1e-4"])
    suite = seen["suite"]
    assert suite.device == "cpu" and suite.methods == ["base", "peft_osf"]
    assert suite.lrs["peft_osf"] == [1e-4]
