"""Stages that multi-run experiments chain: demonstrations -> SFT -> samples -> training -> evaluation.

The default experiment, the iterative pipelines and every `experiments/reproduce/<paper>.py`
are built from these, so a stage behaves the same everywhere: a training stage is
`alignment.learners.run` on an engine config and is skipped when its export
(`WORKDIR/hf/config.json`) exists; an evaluation is cached as JSON. Re-running an experiment
with the same workdir therefore only redoes what is missing.

    sft_hf = stages.sft_policy("sorting", "runs/x/sft", steps=300, num_prompts=2048, seed=0)
    samples = stages.sample(sft_hf, tokenizer, prompts, samples_per_prompt=4, max_new_tokens=24)
    result = stages.evaluate(dpo_hf, sft_hf, tokenizer, task, path="runs/x/eval.json", num_prompts=64, ...)
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional, Sequence

from alignment import data as data_lib
from alignment import evaluation, learners, models, tasks
from alignment.engine.config import base_config, short_stage
from alignment.evaluation import harness

__all__ = [
    "Samples",
    "evaluate",
    "run_stage",
    "sample",
    "sft_policy",
    "sft_stage_config",
    "short_stage",
    "with_data",
    "write_demonstrations",
]


def write_demonstrations(
    task, out_dir: str, *, num_prompts: int, seed: int, num_eval: int = 64
) -> str:
    """`out_dir/train.jsonl` ((prompt, completion) of the task's train split) and `out_dir/test.jsonl`
    (`num_eval` of its validation split, for the engine's held-out loss). Returns `out_dir`."""
    if num_prompts < 1 or num_eval < 1:
        raise ValueError(
            f"write_demonstrations: num_prompts={num_prompts} and num_eval={num_eval} must be >= 1"
        )
    demos = task.demonstrations("train", num_prompts, seed)
    held = task.demonstrations("validation", num_eval, seed)
    data_lib.write_jsonl(
        [{"prompt": p, "completion": r} for p, r in held], os.path.join(out_dir, "test.jsonl")
    )
    data_lib.write_jsonl(
        [{"prompt": p, "completion": r} for p, r in demos], os.path.join(out_dir, "train.jsonl")
    )
    return out_dir


def with_data(stage_cfg, *, data_dir: str, seed: int, tokenizer: str, init_from: str):
    """A copy of engine config `stage_cfg` reading `data_dir/{train,test}.jsonl`, with its seeds,
    tokenizer and starting weights set (keys every engine config has)."""
    c = stage_cfg.copy_and_resolve_references()
    c.seed = seed
    c.data.seed = seed
    c.tokenizer = tokenizer
    c.model.init_from = init_from
    c.data.source = "jsonl"
    c.data.files.train = os.path.join(data_dir, "train.jsonl")
    c.data.files.test = os.path.join(data_dir, "test.jsonl")
    return c


def run_stage(config, workdir: str) -> str:
    """Trains `config` in `workdir` (`alignment.learners.run`: an engine config, or a pipeline
    kind whose last stage exports to `workdir/hf`) unless `workdir/hf` holds its export;
    returns `workdir/hf`."""
    if "export_hf" in config and not config.export_hf:
        raise ValueError(
            f"run_stage({workdir}): config.export_hf must be True, the next stage reads WORKDIR/hf"
        )
    hf = os.path.join(os.path.abspath(workdir), "hf")
    if not os.path.isfile(os.path.join(hf, "config.json")):
        learners.run(config, workdir)
        if not os.path.isfile(os.path.join(hf, "config.json")):
            raise ValueError(
                f"run_stage({workdir}): the {config.kind!r} run exported no policy to {hf}"
            )
    return hf


def sft_stage_config(
    *,
    steps: int,
    preset: str = "tiny",
    lr: float = 3e-3,
    batch: int = 32,
    max_prompt_len: int = 32,
    max_len: int = 64,
):
    """The engine config of a short SFT stage (`alignment.engine.config.base_config("sft")`
    defaults, cosine schedule, one checkpoint at the end, exported to WORKDIR/hf)."""
    c = base_config("sft", {"tiny": preset == "tiny", "loss": "sft"})
    c.model.preset = preset
    return short_stage(
        c,
        steps=steps,
        batch=batch,
        lr=lr,
        warmup=max(1, min(steps // 10, 50)),
        max_prompt_len=max_prompt_len,
        max_len=max_len,
    )


def sft_policy(
    task_name: str,
    workdir: str,
    *,
    steps: int,
    num_prompts: int,
    seed: int,
    preset: str = "tiny",
    tokenizer: str = "tiny",
    lr: float = 3e-3,
    batch: int = 32,
    max_prompt_len: int = 32,
    max_len: int = 64,
    init_from: str = "",
) -> str:
    """The miniature starting policy: `preset` (fresh, or `init_from`) SFT'd for `steps` on
    `num_prompts` demonstrations of `task_name`; exported to `workdir/hf` (reused when present)."""
    hf = os.path.join(os.path.abspath(workdir), "hf")
    if os.path.isfile(os.path.join(hf, "config.json")):
        return hf
    task = tasks.get_task(task_name)
    data_dir = write_demonstrations(
        task, os.path.join(workdir, "data"), num_prompts=num_prompts, seed=seed
    )
    c = sft_stage_config(
        steps=steps,
        preset=preset,
        lr=lr,
        batch=batch,
        max_prompt_len=max_prompt_len,
        max_len=max_len,
    )
    c.task = task_name
    c = with_data(c, data_dir=data_dir, seed=seed, tokenizer=tokenizer, init_from=init_from)
    return run_stage(c, workdir)


@dataclasses.dataclass(frozen=True)
class Samples:
    """`texts[i][k]`: the k-th response to prompt i (EOS stripped); `finished[i][k]`: it ended with EOS."""

    texts: list[list[str]]
    finished: list[list[bool]]

    def flat(self) -> list[str]:
        return [t for row in self.texts for t in row]


def sample(
    policy_hf: str,
    tokenizer,
    prompts: Sequence[str],
    *,
    samples_per_prompt: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 256,
    top_k: Optional[int] = None,
    policy=None,
) -> Samples:
    """`samples_per_prompt` KV-cache samples of the HF policy at `policy_hf` (or the loaded `policy`)
    for every prompt (plain text, no chat template)."""
    if samples_per_prompt < 1 or not prompts:
        raise ValueError(
            f"sample: need prompts and samples_per_prompt >= 1 (got {len(prompts)} prompts, "
            f"samples_per_prompt={samples_per_prompt})"
        )
    model = policy if policy is not None else models.from_pretrained(policy_hf)
    ids = harness.encode_prompts(tokenizer, list(prompts))
    flat = [x for x in ids for _ in range(samples_per_prompt)]
    tokens = harness.generate_all(
        model,
        flat,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        eos_id=tokenizer.eos_id,
        seed=seed,
        batch_size=batch_size,
        top_k=top_k,
    )
    texts, finished = [], []
    for toks in tokens:
        body, done = harness.strip_eos(toks, tokenizer.eos_id)
        texts.append(harness.decode_response(tokenizer, body)[0])
        finished.append(done)
    k = samples_per_prompt
    return Samples(
        [texts[i : i + k] for i in range(0, len(texts), k)],
        [finished[i : i + k] for i in range(0, len(finished), k)],
    )


def evaluate(
    policy_hf: str,
    reference_hf: str,
    tokenizer,
    task,
    *,
    path: Optional[str] = None,
    num_prompts: int,
    samples_per_prompt: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    seed: int = 0,
    split: str = "test",
    batch_size: int = 256,
) -> dict:
    """`evaluation.evaluate_policy` of `policy_hf` against `reference_hf` (gold reward, win rate,
    KL, pass@k, ...); cached as JSON at `path` when given (a cache made with other settings is
    recomputed)."""
    settings = {
        "policy": os.path.abspath(policy_hf),
        "reference": os.path.abspath(reference_hf),
        "task": task.name,
        "num_prompts": num_prompts,
        "samples_per_prompt": samples_per_prompt,
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "seed": seed,
        "split": split,
    }
    if path and os.path.isfile(path):
        with open(path) as f:
            cached = json.load(f)
        if cached.get("settings") == settings:
            return cached
    policy = models.from_pretrained(policy_hf)
    reference = (
        policy
        if settings["policy"] == settings["reference"]
        else models.from_pretrained(reference_hf)
    )
    result = evaluation.evaluate_policy(
        policy,
        reference,
        tokenizer,
        task,
        num_prompts=num_prompts,
        samples_per_prompt=samples_per_prompt,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
        split=split,
        batch_size=batch_size,
    )
    result["settings"] = settings
    if path:
        evaluation.write_json(result, path)
    return result
