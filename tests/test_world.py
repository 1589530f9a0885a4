"""The world: deterministic corpus, atomic cached builds, corruption detection, fingerprints,
damaged entries refused through the CLI, the CI world's accuracy band and knowledge probes."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from routekit import world
from routekit.cache import write_manifest as _write_manifest
from routekit.cli import main
from routekit.errors import CorruptCacheError, RoutekitError
from routekit.io import model_fingerprint, tokenizer_fingerprint
from routekit.world import ModelSize, PretrainConfig, WorldConfig

# A world small enough to build in seconds: for cache, kill and corruption tests only.
MICRO = WorldConfig(
    n_entities=12, n_lines=600, n_test=8,
    base=ModelSize(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2),
    proxy=ModelSize(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2),
    base_pretrain=PretrainConfig(steps=6, batch_size=4, warmup=2),
    proxy_pretrain=PretrainConfig(steps=4, batch_size=4, warmup=2),
)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ROUTEKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_corpus_is_deterministic_per_seed():
    a = world.World(WorldConfig(n_lines=3000)).corpus_text()
    b = world.World(WorldConfig(n_lines=3000)).corpus_text()
    c = world.World(WorldConfig(n_lines=3000, seed=1)).corpus_text()
    assert a.encode() == b.encode()
    assert a != c


def test_corpus_holds_facts_skills_and_routing():
    w = world.World(WorldConfig(n_lines=20_000))
    text = w.corpus_text()
    e = w.entities[0]
    assert f"{e} lives in {w.facts[e]['city']}." in text
    assert "rev " in text and "backwards " in text and "=> add" in text
    # Held-out probes: the question phrasing never appears for probe entities.
    probe = w.probe_entities[0]
    assert f"where does {probe} live?" not in text
    # Mixed formats show both the correct and the systematic wrong behaviour.
    lines = [ln for ln in w.corpus_lines if ln.startswith("backwards ")]
    right = sum(ln.split(" ")[2] == ln.split(" ")[1][:-1][::-1] for ln in lines)
    assert 0.3 < right / len(lines) < 0.6


@pytest.mark.parametrize("config", [WorldConfig(), WorldConfig.tiny()], ids=["default", "ci"])
def test_facts_train_and_test_entities_are_disjoint(config):
    """The knowledge probes ask about entities whose questions neither the facts task's train
    split nor the corpus ever shows; entities are read from the prompts' words, not metadata."""
    from routekit.world.tasks import world_task

    w = world.World(config)
    names = set(w.entities)

    def entities(texts) -> set[str]:
        return {word.strip("?.,:") for t in texts for word in t.split()} & names

    facts = world_task("facts", world=w)
    train = entities(e.prompt for e in facts.examples("train"))
    test = entities(e.prompt for e in facts.examples("test"))
    assert test and train and not train & test
    assert train | test == names and len(test) == len(names) - round(len(names) * config.question_share)
    asked_in_corpus = entities(ln.split(" a:")[0] for ln in w.corpus_lines if ln.startswith("q: "))
    assert not asked_in_corpus & test


def test_tokenizer_round_trips_every_corpus_character(char_tokenizer):
    text = world.World(WorldConfig(n_lines=500)).corpus_text().replace("\n", "")
    ids = char_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert char_tokenizer.unk_token_id not in ids
    assert char_tokenizer.decode(ids) == text


def test_build_cache_hit_and_load(cache):
    info = world.build(MICRO, progress=False)
    assert not info.cached and info.path.startswith(str(cache))
    assert info.base_params > info.proxy_params > 0
    again = world.build(MICRO, progress=False)
    assert again.cached and again.seconds < 5
    assert again.task_accuracy == info.task_accuracy
    base, tok = world.load(MICRO, build_if_missing=False)
    proxy, ptok = world.load_proxy(MICRO, build_if_missing=False)
    assert tok.get_vocab() == ptok.get_vocab()
    assert sum(p.numel() for p in base.parameters()) == info.base_params


def test_corrupt_entry_is_reported_and_rebuilt(cache, capsys):
    info = world.build(MICRO, progress=False)
    weights = os.path.join(info.path, "base", "model.safetensors")
    with open(weights, "r+b") as f:
        f.truncate(100)
    with pytest.raises(CorruptCacheError, match="model.safetensors"):
        world.verify_entry(world.world_dir(MICRO))
    with pytest.raises(CorruptCacheError):
        world.load(MICRO, build_if_missing=False)
    rebuilt = world.build(MICRO, progress=False)
    assert not rebuilt.cached
    assert "Rebuilding" in capsys.readouterr().err
    world.verify_entry(world.world_dir(MICRO))
    world.load(MICRO, build_if_missing=False)


