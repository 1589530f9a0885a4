"""Why the classifier router fails out of format: features, pooling, head and fit, measured.

Every row fits a probe on features of the world base (mean-pooled or last-token hidden
states, one layer or several; or the base's log-probabilities of the routing labels' first
letters after ``task: <prompt> => ``) and scores routing accuracy on bench_routing.py's
in-format test and ood sets and its out-of-format set. Fits use each task's train prompts
(one format) unless a row says "every format" (the train items in all three formats; the
clean and other mixed formats are then fitted on). The last rows: the errors of the old and
the new classifier, and an abstention threshold chosen on a held-out 20% of the fitting
prompts.

    python benchmarks/routing_why.py

Writes benchmarks/results/routing_why.json (README.md, "Out of format").
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_routing import (  # noqa: E402
    CLASSIFIER,
    RESULTS,
    SKILLS,
    every_format_prompts,
    label_accuracy,
    mixed_set,
    out_of_format_set,
)

from routekit import world  # noqa: E402
from routekit.io import atomic_write_json  # noqa: E402
from routekit.models import left_pad  # noqa: E402
from routekit.routing import ClassifierRouter  # noqa: E402
from routekit.routing.classifier import fit_logistic  # noqa: E402
from routekit.tasks import get_task  # noqa: E402
from routekit.world.corpus import World  # noqa: E402

NAMES = [*SKILLS, "none"]
TEMPLATE = "task: {prompt} =>"


@torch.no_grad()
def states(base, tok, prompts, template=None):
    """(mean-pooled (N, L+1, D), last-token (N, L+1, D), next-token log-probs (N, V))."""
    if template:
        prompts = [template.format(prompt=p) for p in prompts]
    means, lasts, lps = [], [], []
    for i in range(0, len(prompts), 64):
        enc = left_pad(tok, prompts[i:i + 64], "cpu")
        ids, mask = enc["input_ids"], enc["attention_mask"]
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        out = base(input_ids=ids, attention_mask=mask, position_ids=pos,
                   output_hidden_states=True, use_cache=False)
        m = mask[..., None].float()
        means.append(torch.stack([(h * m).sum(1) / m.sum(1) for h in out.hidden_states], 1))
        lasts.append(torch.stack([h[:, -1] for h in out.hidden_states], 1))
        lps.append(torch.log_softmax(out.logits[:, -1].float(), -1))
    return torch.cat(means), torch.cat(lasts), torch.cat(lps)


def logistic(x, y, l2=1e-3):
    mu, sd = x.mean(0), x.std(0).clamp(min=1e-6)
    w, b = fit_logistic((x - mu) / sd, y, len(NAMES), l2=l2)
    return lambda q: (((q - mu) / sd) @ w.T + b).argmax(-1)


def centroid(x, y):
    mu, sd = x.mean(0), x.std(0).clamp(min=1e-6)
    z = (x - mu) / sd
    c = torch.nn.functional.normalize(torch.stack([z[y == k].mean(0) for k in range(len(NAMES))]), dim=-1)
    return lambda q: (torch.nn.functional.normalize((q - mu) / sd, dim=-1) @ c.T).argmax(-1)


def knn(k):
    def fit(x, y):
        mu, sd = x.mean(0), x.std(0).clamp(min=1e-6)
        z = torch.nn.functional.normalize((x - mu) / sd, dim=-1)
        return lambda q: torch.mode(y[(torch.nn.functional.normalize((q - mu) / sd, dim=-1)
                                       @ z.T).topk(k, -1).indices], -1).values
    return fit


def main() -> None:
    torch.set_num_threads(1)
    base, tok = world.load()
    tasks = {n: get_task(n) for n in SKILLS}
    facts = get_task("facts")
    w = World(tasks["rev"].world)
    oof = out_of_format_set(w)
    fit_prompts = {**{n: tasks[n].prompts("train") for n in SKILLS}, "none": facts.prompts("train")}
    sets = {
        "fit": [(n, p) for n in NAMES for p in fit_prompts[n]],
        "every format": [(n, p) for n, ps in every_format_prompts(w, facts).items() for p in ps],
        "test": [(lab, e.prompt) for lab, e, _ in mixed_set(tasks, facts, "test")],
        "ood": [(lab, e.prompt) for lab, e, _ in mixed_set(tasks, facts, "ood")],
        "out of format": [(lab, p) for lab, p, _ in oof],
    }
    feats = {}
    for tpl in (None, TEMPLATE + " "):
        for k, rows in sets.items():
            y = torch.tensor([NAMES.index(lab) for lab, _ in rows])
            feats[(tpl, k)] = (*states(base, tok, [p for _, p in rows], tpl), y)
    letters = [tok.convert_tokens_to_ids(c) for c in "arhf"]  # add rev hop fact
    table = []

    def row(desc, sel, fitter, tpl=None, fitset="fit"):
        f = feats[(tpl, fitset)]
        pred = fitter(sel(f), f[3])
        accs = {k: round(float(pred(sel(feats[(tpl, k)])).eq(feats[(tpl, k)][3]).float().mean()), 3)
                for k in ("test", "ood", "out of format")}
        table.append({"row": desc, **accs})
        print(f"{desc:70s} {accs}", flush=True)

    mean = lambda ls: (lambda f: f[0][:, ls].flatten(1))  # noqa: E731
    last = lambda ls: (lambda f: f[1][:, ls].flatten(1))  # noqa: E731
    n = feats[(None, "fit")][0].shape[1]
    for layer in range(n):
        row(f"mean-pooled layer {layer}, logistic", mean([layer]), logistic)
    for layer in range(n):
        row(f"last token, layer {layer}, logistic", last([layer]), logistic)
    row("mean-pooled layers 1-4, logistic", mean(list(range(1, n))), logistic)
    for l2 in (0.1, 1.0, 10.0):
        row(f"mean-pooled last layer, logistic l2={l2}", mean([n - 1]),
            lambda x, y, l2=l2: logistic(x, y, l2))
    row("last token of 'task: <prompt> => ', layer 4, logistic", last([n - 1]), logistic,
        tpl=TEMPLATE + " ")
    row("label-letter log-probs after 'task: <prompt> => ', logistic",
        lambda f: f[2][:, letters], logistic, tpl=TEMPLATE + " ")
    for layer in range(n):
        row(f"mean-pooled layer {layer}, nearest centroid", mean([layer]), centroid)
    row("mean-pooled layers 0-4, nearest centroid (the fix)", mean(list(range(n))), centroid)
    row("mean-pooled layers 1-4, 15 nearest neighbours", mean(list(range(1, n))), knn(15))
    row("mean-pooled last layer, logistic, every format", mean([n - 1]), logistic,
        fitset="every format")
    row("mean-pooled layers 1-4, logistic, every format", mean(list(range(1, n))), logistic,
        fitset="every format")

    # Errors of the old and the new classifier, and abstention calibrated on fitting data.
    prompts = [p for _, p, _ in oof]
    errors, abstain = {}, {}
    for label, kw in (("before", {}), ("fix", CLASSIFIER)):
        r = ClassifierRouter.fit(base, tok, fit_prompts, experts=list(SKILLS), seed=0, **kw)
        errs: dict[str, int] = {}
        for c, (lab, _, kind) in zip(r.classify(prompts), oof):
            if c != lab:
                errs[f"{lab} / {kind} -> {c}"] = errs.get(f"{lab} / {kind} -> {c}", 0) + 1
        errors[label] = dict(sorted(errs.items(), key=lambda kv: -kv[1]))
        rng, part, held = random.Random(0), {}, []
        for name, ps in fit_prompts.items():
            ps = list(ps)
            rng.shuffle(ps)
            held += ps[:len(ps) // 5]
            part[name] = ps[len(ps) // 5:]
        sub = ClassifierRouter.fit(base, tok, part, experts=list(SKILLS), seed=0, **kw)
        conf = sub.probabilities(held).max(-1).values.sort().values
        threshold = float(conf[int(0.01 * len(conf))])  # keeps >= 99% of held-out prompts
        r.set_output(min_confidence=threshold)
        abstain[label] = {"threshold": threshold, "held_out_min_confidence": float(conf[0]),
                          "out_of_format": label_accuracy(r.classify(prompts), oof)["overall"]}
        print(label, errors[label], abstain[label], flush=True)
    atomic_write_json(RESULTS / "routing_why.json",
                      {"table": table, "errors": errors, "abstention": abstain})


if __name__ == "__main__":
    main()
