"""Per-step negatives (Setlur et al., 2024, "RL on incorrect synthetic data scales the efficiency
of LLM math reasoning by eight-fold"), on a task with a final-answer verifier and step tools
(the `arithmetic` task: `split_steps`, `step_prefixes`).

    pi_sft  = SFT on synthetic solutions (or `config.model.init_from`)
    samples = `samples_per_problem` responses of pi_sft to each of the same problems, verified
    rft      : SFT of pi_sft on its verified-correct samples (rejection fine-tuning)
    per_step : for an incorrect response with steps s_1..s_S and prefixes p_i = s_1..s_i,
               Q_i = P(best of K rollouts of pi_sft from p_i is correct) (`best_of_k_values`,
               K = 5), Q_0 that of the bare prompt, Q_S = verify(response) = 0; advantage
               A_i = Q_i - Q_{i-1}; critical step c = the first step with the lowest Q ("first
               pit", `advantages.first_pit`); pair (a correct solution of the problem, p_c)
               -> DPO with pi_ref = pi_sft (advantage-weighted RL in the paper's analysis)
    naive    : pair (a correct solution, the whole incorrect response) -> DPO (the control)

The rejected side of a per-step pair is a prefix: it never ended, so it must carry no EOS
(`rejected_is_prefix` in each row; see `prefix_eos_supported`). Every problem or negative that
gives no pair is counted in `WORKDIR/per_step.json` (`stats`), never dropped silently.

`train_per_step(config, workdir)` is the dispatch target of `alignment.train.train` for
`config.kind == "per_step"`; samples and rollouts live in `per_step.samples_dir` (default
WORKDIR/samples) and are reused by every method run on the same pi_sft and settings.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
from typing import Callable, Sequence

import ml_collections
import numpy as np

from alignment import data as data_lib
from alignment import losses

log = logging.getLogger(__name__)

METHODS = ("rft", "per_step", "naive")
CHOSEN = ("sample", "demonstration", "sample_or_demonstration")
STATS_FILE = "per_step.json"
DATA_DIR = "per_step_data"



class NoTrainingRows(ValueError):
    """No RFT example or pair survived (e.g. pi_sft solved none of the problems): the counts say why."""


# (prompts [N], prefixes [N]) -> bool [N, M]: whether each of M rollouts continued from
# prompt + prefix ends in a verified-correct response
RolloutFn = Callable[[Sequence[str], Sequence[str]], np.ndarray]


# ----------------------------------------------------------------------------- step values

@dataclasses.dataclass(frozen=True)
class StepValues:
    """Monte-Carlo step values of one response: `q_S[i]` is Q after step i+1, `q0` the bare
    prompt's, `advantages_S` = Q_i - Q_{i-1}, `critical` the first-pit step index (-1: no
    steps), `has_pit` whether Q drops at that step (A_critical < 0)."""
    q0: float
    q_S: np.ndarray
    advantages_S: np.ndarray
    critical: int
    has_pit: bool

    def to_json(self) -> dict:
        return {"q0": self.q0, "q": [float(x) for x in self.q_S],
                "advantages": [float(x) for x in self.advantages_S],
                "critical": self.critical, "has_pit": self.has_pit}

    @classmethod
    def from_json(cls, d: dict) -> "StepValues":
        return cls(float(d["q0"]), np.asarray(d["q"], np.float64), np.asarray(d["advantages"], np.float64),
                   int(d["critical"]), bool(d["has_pit"]))


def estimate_step_values(task, prompts: Sequence[str], responses: Sequence[str], rollout_fn: RolloutFn, *,
                         k: int) -> list[StepValues]:
    """Q of every step prefix of each (prompt, response) from `rollout_fn`'s M >= k rollouts.

    The rollouts from p_0 (the bare prompt) .. p_{S-1} are drawn once per distinct (prompt,
    prefix); the last prefix is the whole response, whose value is its verification (it ended).
    """
    from alignment import advantages
    if len(prompts) != len(responses):
        raise ValueError(f"estimate_step_values: {len(prompts)} prompts for {len(responses)} responses")
    contexts: dict[tuple[str, str], int] = {}
    plans = []
    for prompt, response in zip(prompts, responses):
        prefixes = task.step_prefixes(response)
        keys = [(prompt, p) for p in prefixes[:-1]]
        for key in keys:
            contexts.setdefault(key, len(contexts))
        plans.append((keys, float(task.verify(prompt, response)), len(prefixes) - 1))
    if not contexts:
        return []
    ctx = list(contexts)
    success_NxM = np.asarray(rollout_fn([c[0] for c in ctx], [c[1] for c in ctx]))
    if success_NxM.ndim != 2 or success_NxM.shape[0] != len(ctx):
        raise ValueError(f"rollout_fn returned shape {success_NxM.shape}, want [{len(ctx)}, rollouts]")
    q_N = np.asarray(advantages.best_of_k_values(successes=success_NxM.astype(np.float32), k=k), np.float64)
    s_max = max(1, max(n for _, _, n in plans))
    q_BxS = np.zeros((len(plans), s_max))
    mask_BxS = np.zeros((len(plans), s_max))
    q0_B = np.zeros(len(plans))
    for b, (keys, final, n) in enumerate(plans):
        q0_B[b] = q_N[contexts[keys[0]]] if keys else float(final)
        vals = [q_N[contexts[key]] for key in keys[1:]] + ([final] if n else [])
        q_BxS[b, :n] = vals
        mask_BxS[b, :n] = 1
    adv_BxS, _ = advantages.step_advantages(step_values=q_BxS, step_mask=mask_BxS, initial_values=q0_B)
    crit_B, pit_B = advantages.first_pit(step_values=q_BxS, step_mask=mask_BxS, initial_values=q0_B)
    adv_BxS, crit_B, pit_B = np.asarray(adv_BxS, np.float64), np.asarray(crit_B), np.asarray(pit_B)
    return [StepValues(float(q0_B[b]), q_BxS[b, :n].copy(), adv_BxS[b, :n].copy(), int(crit_B[b]), bool(pit_B[b]))
            for b, (_, _, n) in enumerate(plans)]


def critical_prefix(task, response: str, critical: int) -> str:
    """The response through the end of step `critical` (0-based), without the newline after it."""
    prefixes = task.step_prefixes(response)
    if not 0 <= critical < len(prefixes) - 1:
        raise ValueError(f"critical step {critical} outside the {len(prefixes) - 1} steps of {response!r}")
    out = prefixes[critical + 1]
    return out[:-1] if out.endswith("\n") else out


# ----------------------------------------------------------------------------- pairs

@dataclasses.dataclass
class SampleSet:
    """`texts[g][j]` the j-th sample for problem g, `correct[g][j]` its verification,
    `demonstrations[g]` the problem's synthetic solution."""
    prompts: list[str]
    texts: list[list[str]]
    correct: list[list[bool]]
    demonstrations: list[str]


