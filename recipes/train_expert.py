"""Train one expert from a YAML config and write it under --out.

    python recipes/train_expert.py recipes/configs/world/add_svf_rl.yaml --out experts/add_svf_rl
    accelerate launch recipes/train_expert.py recipes/configs/world/add_svf_rl.yaml --out ...

The same steps run behind ``routekit train CONFIG --out DIR``. Every option lives in the
config (validated by routekit.training.TrainConfig: an unknown key or a wrong type stops
here, naming the key); the script only says where things go.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from routekit.training import TrainConfig, train
from routekit.training.recipe import (
    check_output_dir,
    default_run_dir,
    load_config_model,
    resolve_task,
    save_trained,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("config", help="a YAML file under recipes/configs/")
    parser.add_argument("--out", default=None, help="output directory (default experts/<config name>)")
    parser.add_argument("--run-dir", default=None, help="checkpoints + log (default runs/<name of OUT>)")
    parser.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoint (refused if none)")
    args = parser.parse_args()

    # 1. The config: every key checked before any work starts.
    config = TrainConfig.from_yaml(args.config)
    out = Path(args.out or Path("experts") / Path(args.config).stem)
    run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(out)

    # 2. The model to train ("world", "world-proxy" or a local checkpoint), a check that OUT
    #    is new or an earlier output of this kind, and the task (world tasks: the model's world).
    model, tokenizer = load_config_model(config)
    check_output_dir(out, config.parameterization, tokenizer)
    task = resolve_task(config, model)

    # 3. Train: objective x parameterization from the config; checkpoints in RUN_DIR/checkpoint.
    result = train(model, tokenizer, task, config, out_dir=run_dir, resume=args.resume)

    # 4. Save the expert (SVF z vectors, LoRA adapter, or the whole model) to OUT, and the
    #    per-step log to RUN_DIR/train_result.json.
    save_trained(result, tokenizer, out, name=out.name, run_dir=run_dir)
    print(f"wrote {out}: {result.metrics()}")


if __name__ == "__main__":
    main()
