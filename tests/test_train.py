"""The main job through the real configs: outputs, learning, overrides, every config group,
every experiment, one-line CLI errors, CPU DDP, and a GPU run when there is one."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch
from omegaconf import open_dict

from finediff import names
from finediff.hard_prompts import METHODS
from tests.conftest import ROOT, compose, requires_gpu, run_train, tiny_overrides


def test_outputs_and_checkpoint_hold_prompt_only(tiny_dirs, tmp_path):
    run_train(tiny_dirs, tmp_path)
    record = torch.load(tmp_path / names.SOFT_PROMPT_FILE, weights_only=True)
    assert record["prompt"].shape == (8, 64) and record["num_soft_prompt_tokens"] == 8
    assert record["pair"]["base"] == str(tiny_dirs["base"]) and record["divergence"] == "kl_ft_base"
    metrics = json.loads((tmp_path / names.METRICS_FILE).read_text())
    assert set(names.VAL_METRIC_KEYS) <= set(metrics)
    assert metrics["global_step"] == 6
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert list(ckpt["state_dict"]) == ["soft_prompt.weight"]
    assert (tmp_path / "checkpoints" / "last.ckpt").stat().st_size < 100_000


@pytest.mark.parametrize("positions,margin", [("text", 1.2), ("response", 1.0)])
def test_learned_prompt_beats_baselines_on_held_out_texts(tiny_dirs, tmp_path, positions, margin):
    """At the text positions by 20%; over the answers (the tiny finetuned model gives the
    same answer to every prompt, so a prompt moves it little) by any margin."""
    metrics = run_train(tiny_dirs, tmp_path, "trainer.max_steps=30", "trainer.val_check_interval=10",
                        "data.max_texts_per_category=100", f"module.positions={positions}")
    learned = metrics[names.VAL_DIVERGENCE]
    assert learned > margin * metrics[names.VAL_DIVERGENCE_NO_PROMPT], metrics
    assert learned > margin * metrics[names.VAL_DIVERGENCE_RANDOM_PROMPT], metrics


def test_resume_continues_like_an_uninterrupted_run(tiny_dirs, tmp_path):
    """Resume a one-epoch run (8 steps) to 16 steps; the prompt, its optimiser state and the
    batch order are restored, so it ends where a 16-step run ends."""
    steps = ["trainer.val_check_interval=4", "evidence.steps=[]"]
    run_train(tiny_dirs, tmp_path / "a", "trainer.max_steps=8", *steps)
    run_train(tiny_dirs, tmp_path / "b", f"ckpt_path={tmp_path / 'a' / 'checkpoints' / 'last.ckpt'}",
              "trainer.max_steps=16", *steps)
    run_train(tiny_dirs, tmp_path / "c", "trainer.max_steps=16", *steps)
    first, resumed, whole = (torch.load(tmp_path / d / names.SOFT_PROMPT_FILE, weights_only=True)
                             for d in ("a", "b", "c"))
    assert first["global_step"] == 8 and resumed["global_step"] == whole["global_step"] == 16
    assert not torch.allclose(resumed["prompt"], first["prompt"])  # it trained on
    torch.testing.assert_close(resumed["prompt"], whole["prompt"])


@pytest.mark.parametrize("logger", ["csv", "wandb", "none"])
def test_logger_overrides(tiny_dirs, tmp_path, logger):
    run_train(tiny_dirs, tmp_path, f"logger={logger}", "trainer.max_steps=2")
    assert (tmp_path / names.METRICS_FILE).exists()
    assert (tmp_path / "wandb").exists() == (logger == "wandb")
    assert (tmp_path / "csv").exists() == (logger == "csv")
    if logger == "wandb":  # offline run: plots as images, the dataset and hard prompts as tables
        run = next((tmp_path / "wandb").glob("offline-run-*"))
        media = {p.name.split("_")[0] for p in (run / "files" / "media").rglob("*") if p.is_file()}
        assert {"lens", "report", "divergent", "hard"} <= media, media


@pytest.mark.parametrize("divergence", ["kl_base_ft", "symmetric_kl", "jsd"])
def test_other_divergences_and_options(tiny_dirs, tmp_path, divergence):
    run_train(tiny_dirs, tmp_path, f"module.divergence={divergence}", "module.temperature=2.0",
              "module.gradient_checkpointing=true", "module.init=random", "trainer.max_steps=2",
              "module.num_soft_prompt_tokens=3")
    assert torch.load(tmp_path / names.SOFT_PROMPT_FILE, weights_only=True)["prompt"].shape == (3, 64)


def test_adapter_override_and_debug_fdr(tiny_dirs, tmp_path):
    run_train(tiny_dirs, tmp_path, "model.finetuned=null", f"model.adapter={tiny_dirs['adapter']}",
              "debug=fdr")
    assert (tmp_path / names.SOFT_PROMPT_FILE).exists()


def _config_names(group: str) -> list[str]:
    return sorted(p.stem for p in (ROOT / "configs" / group).glob("*.yaml") if not p.stem.startswith("_"))


STRATEGIES = {"cpu": "SingleDeviceStrategy", "default": "SingleDeviceStrategy", "gpu": "SingleDeviceStrategy",
              "ddp": "DDPStrategy", "fsdp": "ModelParallelStrategy", "deepspeed": "DeepSpeedStrategy"}


@pytest.mark.parametrize("trainer", _config_names("trainer"))
def test_every_trainer_config_builds(tiny_dirs, tmp_path, trainer):
    """Every trainer config composes and builds its Lightning Trainer with its strategy
    (on the CPU here: a GPU config's accelerator is swapped, DeepSpeed constructs without
    CUDA though it trains only with it; the GPU runs are the GPU tests below)."""
    import hydra

    cfg = compose("train", tiny_overrides(tiny_dirs, tmp_path) + [f"trainer={trainer}"])
    if trainer == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        pytest.skip("deepspeed is not installed (make install puts it in with the test extras)")
    with open_dict(cfg):
        cfg.trainer.accelerator = "cpu"
        if cfg.trainer.get("precision") == "bf16-mixed" and trainer == "deepspeed":
            cfg.trainer.precision = "32-true"  # DeepSpeed's bf16 checks CUDA when built
    built = hydra.utils.instantiate(cfg.trainer, logger=False)
    assert type(built).__name__ == "Trainer" and built.max_steps == cfg.trainer.max_steps
    assert type(built.strategy).__name__ == STRATEGIES[trainer]
    assert set(STRATEGIES) == set(_config_names("trainer"))  # a new config gets its expected strategy here


def test_slurm_launcher_config_composes(tiny_dirs, tmp_path):
    """hydra/launcher=slurm composes to the submitit SLURM launcher with the README's keys."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = hydra_compose("train", overrides=tiny_overrides(tiny_dirs, tmp_path) + [
            "hydra/launcher=slurm", "hydra.launcher.partition=gpu"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher.partition == "gpu" and launcher.timeout_min == 240 and launcher.gpus_per_node == 1
    from hydra.utils import get_class

    assert get_class(launcher._target_).__name__ == "SlurmLauncher"