def _negatives(samples: SampleSet, g: int, limit: int) -> list[int]:
    """Distinct incorrect samples of problem g (in sampling order), at most `limit` (0 = all)."""
    seen, out = set(), []
    for j, (t, ok) in enumerate(zip(samples.texts[g], samples.correct[g])):
        if not ok and t not in seen:
            seen.add(t)
            out.append(j)
    return out[:limit] if limit else out


def _positives(samples: SampleSet, g: int, chosen: str) -> list[tuple[str, str]]:
    """(text, source) of the distinct correct solutions of problem g allowed by `chosen`."""
    own = [(t, "sample") for t in dict.fromkeys(t for t, ok in zip(samples.texts[g], samples.correct[g]) if ok)]
    demo = [(samples.demonstrations[g], "demonstration")]
    if chosen == "sample":
        return own
    if chosen == "demonstration":
        return demo
    return own or demo


def pair_plan(samples: SampleSet, *, chosen: str, negatives_per_problem: int) -> tuple[list[tuple[int, int]], dict]:
    """(problem, negative sample) pairs to build, and the drop counts: problems without a correct
    solution under `chosen`, problems without an incorrect sample."""
    plan, no_pos, no_neg = [], 0, 0
    for g in range(len(samples.prompts)):
        negs = _negatives(samples, g, negatives_per_problem)
        if not _positives(samples, g, chosen):
            no_pos += 1
            continue
        if not negs:
            no_neg += 1
            continue
        plan.extend((g, j) for j in negs)
    return plan, {"problems": len(samples.prompts), "dropped_problems_no_correct": no_pos,
                  "dropped_problems_no_incorrect": no_neg, "negatives": len(plan)}


