"""How closely z = 1 reproduces the base: SVD reconstruction error and factored-forward logits.

Run from the repository root:  python benchmarks/svf_z1_tolerance.py [--large] [--world]
Prints one JSON line per case. --large adds one realistic-size random matrix (5632 x 2048,
std 0.02, the shape of a 1B Llama MLP projection) for the reconstruction error alone;
--world adds the world base (if it is built; never builds it) with SVF on its MLP matrices.
"""

from __future__ import annotations

import json
import sys
import tempfile

import torch

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "tests"))
from conftest import tiny_causal_lm  # noqa: E402

from routekit.svf import SVFConfig, get_svf_model, svf_layers  # noqa: E402
from routekit.svf.factors import compute_factors, linear_weight  # noqa: E402

torch.set_num_threads(1)


def recon(w: torch.Tensor) -> dict[str, float]:
    u, s, vh = compute_factors(w)
    r = (u * s) @ vh
    w32 = w.float()
    err = (r - w32).abs()
    back = r.to(w.dtype)  # what merging z = 1 writes back in the weight's dtype
    return {
        "max_abs_err": float(err.max()),
        "max_abs_w": float(w32.abs().max()),
        "max_err_over_max_w": float(err.max() / w32.abs().max()),
        "frob_rel_err": float((r - w32).norm() / w32.norm()),
        "share_entries_changed_by_merge_at_z1": float((back != w).float().mean()),
    }


def main() -> None:
    cache = tempfile.mkdtemp()
    for dtype in (torch.float32, torch.bfloat16):
        for arch in ("llama", "qwen2", "gpt2"):
            for hidden in (32, 256):
                base = tiny_causal_lm(arch, hidden=hidden).to(dtype)
                x = torch.randint(3, 56, (4, 24))
                with torch.no_grad():
                    want = base(x).logits.float()
                ws = {n: linear_weight(m).detach().clone() for n, m in base.named_modules()
                      if n.endswith(("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
                                     "mlp.c_fc", "mlp.c_proj", "q_proj", "o_proj",
                                     "attn.c_attn", "attn.c_proj"))}
                rs = [recon(w) for w in ws.values()]
                model = get_svf_model(base, SVFConfig(target_modules="all-linear",
                                                      cache_dir=cache))
                assert len(svf_layers(model)) > 0
                with torch.no_grad():
                    got = model(x).logits.float()
                diff = (got - want).abs()
                print(json.dumps({
                    "arch": arch, "hidden": hidden, "dtype": str(dtype).removeprefix("torch."),
                    "recon_max_abs_err": max(r["max_abs_err"] for r in rs),
                    "recon_max_err_over_max_w": max(r["max_err_over_max_w"] for r in rs),
                    "recon_max_frob_rel_err": max(r["frob_rel_err"] for r in rs),
                    "merge_z1_share_changed": max(r["share_entries_changed_by_merge_at_z1"]
                                                  for r in rs),
                    "logits_max_abs_diff": float(diff.max()),
                    "logits_max_abs": float(want.abs().max()),
                    "logits_rel": float(diff.max() / want.abs().max()),
                }))
    if "--world" in sys.argv:
        from routekit import world

        base, tok = world.load(build_if_missing=False)
        x = torch.tensor([tok("country of kulo? vardia. sum of 3 and 4 is 7")["input_ids"]] * 2)
        with torch.no_grad():
            want = base(x).logits.float()
        ws = {n: linear_weight(m).detach().clone() for n, m in base.named_modules()
              if n.endswith(("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"))}
        rs = [recon(w) for w in ws.values()]
        model = get_svf_model(base, SVFConfig(target_modules="mlp", cache_dir=cache))
        with torch.no_grad():
            diff = (model(x).logits.float() - want).abs()
        print(json.dumps({
            "case": "world base, SVF on the MLP", "recon_max_abs_err": max(r["max_abs_err"] for r in rs),
            "recon_max_err_over_max_w": max(r["max_err_over_max_w"] for r in rs),
            "logits_max_abs_diff": float(diff.max()), "logits_rel": float(diff.max() / want.abs().max()),
        }))
    if "--large" in sys.argv:
        g = torch.Generator().manual_seed(0)
        for dtype in (torch.float32, torch.bfloat16):
            w = (0.02 * torch.randn(5632, 2048, generator=g)).to(dtype)
            print(json.dumps({"case": "random 5632x2048 std 0.02",
                              "dtype": str(dtype).removeprefix("torch."), **recon(w)}))


if __name__ == "__main__":
    main()