def test_every_config_group_instantiates(tiny_dirs, tmp_path):
    import hydra

    for logger in _config_names("logger"):
        cfg = compose("train", tiny_overrides(tiny_dirs, tmp_path) + [f"logger={logger}"])
        for conf in (cfg.logger or {}).values():
            built = hydra.utils.instantiate(conf)
            assert f"{type(built).__module__}.{type(built).__name__}" == conf._target_
    for callbacks in _config_names("callbacks"):
        cfg = compose("train", tiny_overrides(tiny_dirs, tmp_path, evidence=False) + [f"callbacks={callbacks}"])
        for conf in (cfg.callbacks or {}).values():
            built = hydra.utils.instantiate(conf)
            assert conf._target_.endswith(type(built).__name__), conf._target_
    for debug in _config_names("debug"):
        assert compose("train", tiny_overrides(tiny_dirs, tmp_path) + [f"debug={debug}"]).trainer.devices == 1
    cfg = compose("train", tiny_overrides(tiny_dirs, tmp_path) + ["module.num_soft_prompt_tokens=5"])
    pair = hydra.utils.instantiate(cfg.model)
    module = hydra.utils.instantiate(cfg.module, pair=pair)
    assert module.n_trainable == 5 * pair.hidden_size
    assert module.n_frozen == sum(p.numel() for p in pair.parameters())
    from finediff.divergent_dataset import GenerationConfig

    assert GenerationConfig(**cfg.generation).max_new_tokens == cfg.generation.max_new_tokens