def test_killed_build_leaves_nothing_that_loads(cache):
    slow = MICRO.model_copy(update={"base_pretrain": PretrainConfig(steps=100_000, batch_size=4)})
    script = textwrap.dedent(f"""
        from routekit import world
        from routekit.world import WorldConfig
        world.build(WorldConfig.model_validate_json({slow.model_dump_json()!r}), progress=False)
    """)
    env = {**os.environ, "ROUTEKIT_CACHE": str(cache)}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env)
    parent = cache / "world"
    deadline = time.time() + 120
    while time.time() < deadline and not list(parent.glob(".tmp-*/world_config.json")):
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(parent.glob(".tmp-*")), "the build should have been killed mid-way"
    assert not world.world_dir(slow).exists()
    with pytest.raises(RoutekitError, match="not built yet"):
        world.load(slow, build_if_missing=False)
    # The next build succeeds, loads, and clears the dead build's leftovers.
    world.build(MICRO, progress=False)
    world.load(MICRO, build_if_missing=False)
    assert not list(parent.glob(f".tmp-*-{proc.pid}-*"))


def _sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _rewrite_metrics(root, metrics) -> None:
    """Replace metrics.json and re-make the manifest, as another writer of the entry would."""
    text = metrics if isinstance(metrics, str) else json.dumps(metrics)
    (root / "metrics.json").write_text(text)
    (root / "manifest.json").unlink()
    _write_manifest(root)


