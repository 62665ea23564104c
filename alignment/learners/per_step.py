"""Per-step negatives (Setlur et al., 2024, "RL on incorrect synthetic data scales the efficiency
of LLM math reasoning by eight-fold"), on a task with a final-answer verifier and step tools
(the `arithmetic` task: `split_steps`, `step_prefixes`); the method card is docs/methods.md
section 4.

    pi_sft  = SFT on synthetic solutions (or a given SFT policy)
    samples = `samples_per_problem` responses of pi_sft to each of the same problems, verified
    rft      : SFT of pi_sft on its verified-correct samples (rejection fine-tuning, `rft_rows`)
    per_step : for an incorrect response with steps s_1..s_S and prefixes p_i = s_1..s_i,
               Q_i = P(best of K rollouts of pi_sft from p_i is correct) (`estimate_step_values`,
               K = 5), Q_0 that of the bare prompt, Q_S = verify(response) = 0; advantage
               A_i = Q_i - Q_{i-1}; critical step c = the first step with the lowest Q ("first
               pit", `advantages.first_pit`); pair (a correct solution of the problem, p_c)
               -> DPO with pi_ref = pi_sft (advantage-weighted RL in the paper's analysis)
    naive    : pair (a correct solution, the whole incorrect response) -> DPO (the control)

The rejected side of a per-step pair is a prefix: it never ended, so it must carry no EOS
(`rejected_is_prefix` in each row; see `prefix_eos_supported`). Every problem or negative that
gives no pair is counted in the statistics `make_pairs` and `rft_rows` return.

This module holds the reusable pieces (step values, critical prefix, pair and RFT rows,
rollouts); the pipeline (SFT stage, samples, caches, the final stage) is
`experiments/pipelines/per_step.py`, config `configs/per_step.py`.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from typing import Callable, Sequence

import numpy as np

from alignment import advantages as advantages_lib
from alignment import data as data_lib
from alignment.data import pipeline
from alignment.evaluation import harness

METHODS = ("rft", "per_step", "naive")
CHOSEN = ("sample", "demonstration", "sample_or_demonstration")


class NoTrainingRows(ValueError):
    """No RFT example or pair survived (e.g. pi_sft solved none of the problems): the counts say why."""


# (prompts [N], prefixes [N]) -> bool [N, M]: whether each of M rollouts continued from
# prompt + prefix ends in a verified-correct response
RolloutFn = Callable[[Sequence[str], Sequence[str]], np.ndarray]


# ----------------------------------------------------------------------------- step values


@dataclasses.dataclass(frozen=True)
class StepValues:
    """Monte-Carlo step values of one response with S steps: `q` [S], `q[i]` is Q after step
    i+1; `q0` the bare prompt's; `advantages` [S] = Q_i - Q_{i-1}; `critical` the first-pit
    step index (-1: no steps); `has_pit` whether Q drops at that step (A_critical < 0)."""

    q0: float
    q: np.ndarray
    advantages: np.ndarray
    critical: int
    has_pit: bool

    def to_json(self) -> dict:
        return {
            "q0": self.q0,
            "q": [float(x) for x in self.q],
            "advantages": [float(x) for x in self.advantages],
            "critical": self.critical,
            "has_pit": self.has_pit,
        }

    @classmethod
    def from_json(cls, d: dict) -> "StepValues":
        return cls(
            float(d["q0"]),
            np.asarray(d["q"], np.float64),
            np.asarray(d["advantages"], np.float64),
            int(d["critical"]),
            bool(d["has_pit"]),
        )


def estimate_step_values(
    task, prompts: Sequence[str], responses: Sequence[str], rollout_fn: RolloutFn, *, k: int
) -> list[StepValues]:
    """Q of every step prefix of each (prompt, response) from `rollout_fn`'s M >= k rollouts.

    The rollouts from p_0 (the bare prompt) .. p_{S-1} are drawn once per distinct (prompt,
    prefix); the last prefix is the whole response, whose value is its verification (it ended).
    """
    if len(prompts) != len(responses):
        raise ValueError(
            f"estimate_step_values: {len(prompts)} prompts for {len(responses)} responses"
        )
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
        raise ValueError(
            f"rollout_fn returned shape {success_NxM.shape}, want [{len(ctx)}, rollouts]"
        )
    q_N = np.asarray(
        advantages_lib.best_of_k_values(successes=success_NxM.astype(np.float32), k=k), np.float64
    )
    s_max = max(1, max(n for _, _, n in plans))
    q_BxS = np.zeros((len(plans), s_max))
    mask_BxS = np.zeros((len(plans), s_max))
    q0_B = np.zeros(len(plans))
    for b, (keys, final, n) in enumerate(plans):
        q0_B[b] = q_N[contexts[keys[0]]] if keys else float(final)
        vals = [q_N[contexts[key]] for key in keys[1:]] + ([final] if n else [])
        q_BxS[b, :n] = vals
        mask_BxS[b, :n] = 1
    adv_BxS, _ = advantages_lib.step_advantages(
        step_values=q_BxS, step_mask=mask_BxS, initial_values=q0_B
    )
    crit_B, pit_B = advantages_lib.first_pit(
        step_values=q_BxS, step_mask=mask_BxS, initial_values=q0_B
    )
    adv_BxS, crit_B, pit_B = np.asarray(adv_BxS, np.float64), np.asarray(crit_B), np.asarray(pit_B)
    return [
        StepValues(
            float(q0_B[b]),
            q_BxS[b, :n].copy(),
            adv_BxS[b, :n].copy(),
            int(crit_B[b]),
            bool(pit_B[b]),
        )
        for b, (_, _, n) in enumerate(plans)
    ]


def critical_prefix(task, response: str, critical: int) -> str:
    """The response through the end of step `critical` (0-based), without the newline after it."""
    prefixes = task.step_prefixes(response)
    if not 0 <= critical < len(prefixes) - 1:
        raise ValueError(
            f"critical step {critical} outside the {len(prefixes) - 1} steps of {response!r}"
        )
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
    own = [
        (t, "sample")
        for t in dict.fromkeys(t for t, ok in zip(samples.texts[g], samples.correct[g]) if ok)
    ]
    demo = [(samples.demonstrations[g], "demonstration")]
    if chosen == "sample":
        return own
    if chosen == "demonstration":
        return demo
    return own or demo


def pair_plan(
    samples: SampleSet, *, chosen: str, negatives_per_problem: int
) -> tuple[list[tuple[int, int]], dict]:
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
    return plan, {
        "problems": len(samples.prompts),
        "dropped_problems_no_correct": no_pos,
        "dropped_problems_no_incorrect": no_neg,
        "negatives": len(plan),
    }


def make_pairs(
    samples: SampleSet,
    task,
    *,
    method: str,
    chosen: str,
    negatives_per_problem: int,
    seed: int,
    step_values: dict[tuple[int, int], StepValues] | None = None,
) -> tuple[list[dict], dict]:
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
        row = {
            "prompt": prompt,
            "chosen": good,
            "problem": g,
            "negative": j,
            "chosen_source": source,
        }
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
            row.update(
                rejected=rejected,
                rejected_is_prefix=rejected != negative,
                critical_step=sv.critical,
                num_steps=len(sv.q),
                q0=sv.q0,
                q=[float(x) for x in sv.q],
                advantages=[float(x) for x in sv.advantages],
            )
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
    stats.update(
        {
            "dropped_negatives_no_steps": no_steps,
            "dropped_negatives_identical": same,
            "pairs": len(rows),
            "chosen_from_demonstration": from_demo,
        }
    )
    if method == "per_step":
        stats.update(
            {
                "dropped_negatives_no_pit": no_pit,
                "rejected_prefix_of_chosen": is_prefix_of_chosen,
                # how often the Monte-Carlo pit is the step the task's checker calls the first error
                "critical_is_first_error": first_error_hits / first_error_known
                if first_error_known
                else float("nan"),
                "mean_critical_step": float(np.mean([r["critical_step"] for r in rows]))
                if rows
                else float("nan"),
                "mean_steps": float(np.mean([r["num_steps"] for r in rows]))
                if rows
                else float("nan"),
            }
        )
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
    return rows, {
        "problems": len(samples.prompts),
        "dropped_problems_no_correct": none,
        "rft_examples": len(rows),
    }


# ----------------------------------------------------------------------------- data path check


def prefix_eos_supported(tokenizer) -> bool:
    """Whether the preference data path (JSONL rows -> token ids and loss masks) leaves a
    rejected completion marked `rejected_is_prefix` without a trained EOS.

    A prefix never ended, so training it with an appended EOS would make DPO push down
    log p(EOS | prefix) besides the wrong step itself."""
    cfg = data_lib.default_data_config("preference")
    cfg.source, cfg.format, cfg.max_len, cfg.max_prompt_len = "jsonl", "plain", 64, 32
    with tempfile.TemporaryDirectory() as tmp:
        cfg.files.train = data_lib.write_jsonl(
            [{"prompt": "p", "chosen": "a\nb", "rejected": "a", "rejected_is_prefix": True}],
            os.path.join(tmp, "check.jsonl"),
        )
        (ex,), _ = pipeline.load_examples(cfg, tokenizer, kind="preference", split="train")
    ids, loss = ex["rejected_ids"], ex["rejected_loss"]
    return int(ids[np.flatnonzero(loss)[-1]]) != tokenizer.eos_id


# ----------------------------------------------------------------------------- configs


def policy_rollout_fn(
    policy,
    tokenizer,
    task,
    *,
    rollouts: int,
    max_new_tokens: int,
    temperature: float,
    seed: int,
    batch_size: int,
) -> RolloutFn:
    """Rollouts of `policy` continued from prompt + prefix (token ids of the prompt as in
    training, then the prefix's), verified as prefix + continuation."""

    def fn(prompts, prefixes):
        ids = harness.encode_prompts(tokenizer, list(prompts))
        ctx = [
            p + list(tokenizer.encode(x, add_special_tokens=False)) if x else p
            for p, x in zip(ids, prefixes)
        ]
        flat = [c for c in ctx for _ in range(rollouts)]
        tokens = harness.generate_all(
            policy,
            flat,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            eos_id=tokenizer.eos_id,
            seed=seed,
            batch_size=batch_size,
            stream=1,
        )
        ok = np.zeros(len(flat), bool)
        for i, toks in enumerate(tokens):
            body, _ = harness.strip_eos(toks, tokenizer.eos_id)
            n = i // rollouts
            ok[i] = task.verify(
                prompts[n], prefixes[n] + harness.decode_response(tokenizer, body)[0]
            )
        return ok.reshape(len(ctx), rollouts)

    return fn