@pytest.mark.parametrize("experiment", _config_names("experiment"))
def test_every_experiment_runs_one_step(tiny_dirs, tmp_path, experiment):
    """Each experiment as configured, on the tiny pair: an organism's runs told (its
    target category), the audit untold (its survey picks the texts)."""
    cfg = compose("train", [f"experiment={experiment}"])
    told = [] if cfg.data.categories is None else [f"data.categories=[{cfg.data.categories[0]}]"]
    survey = [] if told else ["data.categories=null", "evidence.survey.max_texts_per_group=4"]
    small = {} if told else {"finediff.survey.MAX_NEW_TOKENS": 4, "finediff.survey.N_TRAIN": 4,
                             "finediff.survey.N_VAL": 2}
    metrics = run_train(tiny_dirs, tmp_path, f"experiment={experiment}", "model.adapter=null",
                        "trainer.max_steps=1", "trainer.val_check_interval=1", "evidence.steps=[]",
                        f"model.base={tiny_dirs['base']}", f"model.finetuned={tiny_dirs['finetuned']}", *told, *survey,
                        values=small)
    assert names.VAL_DIVERGENCE in metrics
    assert json.loads((tmp_path / names.METRICS_FILE).read_text())[names.GLOBAL_STEP] == 1
    assert (tmp_path / names.SURVEY_TEXTS).exists() == (experiment == "audit")


def _cli(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_cpu_ddp_two_processes(tiny_dirs, tmp_path):
    proc = _cli(tiny_overrides(tiny_dirs, tmp_path, evidence=False) + [
        "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.max_steps=3",
        "trainer.val_check_interval=3", "data.batch_size=2", "evidence.steps=[]"], timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in proc.stderr + proc.stdout
    metrics = json.loads((tmp_path / names.METRICS_FILE).read_text())
    assert metrics["global_step"] == 3
    assert torch.load(tmp_path / names.SOFT_PROMPT_FILE, weights_only=True)["prompt"].shape == (8, 64)


def test_cpu_ddp_and_fsdp_two_processes(tiny_dirs, tmp_path):
    """DDP and FSDP2 (trainer=fsdp: every block of both models sharded, the prompt's gradient
    averaged) on two gloo processes: three steps of each give the same prompt, and it moved."""
    from transformers import AutoModelForCausalLM

    from finediff.soft_prompt import SoftPrompt

    common = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.max_steps=3", "trainer.val_check_interval=3",
              "data.batch_size=2", "evidence.steps=[]", "module.positions=text"]
    prompts = {}
    for trainer in ("ddp", "fsdp"):
        out = tmp_path / trainer
        extra = ["trainer.precision=32-true"] if trainer == "fsdp" else []
        proc = _cli(tiny_overrides(tiny_dirs, out, evidence=False) + [f"trainer={trainer}", *common, *extra], timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in proc.stderr + proc.stdout
        assert json.loads((out / names.METRICS_FILE).read_text())["global_step"] == 3
        prompts[trainer] = torch.load(out / names.SOFT_PROMPT_FILE, weights_only=True)["prompt"]
    assert prompts["ddp"].shape == (8, 64)
    assert "sharded 4 blocks of the pair over 2 processes" in (tmp_path / "fsdp" / "train.log").read_text()
    assert torch.allclose(prompts["fsdp"], prompts["ddp"], atol=1e-5)
    base = AutoModelForCausalLM.from_pretrained(tiny_dirs["base"])
    start = SoftPrompt(base.get_input_embeddings(), base.config.vocab_size, 8, "vocab", seed=0).weight
    assert (prompts["fsdp"] - start).abs().max() > 1e-4  # it trained


def test_bf16_mixed_on_cpu_keeps_the_kl_in_float32(tiny_dirs, tmp_path, tiny_pair):
    """trainer.precision=bf16-mixed runs on CPU; under autocast the divergence is still
    computed (and returned) in float32, close to the float32 run's."""
    from finediff.divergence import token_divergence

    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = tiny_pair.finetuned(ids).logits, tiny_pair.base(ids).logits
        assert a.dtype == torch.bfloat16
        d = token_divergence(a, b)
    assert d.dtype == torch.float32
    runs = {p: run_train(tiny_dirs, tmp_path / p, "evidence.steps=[]", f"trainer.precision={p}")
            for p in ("32-true", "bf16-mixed")}
    assert runs["bf16-mixed"][names.VAL_DIVERGENCE] == pytest.approx(runs["32-true"][names.VAL_DIVERGENCE], rel=0.1)


@requires_gpu
@pytest.mark.gpu
def test_gpu_run(tiny_dirs, tmp_path):
    run_train(tiny_dirs, tmp_path, "trainer=gpu", "trainer.max_steps=3", "trainer.precision=bf16-mixed")
    assert (tmp_path / names.METRICS_FILE).exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
@pytest.mark.parametrize("trainer", ["fsdp", "deepspeed"])
def test_sharded_pair_on_two_gpus(tiny_dirs, tmp_path, trainer):
    """trainer=fsdp (FSDP2) and trainer=deepspeed (ZeRO-3) on two GPUs: the frozen pair
    sharded, only the prompt trained; three steps run and the prompt is saved."""
    if trainer == "deepspeed":
        pytest.importorskip("deepspeed")
    common = ["trainer.devices=2", "trainer.max_steps=3", "trainer.val_check_interval=3", "data.batch_size=2",
              "evidence.steps=[]", "module.positions=text", f"trainer={trainer}"]
    proc = _cli(tiny_overrides(tiny_dirs, tmp_path, evidence=False) + common, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / names.METRICS_FILE).read_text())["global_step"] == 3
    assert torch.load(tmp_path / names.SOFT_PROMPT_FILE, weights_only=True)["prompt"].shape == (8, 64)


def test_evidence_callbacks_write_hard_prompts_and_divergent_dataset(tiny_dirs, tmp_path):
    from finediff.hard_prompts import HardPrompt

    run_train(tiny_dirs, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / names.HARD_PROMPTS_FILE).read_text().splitlines()]
    assert {r["method"] for r in rows} == set(METHODS) == {"projection", "guided", "pez", "text", "gcg"}
    assert set(rows[0]) == set(HardPrompt.__dataclass_fields__)
    assert rows == sorted(rows, key=lambda r: -r["divergence"])
    records = torch.load(tmp_path / names.DIVERGENT_DATASET_PT, weights_only=True)
    jsonl = [json.loads(line) for line in (tmp_path / names.DIVERGENT_DATASET_JSONL).read_text().splitlines()]
    assert records == jsonl and len(records) == (2 * 3 + 5) * 2
    for r in records:
        assert set(r) == {"prompt", "generation_1", "generation_2", "metrics"}
        assert set(r["metrics"]) == {"kl_divergence", "token_disagreement_rate", "vocab_jaccard_similarity",
                                     "disagreement_positions"}
        assert set(r["metrics"]["disagreement_positions"]) == {"first_divergence", "num_disagreements",
                                                               "response_length"}
    assert any(r["prompt"].startswith(rows[0]["text"].strip()) for r in records)
    assert not list(tmp_path.glob(".*.tmp"))