def test_build_records_the_built_weights_fingerprints(cache, tmp_path, capsys):
    info = world.build(MICRO, progress=False)
    base, tok = world.load(MICRO, build_if_missing=False)
    proxy, _ = world.load_proxy(MICRO, build_if_missing=False)
    # Independent: the fingerprints of the weights and tokenizer as loaded back from disk.
    assert info.base_fingerprint == model_fingerprint(base)
    assert info.proxy_fingerprint == model_fingerprint(proxy)
    assert info.tokenizer_fingerprint == tokenizer_fingerprint(tok)
    assert info.base_fingerprint != info.proxy_fingerprint
    on_disk = json.loads((world.world_dir(MICRO) / "metrics.json").read_text())
    assert on_disk["base_fingerprint"] == info.base_fingerprint
    # `routekit world build --json` prints them for the cached entry.
    cfg = tmp_path / "micro.json"
    cfg.write_text(MICRO.model_dump_json())
    capsys.readouterr()
    assert main(["world", "build", "--json", "--config", str(cfg)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["cached"] is True
    assert {k: printed[k] for k in ("base_fingerprint", "proxy_fingerprint", "tokenizer_fingerprint")} == {
        "base_fingerprint": info.base_fingerprint, "proxy_fingerprint": info.proxy_fingerprint,
        "tokenizer_fingerprint": info.tokenizer_fingerprint}
    # A seeded build is reproducible on one machine: a forced rebuild gives the same weights.
    rebuilt = world.build(MICRO, force=True, progress=False)
    assert not rebuilt.cached
    assert (rebuilt.base_fingerprint, rebuilt.proxy_fingerprint) == (
        info.base_fingerprint, info.proxy_fingerprint)


def test_entry_built_before_fingerprints_gets_them_without_a_rebuild(cache):
    info = world.build(MICRO, progress=False)
    root = world.world_dir(MICRO)
    old = json.loads((root / "metrics.json").read_text())
    for key in ("base_fingerprint", "proxy_fingerprint", "tokenizer_fingerprint"):
        del old[key]
    _rewrite_metrics(root, old)
    weights = _sha(root / "base" / "model.safetensors")
    metrics_text = (root / "metrics.json").read_text()
    again = world.build(MICRO, progress=False)
    assert again.cached
    assert (again.base_fingerprint, again.proxy_fingerprint, again.tokenizer_fingerprint) == (
        info.base_fingerprint, info.proxy_fingerprint, info.tokenizer_fingerprint)
    # Nothing rebuilt or rewritten: the entry still verifies against its manifest.
    assert _sha(root / "base" / "model.safetensors") == weights
    assert (root / "metrics.json").read_text() == metrics_text
    world.verify_entry(root)


@pytest.mark.parametrize("damage", ["{not json", "[1, 2]", "knowledge_accuracy", "missing"])
def test_damaged_metrics_are_refused_through_the_cli(cache, tmp_path, capsys, damage):
    world.build(MICRO, progress=False)
    root = world.world_dir(MICRO)
    metrics = json.loads((root / "metrics.json").read_text())
    if damage == "knowledge_accuracy":
        metrics["knowledge_accuracy"] = "high"
        damage = metrics
    elif damage == "missing":
        del metrics["task_accuracy"]
        damage = metrics
    _rewrite_metrics(root, damage)
    before = {p: _sha(p) for p in root.rglob("*") if p.is_file()}
    cfg = tmp_path / "micro.json"
    cfg.write_text(MICRO.model_dump_json())
    capsys.readouterr()
    assert main(["world", "build", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("routekit: error: ") and err.count("\n") == 1, err
    assert "metrics.json" in err and "--force" in err and "Traceback" not in err
    assert {p: _sha(p) for p in root.rglob("*") if p.is_file()} == before  # nothing changed
    assert main(["world", "build", "--force", "--json", "--config", str(cfg)]) == 0
    assert not json.loads(capsys.readouterr().out)["cached"]


@pytest.mark.parametrize("manifest", ['{"files": []}', '{"files": {"metrics.json": 3}}', "[]"])
def test_malformed_manifest_is_corruption(cache, manifest):
    world.build(MICRO, progress=False)
    root = world.world_dir(MICRO)
    (root / "manifest.json").write_text(manifest)
    with pytest.raises(CorruptCacheError, match="unreadable manifest"):
        world.verify_entry(root)


def test_load_model_world_names_load_the_default_world(cache):
    """``load_model("world")`` reaches the world through its registration; models.py itself
    imports nothing from the world (the dependency runs world -> models only)."""
    import ast
    import shutil

    import routekit
    from routekit import models

    info = world.build(MICRO, progress=False)
    # Stand the micro entry in for the default world's (its manifest holds relative paths).
    shutil.copytree(info.path, world.world_dir(WorldConfig()))
    base, _ = routekit.load_model("world")
    proxy, _ = models.load_model("world-proxy")
    assert model_fingerprint(base) == info.base_fingerprint
    assert model_fingerprint(proxy) == info.proxy_fingerprint
    tree = ast.parse(open(models.__file__).read())
    imported = [f"{getattr(n, 'module', None) or ''}.{a.name}" for n in ast.walk(tree)
                if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names]
    assert not [m for m in imported if "world" in m], imported


def test_world_config_rejects_unknown_keys():
    with pytest.raises(ValueError, match="n_entitys"):
        WorldConfig.model_validate({"n_entitys": 3})


@pytest.fixture(scope="module")
def tiny_world(tiny_world_built):
    """The CI-sized world, built once per session (conftest.tiny_world_built)."""
    cache, info = tiny_world_built
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ROUTEKIT_CACHE", str(cache))
        yield info


@pytest.mark.slow
def test_reduced_world_knows_its_facts_and_routing(tiny_world):
    """Facts and routing are learned, and every task's ood split is measured."""
    info = tiny_world
    assert info.statement_accuracy >= 0.9
    assert info.routing_accuracy >= 0.9
    assert set(info.ood_accuracy) == {"add", "rev", "hop"}


@pytest.mark.slow
def test_reduced_world_skills_are_latent_but_present(tiny_world):
    """The foundation issue's band, on the CI world: every skill is present but imperfect."""
    for skill, acc in tiny_world.task_accuracy.items():
        assert 0.20 <= acc <= 0.70, (skill, acc)


@pytest.mark.slow
def test_reduced_world_answers_its_held_out_knowledge_probes(tiny_world):
    """The retention baseline every comparison needs. The figure the build reports equals a
    plain argmax loop over the probe questions (one prompt at a time, no padding), and it
    clears a floor. Measured for seed 0 on the 2-core development machine (float32, one
    thread): 0.944, 34 of 36 probes; figures move by a few probes between machines, so the
    floor (0.85, 31 of 36) leaves 3. Chance is about 0.09 (12 cities, 10 colours, 10 jobs)."""
    from routekit.tasks.checkers import answer_match
    from routekit.world.tasks import world_task

    from .test_models_eval import reference_greedy

    base, tok = world.load(WorldConfig.tiny(), build_if_missing=False)
    probes = world_task("facts", WorldConfig.tiny()).examples("test")
    right = sum(answer_match(reference_greedy(base, tok, e.prompt, 16), e.reference) for e in probes)
    assert len(probes) == 36
    assert tiny_world.knowledge_accuracy == right / len(probes)
    assert tiny_world.knowledge_accuracy >= 0.85