def make_pairs(samples: SampleSet, task, *, method: str, chosen: str, negatives_per_problem: int, seed: int,
               step_values: dict[tuple[int, int], StepValues] | None = None) -> tuple[list[dict], dict]:
    """Preference rows of `method` ("per_step": rejected = prefix through the critical step;
    "naive": rejected = the whole incorrect response) and the counts of every drop.

    The chosen side is a correct solution of the same problem (`chosen`: a verified sample of
    pi_sft, the synthetic demonstration, or a sample when there is one else the demonstration),
    cycling through the distinct ones in a seeded order.
    """
    if method not in ("per_step", "naive"):
        raise ValueError(f"make_pairs: method must be 'per_step' or 'naive', got {method!r}")
    if chosen not in CHOSEN:
        raise ValueError(f"make_pairs: chosen must be one of {CHOSEN}, got {chosen!r}")
    rng = np.random.default_rng(seed)
    plan, stats = pair_plan(samples, chosen=chosen, negatives_per_problem=negatives_per_problem)
    rows = []
    no_steps = no_pit = same = 0
    from_demo = is_prefix_of_chosen = first_error_hits = first_error_known = 0
    order: dict[int, list[tuple[str, str]]] = {}
    used: dict[int, int] = {}
    for g, j in plan:
        prompt, negative = samples.prompts[g], samples.texts[g][j]
        if g not in order:
            pos = _positives(samples, g, chosen)
            order[g] = [pos[i] for i in rng.permutation(len(pos))]
        good, source = order[g][used.get(g, 0) % len(order[g])]
        used[g] = used.get(g, 0) + 1
        row = {"prompt": prompt, "chosen": good, "problem": g, "negative": j, "chosen_source": source}
        if method == "naive":
            if not negative.strip():
                no_steps += 1
                continue
            row.update(rejected=negative, rejected_is_prefix=False)
        else:
            sv = (step_values or {}).get((g, j))
            if sv is None:
                raise ValueError(f"make_pairs: no step values for problem {g} sample {j}")
            if sv.critical < 0:
                no_steps += 1
                continue
            if not sv.has_pit:
                no_pit += 1
                continue
            rejected = critical_prefix(task, negative, sv.critical)
            row.update(rejected=rejected, rejected_is_prefix=rejected != negative, critical_step=sv.critical,
                       num_steps=len(sv.q_S), q0=sv.q0, q=[float(x) for x in sv.q_S],
                       advantages=[float(x) for x in sv.advantages_S])
            err = _first_error(task, prompt, negative)
            if err is not None:
                first_error_known += 1
                first_error_hits += int(err == sv.critical)
            is_prefix_of_chosen += int(good.startswith(rejected))
        if row["rejected"] == good:
            same += 1
            continue
        from_demo += int(row["chosen_source"] == "demonstration")
        rows.append(row)
    stats.update({"dropped_negatives_no_steps": no_steps, "dropped_negatives_identical": same,
                  "pairs": len(rows), "chosen_from_demonstration": from_demo})
    if method == "per_step":
        stats.update({
            "dropped_negatives_no_pit": no_pit,
            "rejected_prefix_of_chosen": is_prefix_of_chosen,
            # how often the Monte-Carlo pit is the step the task's checker calls the first error
            "critical_is_first_error": first_error_hits / first_error_known if first_error_known else float("nan"),
            "mean_critical_step": float(np.mean([r["critical_step"] for r in rows])) if rows else float("nan"),
            "mean_steps": float(np.mean([r["num_steps"] for r in rows])) if rows else float("nan"),
        })
    return rows, stats


def _first_error(task, prompt: str, response: str):
    fn = getattr(task, "first_error", None)
    if fn is None:
        return None
    try:
        return fn(prompt, response)
    except ValueError:
        return None


def rft_rows(samples: SampleSet) -> tuple[list[dict], dict]:
    """SFT rows of rejection fine-tuning: each problem's distinct verified-correct samples."""
    rows, none = [], 0
    for g, prompt in enumerate(samples.prompts):
        good = _positives(samples, g, "sample")
        none += not good
        rows.extend({"prompt": prompt, "completion": t} for t, _ in good)
    return rows, {"problems": len(samples.prompts), "dropped_problems_no_correct": none, "rft_examples": len(rows)}


# ----------------------------------------------------------------------------- data path check

