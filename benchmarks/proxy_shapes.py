"""How strong a world proxy fits the build's time budget: pretrain candidate shapes, score them.

Each candidate is pretrained exactly as ``routekit world build`` pretrains the proxy (same
corpus, seed, schedule, bf16 autocast), then scored greedily on the knowledge probes, each
skill's test split, and the clean format of the ``add`` and ``rev`` test items: whether the
proxy *knows* the answers that tuning it on the task would have to bring out. A proxy that
does not know them (the 96-wide one knew 21 of the 50 ``add`` items) has offsets that carry
nothing, whatever it is tuned with.

    python benchmarks/proxy_shapes.py                       # every candidate below
    python benchmarks/proxy_shapes.py --shape 128:320:2:4:1200:5e-3:40

A shape is hidden:mlp:layers:heads:steps:lr:batch. Seconds are wall time of the pretraining
alone; run nothing else meanwhile (two cores: a second job slows every step; the committed
lines marked ``"contended": true`` shared the cores with other work, so their seconds are
high). Appends one JSON line per candidate to benchmarks/results/proxy_shapes.jsonl.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from routekit.eval import evaluate
from routekit.tasks.base import Example, Task
from routekit.tasks.checkers import exact_match
from routekit.world.config import ModelSize, WorldConfig
from routekit.world.corpus import World, add_formats, rev_formats
from routekit.world.pretrain import encode_corpus, make_model, pretrain
from routekit.world.tasks import world_task
from routekit.world.tokenizer import build_tokenizer

OUT = Path(__file__).resolve().parent / "results" / "proxy_shapes.jsonl"
CANDIDATES = [
    "96:256:2:2:1200:5e-3:40",   # the proxy before (227,040 parameters)
    "96:256:2:2:1200:1e-2:40",
    "96:256:3:2:1200:5e-3:40",
    "128:384:2:4:1200:5e-3:40",
    "128:384:2:4:1000:5e-3:40",
    "128:384:2:4:750:5e-3:40",
    "128:256:2:4:800:5e-3:40",
    "128:320:2:4:1200:5e-3:36",
    "128:320:2:4:1200:5e-3:40",  # the shipped proxy (384,640)
    "128:352:3:4:1200:5e-3:40",  # over the budget (29% of the base), for scale
]


def score(shape: str, world: World, tok, stream: torch.Tensor) -> dict:
    h, i, layers, heads, steps, lr, bs = shape.split(":")
    cfg = WorldConfig()
    torch.manual_seed(cfg.seed)  # as routekit.world.build.build seeds each model
    model = make_model(ModelSize(hidden_size=int(h), intermediate_size=int(i),
                                 num_hidden_layers=int(layers), num_attention_heads=int(heads)),
                       tok, cfg.proxy_pretrain.seq_len)
    stats = pretrain(model, stream, cfg.proxy_pretrain.model_copy(
        update={"steps": int(steps), "lr": float(lr), "batch_size": int(bs)}), cfg.seed,
        progress=False)

    def acc(examples: list[Example]) -> float:
        return evaluate(model, tok, Task("clean", {"test": examples}, exact_match), "test").accuracy

    out = {"shape": shape, "params": sum(p.numel() for p in model.parameters()),
           "seconds": round(stats["seconds"], 1), "final_loss": round(stats["final_loss"], 3),
           "probes": evaluate(model, tok, world_task("facts", world=world), "test").accuracy}
    for skill in ("add", "rev", "hop"):
        out[skill] = evaluate(model, tok, world_task(skill, world=world), "test").accuracy
    out["add_clean"] = acc([Example(add_formats(a, b, 0)[0][0], str(a + b)) for a, b in world.add_test])
    out["rev_clean"] = acc([Example(rev_formats(w, "")[0][0], w[::-1]) for w in world.rev_test])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", action="append", help="hidden:mlp:layers:heads:steps:lr:batch")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    world = World(WorldConfig())
    tok = build_tokenizer()
    stream = encode_corpus(world.corpus_lines, tok)
    base_params = None
    for shape in args.shape or CANDIDATES:
        row = score(shape, world, tok, stream)
        if base_params is None:
            base_params = sum(p.numel() for p in make_model(WorldConfig().base, tok, 64).parameters())
        row["share_of_base_params"] = round(row["params"] / base_params, 3)
        row["contended"] = False  # measured alone, as the docstring asks
        print(json.dumps(row), flush=True)
        with OUT.open("a") as f:
            f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