def test_module_readable_trains_a_distribution_over_tokens(tiny_dirs, tmp_path):
    """``module=readable``: the checkpoint holds each position's logits over the allowed
    tokens, ``soft_prompt.pt`` the expected embeddings the models saw, and the prompt
    still parts the pair more than no prompt and a random one on held-out texts."""
    from finediff.arch import embedding_table
    from finediff.hard_prompts import allowed_tokens
    from finediff.models import load_model_pair

    metrics = run_train(tiny_dirs, tmp_path, "module=readable", "trainer.max_steps=30",
                        "trainer.val_check_interval=10", "data.max_texts_per_category=100")
    record = torch.load(tmp_path / names.SOFT_PROMPT_FILE, weights_only=True)
    assert record["space"] == "tokens" and record["init"] == "mean" and record["positions"] == "text"
    logits = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]["soft_prompt.weight"]
    pair = load_model_pair(str(tiny_dirs["base"]), str(tiny_dirs["finetuned"]))
    table = embedding_table(pair.base).detach()
    allowed = allowed_tokens(pair.tokenizer, table.shape[0])
    assert logits.shape == (8, int(allowed.sum()))
    assert torch.allclose(record["prompt"], torch.softmax(logits, -1) @ table[allowed], atol=1e-5)
    assert metrics[names.VAL_DIVERGENCE] > metrics[names.VAL_DIVERGENCE_NO_PROMPT], metrics
    assert metrics[names.VAL_DIVERGENCE] > metrics[names.VAL_DIVERGENCE_RANDOM_PROMPT], metrics