def prefix_eos_supported(tokenizer) -> bool:
    """Whether the preference data path (JSONL rows -> token ids and loss masks) leaves a
    rejected completion marked `rejected_is_prefix` without a trained EOS.

    A prefix never ended, so training it with an appended EOS would make DPO push down
    log p(EOS | prefix) besides the wrong step itself."""
    import tempfile
    from alignment.data import pipeline
    cfg = data_lib.default_data_config("preference")
    cfg.source, cfg.format, cfg.max_len, cfg.max_prompt_len = "jsonl", "plain", 64, 32
    with tempfile.TemporaryDirectory() as tmp:
        cfg.files.train = data_lib.write_jsonl(
            [{"prompt": "p", "chosen": "a\nb", "rejected": "a", "rejected_is_prefix": True}],
            os.path.join(tmp, "check.jsonl"))
        (ex,), _ = pipeline.load_examples(cfg, tokenizer, kind="preference", split="train")
    ids, loss = ex["rejected_ids"], ex["rejected_loss"]
    return int(ids[np.flatnonzero(loss)[-1]]) != tokenizer.eos_id


# ----------------------------------------------------------------------------- configs

def check_per_step_config(config) -> None:
    """Semantic checks of the `per_step` section (before any model is loaded)."""
    s = config.per_step
    if s.method not in METHODS:
        raise ValueError(f"config.per_step.method must be one of {METHODS}, got {s.method!r}")
    if s.chosen not in CHOSEN:
        raise ValueError(f"config.per_step.chosen must be one of {CHOSEN}, got {s.chosen!r}")
    for key in ("num_problems", "samples_per_problem", "rollouts", "k", "max_new_tokens", "batch_size"):
        if int(s[key]) < 1:
            raise ValueError(f"config.per_step.{key} must be >= 1, got {s[key]}")
    if s.k > s.rollouts:
        raise ValueError(f"config.per_step.k={s.k} exceeds config.per_step.rollouts={s.rollouts}: the best-of-K "
                         "value needs at least K rollouts per prefix")
    if s.negatives_per_problem < 0 or s.sft_steps < 0:
        raise ValueError("config.per_step.negatives_per_problem (0 = all) and sft_steps must be >= 0")
    if not s.temperature > 0:
        raise ValueError(f"config.per_step.temperature must be > 0, got {s.temperature}")
    if not config.model.init_from and not s.sft_steps:
        raise ValueError("per-step negatives start from an SFT policy: set config.model.init_from to its HF folder, "
                         "or config.per_step.sft_steps > 0 to SFT one on the task's demonstrations first")
    if config.data.chat_template:
        raise ValueError("config.data.chat_template=True is not supported by per_step: its rows are plain text")


def get_task(config):
    from alignment import tasks
    task = tasks.get_task(config.task, **config.per_step.task_kwargs.to_dict())
    missing = [name for name in ("verify", "step_prefixes") if not hasattr(task, name)]
    if missing or not task.has_verifier:
        raise ValueError(f"config.task={config.task!r}: per-step negatives need a verifier and step tools "
                         f"(step_prefixes); missing {missing or ['has_verifier']}")
    return task


def _stage_config(config, workdir: str, *, kind: str, init_from: str, steps: int, lr: float, data_dir: str):
    c = copy.deepcopy(config)
    c.unlock()
    c.kind = kind
    del c["per_step"]
    if kind == "sft":
        c.loss = "sft"
        c.loss_kwargs = ml_collections.ConfigDict(losses.defaults("sft"))
        c.reference.mode = "in_step"
    c.model.init_from = init_from
    c.num_train_steps = int(steps)
    c.checkpoint_every_steps = min(c.checkpoint_every_steps, c.num_train_steps) or c.num_train_steps
    c.optim.learning_rate = float(lr)
    c.optim.warmup_steps = min(c.optim.warmup_steps, max(c.num_train_steps - 1, 0))
    c.eval_every_steps = 0  # the rows come from the train problems; held-out accuracy is the real test
    c.export_hf = True
    old = c.data
    c.data = data_lib.default_data_config(kind)
    for key in ("max_len", "max_prompt_len", "seed", "prompt_truncation", "truncation", "on_bad_row"):
        c.data[key] = old[key]
    c.data.source, c.data.format = "jsonl", "plain"
    c.data.files.train = os.path.join(data_dir, "train.jsonl")
    c.data.files.test = ""
    c.lock()
    return c


def sft_config(config, workdir: str):
    """The SFT stage on the task's demonstrations of the `num_problems` train problems."""
    return _stage_config(config, workdir, kind="sft", init_from="", steps=config.per_step.sft_steps,
                         lr=config.per_step.sft_learning_rate, data_dir=os.path.join(workdir, "sft", "data"))


def method_config(config, workdir: str, init_from: str):
    """The final stage in `workdir`: SFT on correct samples (rft) or DPO on pairs (per_step, naive)."""
    rft = config.per_step.method == "rft"
    return _stage_config(config, workdir, kind="sft" if rft else "preference", init_from=init_from,
                         steps=config.num_train_steps,
                         lr=config.per_step.rft_learning_rate if rft else config.optim.learning_rate,
                         data_dir=os.path.join(workdir, DATA_DIR))


# ----------------------------------------------------------------------------- generation

def _load_json(path):
    with open(path) as f:
        return json.load(f)


def _dump_json(obj, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(path + ".tmp", path)


def _cached(path: str, settings: dict):
    """The JSON at `path` when it was made with `settings`; an error when made with others."""
    if not os.path.isfile(path):
        return None
    settings = json.loads(json.dumps(settings))  # tuples -> lists, as stored
    obj = _load_json(path)
    if obj.get("settings") != settings:
        changed = sorted(k for k in set(settings) | set(obj.get("settings", {}))
                         if settings.get(k) != obj.get("settings", {}).get(k))
        raise ValueError(f"{path} was made with other settings ({changed}); use a fresh per_step.samples_dir")
    return obj


def policy_rollout_fn(policy, tokenizer, task, *, rollouts: int, max_new_tokens: int, temperature: float,
                      seed: int, batch_size: int) -> RolloutFn:
    """Rollouts of `policy` continued from prompt + prefix (token ids of the prompt as in
    training, then the prefix's), verified as prefix + continuation."""
    from alignment.evaluation import harness

    def fn(prompts, prefixes):
        ids = harness.encode_prompts(tokenizer, list(prompts))
        ctx = [p + list(tokenizer.encode(x, add_special_tokens=False)) if x else p for p, x in zip(ids, prefixes)]
        flat = [c for c in ctx for _ in range(rollouts)]
        tokens = harness.generate_all(policy, flat, max_new_tokens=max_new_tokens, temperature=temperature,
                                      eos_id=tokenizer.eos_id, seed=seed, batch_size=batch_size, stream=1)
        ok = np.zeros(len(flat), bool)
        for i, toks in enumerate(tokens):
            body, _ = harness.strip_eos(toks, tokenizer.eos_id)
            n = i // rollouts
            ok[i] = task.verify(prompts[n], prefixes[n] + harness.decode_response(tokenizer, body)[0])
        return ok.reshape(len(ctx), rollouts)
    return fn


def _sft_policy(config, workdir: str, task) -> str:
    if config.model.init_from:
        return os.path.abspath(config.model.init_from)
    out = os.path.join(workdir, "sft")
    hf = os.path.join(out, "hf")
    if os.path.isfile(os.path.join(hf, "config.json")):
        return hf
    from alignment import train as train_lib
    demos = task.demonstrations("train", int(config.per_step.num_problems), config.seed)
    data_lib.write_jsonl(({"prompt": p, "completion": c} for p, c in demos), os.path.join(out, "data", "train.jsonl"))
    train_lib.train(sft_config(config, workdir), out)
    return hf


def generate(config, task, tokenizer, sft_hf: str, samples_dir: str) -> tuple[SampleSet, dict]:
    """`samples_per_problem` verified samples of pi_sft per train problem (cached in samples_dir)."""
    from alignment import models
    from alignment.learners import stages
    s = config.per_step
    settings = {"sft_policy": sft_hf, "task": config.task, "task_kwargs": s.task_kwargs.to_dict(),
                "seed": config.seed, "num_problems": s.num_problems, "samples_per_problem": s.samples_per_problem,
                "temperature": s.temperature, "max_new_tokens": s.max_new_tokens}
    path = os.path.join(samples_dir, "samples.json")
    cached = _cached(path, settings)
    if cached is None:
        demos = task.demonstrations("train", int(s.num_problems), config.seed)
        prompts = [p for p, _ in demos]
        out = stages.sample(sft_hf, tokenizer, prompts, samples_per_prompt=s.samples_per_problem,
                            max_new_tokens=s.max_new_tokens, temperature=s.temperature, seed=config.seed,
                            batch_size=s.batch_size, policy=models.from_pretrained(sft_hf))
        correct = [[bool(task.verify(p, t)) for t in row] for p, row in zip(prompts, out.texts)]
        cached = {"settings": settings, "prompts": prompts, "texts": out.texts, "finished": out.finished,
                  "correct": correct, "demonstrations": [c for _, c in demos]}
        _dump_json(cached, path)
    samples = SampleSet(cached["prompts"], cached["texts"], cached["correct"], cached["demonstrations"])
    acc = np.asarray(cached["correct"], np.float64)
    stats = {"sample_accuracy": float(acc.mean()), "problems_any_correct": float(acc.any(1).mean()),
             "finished_fraction": float(np.mean(cached["finished"]))}
    return samples, stats


def step_values_for(config, task, tokenizer, sft_hf: str, samples: SampleSet, samples_dir: str
                    ) -> dict[tuple[int, int], StepValues]:
    """Step values of every negative the pairs may use (cached in samples_dir)."""
    from alignment import models
    s = config.per_step
    plan, _ = pair_plan(samples, chosen=s.chosen, negatives_per_problem=s.negatives_per_problem)
    settings = {"sft_policy": sft_hf, "seed": config.seed, "rollouts": s.rollouts, "k": s.k,
                "temperature": s.temperature, "max_new_tokens": s.max_new_tokens, "plan": [list(x) for x in plan]}
    path = os.path.join(samples_dir, "step_values.json")
    cached = _cached(path, settings)
    if cached is None:
        fn = policy_rollout_fn(models.from_pretrained(sft_hf), tokenizer, task, rollouts=s.rollouts,
                               max_new_tokens=s.max_new_tokens, temperature=s.temperature, seed=config.seed,
                               batch_size=s.batch_size)
        values = estimate_step_values(task, [samples.prompts[g] for g, _ in plan],
                                      [samples.texts[g][j] for g, j in plan], fn, k=s.k)
        cached = {"settings": settings, "values": [v.to_json() for v in values]}
        _dump_json(cached, path)
    return {(g, j): StepValues.from_json(v) for (g, j), v in zip(plan, cached["values"])}


def train_per_step(config, workdir: str):
    """pi_sft -> samples -> RFT data or per-step / naive pairs -> the final stage in `workdir`."""
    from alignment import checkpoint as ckpt_lib
    from alignment import train as train_lib
    from alignment.learners.validation import validate_config
    check_per_step_config(config)
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    s = config.per_step
    task = get_task(config)
    validate_config(method_config(config, workdir, config.model.init_from or "<sft stage>"))
    if not config.model.init_from:
        validate_config(sft_config(config, workdir))
    tokenizer = train_lib.make_tokenizer(config.tokenizer)
    eos_ok = prefix_eos_supported(tokenizer)
    sft_hf = _sft_policy(config, workdir, task)
    samples_dir = os.path.abspath(s.samples_dir or os.path.join(workdir, "samples"))
    samples, stats = generate(config, task, tokenizer, sft_hf, samples_dir)
    stats.update({"method": s.method, "sft_policy": sft_hf, "samples_dir": samples_dir})
    if s.method == "rft":
        rows, counts = rft_rows(samples)
    else:
        values = step_values_for(config, task, tokenizer, sft_hf, samples, samples_dir) if s.method == "per_step" else None
        rows, counts = make_pairs(samples, task, method=s.method, chosen=s.chosen,
                                  negatives_per_problem=s.negatives_per_problem, seed=config.seed,
                                  step_values=values)
        if s.method == "per_step":
            stats["prefix_eos_supported"] = eos_ok
            if not eos_ok:
                log.warning("per_step: the preference data path appends EOS to rejected prefixes "
                            "(rejected_is_prefix is not honoured); DPO also pushes down log p(EOS | prefix)")
    stats.update(counts)
    _dump_json(stats, os.path.join(workdir, STATS_FILE))
    log.info("per_step: %s", stats)
    if not rows:
        raise NoTrainingRows(f"per_step ({s.method}): no training row survived ({stats}); sample more "
                             "(per_step.samples_per_problem, num_problems) or use a stronger SFT policy")
    data_lib.write_jsonl(rows, os.path.join(workdir, DATA_DIR, "train.jsonl"))
    extra = {k: float(v) for k, v in counts.items() if isinstance(v, (int, float)) and np.isfinite(v)}
    extra["sample_accuracy"] = stats["sample_accuracy"]
    state = train_lib.train(method_config(config, workdir, sft_hf), workdir, extra_metrics=extra)
    # experiments.evaluate rebuilds the task from run.json; the DPO stage's record knows only its name
    ckpt_lib.update_run_record(workdir, task_kwargs=s.task_kwargs.to_dict())
    return state


def summary(workdir: str) -> dict | None:
    """The statistics `train_per_step` wrote (None before it ran)."""
    path = os.path.join(workdir, STATS_FILE)
    return _load_json(path) if os.path.isfile(path) else None
