"""SEFT: self-evolution fine-tuning (prompts without labels are the fuel).

(1) A reviser `R(y_better | x, y)` is trained on ranked pairs `(x, y_low -> y_high)` built from
    the labeled prompts, and on keep rows `(x, y_high -> y_high)` so that it learns to return
    good responses unchanged (revise-or-keep). (2) Each round samples `y ~ pi(x)` on UNLABELED
    prompts (train prompts the SFT stage never saw a demonstration for), revises
    `y' = R(x, y)` greedily, and SFTs pi on `(x, y')`. (3) External evolution
    (`seft.source_policy`): the drafts come from another (stronger) model instead of pi.
Method card: design/methods.md section 4; the paper's revision-label format is unverified, so
it is an explicit option here (`reviser.label_format`).

Reviser input (one templated prompt, `reviser.template`, default
`"{prompt}\\ndraft: {response}\\nrevision: "`): the task prompt and the draft response in one
plain-text prompt; the target follows it as the completion. Label formats:
  - "full": the target is always the whole revised response (a copy of the draft when the
    draft is already good). Kept = the reviser's output equals the draft.
  - "keep_token": the target is `reviser.keep_marker` when the draft is already good, else
    the revised response; an output equal to the marker keeps the draft (shorter targets, and
    "keep" is one decision instead of a copy that can go wrong character by character).
Ranked pairs (`reviser.pairs`): "samples" (K samples of the SFT policy per labeled prompt,
ranked by the task's gold reward together with the demonstration: every sample worse than
the best becomes a revise row towards the best, every sample as good as the best a keep row),
"corruptions" (the task's `corrupt(best, k, seed)`, e.g. `sorting.corrupt`: up to
`reviser.max_swaps` swaps that each make the list strictly worse), or "both". Every labeled
prompt also gets `reviser.keep_rows_per_prompt` keep rows of its best response.

Round filter (`seft.filter`), applied to the revised responses; every drop is counted in
the round's statistics (`WORKDIR/seft.json`):
  - "none": keep every non-empty, finished revision (kept drafts included, as in the paper:
    a good draft the reviser keeps is still a training target).
  - "changed": keep only revisions that differ from their draft (train on corrections only).
  - "oracle_not_worse": keep a revision only when its gold reward is >= the draft's. It reads
    the task's gold reward on unlabeled prompts, i.e. it leaks labels: an ablation / upper
    bound, not the method.
Always dropped (counted): empty revisions and revisions the reviser did not finish (no EOS
within `reviser.max_new_tokens`). With `seft.mix_labeled` the labeled demonstrations are
trained on in every round next to the revised rows, so `seft.num_unlabeled = 0` is exactly
"SFT continued for the same steps": the control the reproduction compares against.

Why sorting by default: fixing a near-sorted list (a few local swaps, a dropped or doubled
digit) is easier for a tiny model than sorting from scratch, and whether a list is already
sorted is a local check a reviser can learn, so revise-or-keep can plausibly beat the policy;
the gold reward is graded (fraction of adjacent pairs in order) and `sorting.corrupt` gives
ranked pairs for free. The tiny settings use single digits, 3-5 numbers
(`config.task_options`), where a 2-layer character model learns the task within minutes.

`train_seft(config, workdir)` is the dispatch target of `alignment.train.train` for
`config.kind == "seft"`. Layout: WORKDIR/sft (skipped when `seft.sft_steps == 0`: then
`model.init_from` is the SFT policy), WORKDIR/reviser (skipped when `reviser.path` is given),
WORKDIR/round_<r> (data/, stats.json, revisions.jsonl: every draft, the reviser's output, kept or
not and both gold rewards; hf/), WORKDIR/metrics.jsonl (one line per round) and
WORKDIR/seft.json (everything, incl. the final policy's path). Stages whose export exists are
reused, so a re-run finishes fast.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from typing import Optional, Sequence

import numpy as np

log = logging.getLogger(__name__)

LABEL_FORMATS = ("full", "keep_token")
PAIR_SOURCES = ("corruptions", "samples", "both")
FILTERS = ("none", "changed", "oracle_not_worse")
REVISER_INITS = ("policy", "scratch")
SUMMARY_FILE = "seft.json"
REVISIONS = "revisions.jsonl"


# ----------------------------------------------------------------------------- reviser format

def reviser_prompt(template: str, prompt: str, response: str) -> str:
    """The reviser's input: task prompt and draft response in one templated plain-text prompt."""
    return template.format(prompt=prompt, response=response)


def revision_label(draft: str, better: str, *, label_format: str, keep_marker: str) -> str:
    """The reviser's target for `draft` when `better` is the response it should end up with."""
    if label_format == "full":
        return better
    if label_format == "keep_token":
        return keep_marker if draft.strip() == better.strip() else better
    raise ValueError(f"reviser.label_format must be one of {LABEL_FORMATS}, got {label_format!r}")


def parse_revision(draft: str, output: str, *, label_format: str, keep_marker: str) -> tuple[str, bool]:
    """(revised response, kept): the reviser's decoded `output` for `draft` read back."""
    out = output.strip()
    if label_format == "keep_token" and out == keep_marker:
        return draft, True
    if label_format not in LABEL_FORMATS:
        raise ValueError(f"reviser.label_format must be one of {LABEL_FORMATS}, got {label_format!r}")
    return out, out == draft.strip()


# ----------------------------------------------------------------------------- reviser data

def reviser_rows(task, demos: Sequence[tuple[str, str]], samples: Optional[Sequence[Sequence[str]]], *, cfg,
                 seed: int) -> tuple[list[dict], dict]:
    """Rows {"prompt": reviser input, "completion": target} from labeled prompts.

    `demos[i] = (x_i, demonstration_i)`; `samples[i]` the SFT policy's samples for x_i (None when
    `cfg.pairs == "corruptions"`). Per prompt the best of demonstration and samples (by gold
    reward; the demonstration wins ties) is y_high; worse samples and corruptions of y_high are
    revise rows towards it, y_high itself and samples as good as it are keep rows. `cfg` is the
    `reviser` config section.
    """
    use_samples = cfg.pairs in ("samples", "both")
    use_corrupt = cfg.pairs in ("corruptions", "both") and int(cfg.corruptions_per_prompt) > 0
    if use_samples and (samples is None or len(samples) != len(demos)):
        raise ValueError(f"reviser.pairs={cfg.pairs!r} needs the SFT policy's samples for each of the "
                         f"{len(demos)} labeled prompts")
    if use_corrupt and not hasattr(task, "corrupt"):
        raise ValueError(f"reviser.pairs={cfg.pairs!r}: task {task.name!r} has no corrupt(); use pairs='samples'")
    rng = np.random.default_rng([int(seed), 7])
    rows = []
    st = dict(labeled_prompts=len(demos), revise_rows_samples=0, revise_rows_corruptions=0, keep_rows=0,
              keep_rows_good_samples=0, samples_better_than_demo=0, corruptions_failed=0)

    def add(x, draft, better, kind):
        rows.append({"prompt": reviser_prompt(cfg.template, x, draft),
                     "completion": revision_label(draft, better, label_format=cfg.label_format,
                                                  keep_marker=cfg.keep_marker)})
        st[kind] += 1

    for i, (x, demo) in enumerate(demos):
        cands = [demo] + (list(samples[i]) if use_samples else [])
        gold = task.gold_rewards([x] * len(cands), cands)
        best = int(np.argmax(gold))  # first max: the demonstration on ties
        y_high = cands[best]
        st["samples_better_than_demo"] += int(best > 0)
        for _ in range(int(cfg.keep_rows_per_prompt)):
            add(x, y_high, y_high, "keep_rows")
        for j in range(1, len(cands)):
            if j == best:
                continue
            if gold[j] < gold[best]:
                add(x, cands[j], y_high, "revise_rows_samples")
            else:  # as good as the best: a good response the reviser must keep
                add(x, cands[j], cands[j], "keep_rows_good_samples")
        if use_corrupt:
            for c in range(int(cfg.corruptions_per_prompt)):
                k = int(rng.integers(1, int(cfg.max_swaps) + 1))
                try:
                    low = task.corrupt(y_high, k, int(seed) * 100_003 + i * 101 + c)
                except ValueError:  # y_high cannot be made worse (e.g. a one-number list): counted
                    st["corruptions_failed"] += 1
                    continue
                add(x, low, y_high, "revise_rows_corruptions")
    st["rows"] = len(rows)
    return rows, st


# ----------------------------------------------------------------------------- round data

def round_rows(task, prompts: Sequence[str], drafts: Sequence[str], outputs: Sequence[str],
               finished: Sequence[bool], *, cfg, reviser_cfg) -> tuple[list[dict], dict]:
    """SFT rows {"prompt": x, "completion": y'} of one round, after `cfg.filter`; statistics count
    every drop and carry gold-reward diagnostics (the gold reward is read for reporting only,
    and for the `oracle_not_worse` filter, which is documented as leaking labels)."""
    if not len(prompts) == len(drafts) == len(outputs) == len(finished):
        raise ValueError(f"round_rows: {len(prompts)} prompts, {len(drafts)} drafts, {len(outputs)} outputs, "
                         f"{len(finished)} finished flags")
    if cfg.filter not in FILTERS:
        raise ValueError(f"seft.filter must be one of {FILTERS}, got {cfg.filter!r}")
    revised, kept = zip(*[parse_revision(d, o, label_format=reviser_cfg.label_format,
                                         keep_marker=reviser_cfg.keep_marker)
                          for d, o in zip(drafts, outputs)]) if prompts else ((), ())
    g_draft = task.gold_rewards(list(prompts), list(drafts)).astype(np.float64)
    g_rev = task.gold_rewards(list(prompts), list(revised)).astype(np.float64)
    rows = []
    drops = dict(dropped_empty=0, dropped_unfinished=0, dropped_unchanged=0, dropped_worse=0)
    for x, y, k, done, gd, gr in zip(prompts, revised, kept, finished, g_draft, g_rev):
        if not y.strip():
            drops["dropped_empty"] += 1
        elif not done and not k:  # a revision cut at max_new_tokens (a kept draft needs no EOS of its own)
            drops["dropped_unfinished"] += 1
        elif cfg.filter == "changed" and k:
            drops["dropped_unchanged"] += 1
        elif cfg.filter == "oracle_not_worse" and gr < gd:
            drops["dropped_worse"] += 1
        else:
            rows.append({"prompt": x, "completion": y})
    n = max(len(prompts), 1)
    kept_a = np.asarray(kept, bool)
    stats = {
        "unlabeled_prompts": len(prompts), "revised_rows": len(rows), **drops,
        "dropped": sum(drops.values()),
        "kept_fraction": float(kept_a.sum() / n),
        "draft_gold": float(g_draft.mean()) if len(prompts) else 0.0,
        "revised_gold": float(g_rev.mean()) if len(prompts) else 0.0,
        "improved_fraction": float(np.sum(g_rev > g_draft) / n),
        "worsened_fraction": float(np.sum(g_rev < g_draft) / n),
        # does the reviser keep what is already perfect, and fix what is not?
        # None when no draft of this round is perfect (or none is imperfect); gold 1.0 = perfect
        "kept_when_draft_perfect": float(kept_a[g_draft >= 1.0].mean()) if np.any(g_draft >= 1.0) else None,
        "kept_when_draft_imperfect": float(kept_a[g_draft < 1.0].mean()) if np.any(g_draft < 1.0) else None,
        "trained_gold": float(np.mean([task.gold_reward(r["prompt"], r["completion"]) for r in rows]))
        if rows else 0.0,
    }
    return rows, stats


# ----------------------------------------------------------------------------- config

def make_task(config):
    from alignment import tasks
    return tasks.get_task(config.task, **config.task_options.to_dict())


def check_seft_config(config) -> None:
    """Semantic checks of the `seft` and `reviser` sections, before anything is trained."""
    s, r = config.seft, config.reviser
    if r.label_format not in LABEL_FORMATS:
        raise ValueError(f"config.reviser.label_format must be one of {LABEL_FORMATS}, got {r.label_format!r}")
    if r.pairs not in PAIR_SOURCES:
        raise ValueError(f"config.reviser.pairs must be one of {PAIR_SOURCES}, got {r.pairs!r}")
    if r.init_from not in REVISER_INITS:
        raise ValueError(f"config.reviser.init_from must be one of {REVISER_INITS}, got {r.init_from!r}")
    if s.filter not in FILTERS:
        raise ValueError(f"config.seft.filter must be one of {FILTERS}, got {s.filter!r}")
    for field in ("{prompt}", "{response}"):
        if field not in r.template:
            raise ValueError(f"config.reviser.template={r.template!r} must contain {field}")
    if r.label_format == "keep_token" and not r.keep_marker.strip():
        raise ValueError("config.reviser.keep_marker must be a non-empty string for label_format='keep_token'")
    for key in ("num_labeled", "rounds", "round_steps", "max_new_tokens", "batch_size"):
        if int(s[key]) < 1:
            raise ValueError(f"config.seft.{key} must be >= 1, got {s[key]}")
    for key in ("num_unlabeled", "sft_steps", "num_eval_prompts"):
        if int(s[key]) < 0:
            raise ValueError(f"config.seft.{key} must be >= 0, got {s[key]}")
    for key in ("steps", "max_new_tokens", "max_prompt_len", "max_len"):
        if int(r[key]) < 1:
            raise ValueError(f"config.reviser.{key} must be >= 1, got {r[key]}")
    for key in ("samples_per_prompt", "corruptions_per_prompt", "max_swaps", "keep_rows_per_prompt"):
        if int(r[key]) < 0:
            raise ValueError(f"config.reviser.{key} must be >= 0, got {r[key]}")
    if r.pairs in ("samples", "both") and r.samples_per_prompt < 1:
        raise ValueError(f"config.reviser.pairs={r.pairs!r} needs reviser.samples_per_prompt >= 1")
    if r.pairs in ("corruptions", "both") and (r.corruptions_per_prompt < 1 or r.max_swaps < 1):
        raise ValueError(f"config.reviser.pairs={r.pairs!r} needs reviser.corruptions_per_prompt >= 1 and "
                         "reviser.max_swaps >= 1")
    if r.keep_rows_per_prompt < 1:
        raise ValueError("config.reviser.keep_rows_per_prompt must be >= 1: revise-or-keep needs keep rows")
    if not s.temperature > 0 or not r.temperature > 0:
        raise ValueError("config.seft.temperature and config.reviser.temperature must be > 0 (sampling drafts)")
    if s.num_unlabeled == 0 and not s.mix_labeled:
        raise ValueError("config.seft.num_unlabeled=0 with mix_labeled=False leaves the rounds no data")
    if not s.sft_steps and not config.model.init_from:
        raise ValueError("config.seft.sft_steps=0 means config.model.init_from is the SFT policy: set it, or "
                         "set seft.sft_steps > 0 to SFT one on the labeled demonstrations first")
    if s.source_policy and not os.path.isfile(os.path.join(s.source_policy, "config.json")):
        raise ValueError(f"config.seft.source_policy={s.source_policy!r} is not an HF folder (no config.json)")
    if r.path and not os.path.isfile(os.path.join(r.path, "config.json")):
        raise ValueError(f"config.reviser.path={r.path!r} is not an HF folder (no config.json)")
    if config.data.chat_template:
        raise ValueError("config.data.chat_template=True is not supported by SEFT: its rows are plain text")
    make_task(config)  # the task and its options exist


def stage_config(config, *, steps: int, learning_rate: float, max_prompt_len: int, max_len: int,
                 init_from: str, data_dir: str, task: str):
    """The engine SFT config of one stage (policy SFT, reviser or a round): `config`'s engine
    settings with the pipeline sections removed, reading `data_dir/{train,test}.jsonl`."""
    c = copy.deepcopy(config)
    c.unlock()
    for key in ("seft", "reviser", "task_options"):
        del c[key]
    c.kind, c.loss, c.task = "sft", "sft", task
    c.num_train_steps = int(steps)
    c.checkpoint_every_steps = int(steps)  # a stage's export is what the next stage reads
    c.keep_checkpoints = 1
    c.checkpoint_async = False
    c.eval_every_steps = 0
    c.export_hf = True
    c.log_every_steps = max(1, int(steps) // 10)
    c.model.init_from = init_from
    c.optim.learning_rate = float(learning_rate)
    c.optim.warmup_steps = max(1, min(int(steps) // 10, c.optim.warmup_steps))
    c.data.seed = config.seed
    c.data.source, c.data.format = "jsonl", "plain"
    c.data.files.train = os.path.join(data_dir, "train.jsonl")
    c.data.files.test = os.path.join(data_dir, "test.jsonl")
    c.data.max_prompt_len, c.data.max_len = int(max_prompt_len), int(max_len)
    c.lock()
    return c


# ----------------------------------------------------------------------------- stages

def split_prompts(config, task) -> tuple[list[tuple[str, str]], list[str]]:
    """(labeled demonstrations, unlabeled prompts): disjoint train prompts of the same draw, the
    unlabeled ones after the labeled (a larger `num_unlabeled` extends, never reshuffles, them)."""
    s = config.seft
    prompts = task.prompts("train", int(s.num_labeled) + int(s.num_unlabeled), config.seed)
    labeled = task.demonstrations("train", int(s.num_labeled), config.seed)
    if [p for p, _ in labeled] != prompts[:len(labeled)]:
        raise AssertionError(f"task {task.name!r}: demonstrations are not the prompts' prefix; SEFT's labeled/"
                             "unlabeled split needs prompts(n) to be a prefix of prompts(m > n)")
    return labeled, prompts[len(labeled):]


def _write_rows(rows, held, data_dir):
    from alignment import data as data_lib
    data_lib.write_jsonl(held, os.path.join(data_dir, "test.jsonl"))
    data_lib.write_jsonl(rows, os.path.join(data_dir, "train.jsonl"))


def _held_out(config, task) -> list[dict]:
    # the engine's jsonl source wants a test split; its eval loss is off (eval_every_steps = 0)
    return [{"prompt": p, "completion": c} for p, c in task.demonstrations("validation", 8, config.seed)]


def sft_stage(config, workdir: str) -> str:
    """The SFT policy: `model.init_from` ("" = a fresh preset) SFT'd on the labeled demonstrations
    for `seft.sft_steps`; exported to `workdir/hf`. With `sft_steps == 0`, `model.init_from`."""
    from alignment.learners import stages
    s = config.seft
    if not s.sft_steps:
        return os.path.abspath(config.model.init_from)
    task = make_task(config)
    labeled, _ = split_prompts(config, task)
    data_dir = os.path.join(workdir, "data")
    if not os.path.isfile(os.path.join(data_dir, "train.jsonl")):
        _write_rows([{"prompt": p, "completion": c} for p, c in labeled], _held_out(config, task), data_dir)
    c = stage_config(config, steps=s.sft_steps, learning_rate=s.sft_learning_rate,
                     max_prompt_len=config.data.max_prompt_len, max_len=config.data.max_len,
                     init_from=config.model.init_from, data_dir=data_dir, task=config.task)
    return stages.run_stage(c, workdir)


def reviser_stage(config, workdir: str, policy_hf: str) -> str:
    """The reviser: trained on `reviser_rows` of the labeled prompts; exported to `workdir/hf`
    (`reviser.path` when given). Its data statistics go to `workdir/stats.json`."""
    from alignment import train as train_lib
    from alignment.evaluation import write_json
    from alignment.learners import stages
    r = config.reviser
    if r.path:
        return os.path.abspath(r.path)
    hf = os.path.join(os.path.abspath(workdir), "hf")
    if os.path.isfile(os.path.join(hf, "config.json")):
        return hf
    task = make_task(config)
    labeled, _ = split_prompts(config, task)
    samples = None
    if r.pairs in ("samples", "both"):
        tok = train_lib.make_tokenizer(config.tokenizer)
        samples = stages.sample(policy_hf, tok, [p for p, _ in labeled], samples_per_prompt=int(r.samples_per_prompt),
                                max_new_tokens=int(config.seft.max_new_tokens), temperature=float(r.temperature),
                                seed=config.seed * 1000 + 17, batch_size=int(config.seft.batch_size)).texts
    rows, stats = reviser_rows(task, labeled, samples, cfg=r, seed=config.seed)
    held, _ = reviser_rows(task, task.demonstrations("validation", 8, config.seed), None,
                           cfg=_corruption_only(r, task), seed=config.seed + 1)
    data_dir = os.path.join(workdir, "data")
    _write_rows(rows, held, data_dir)
    write_json(stats, os.path.join(workdir, "stats.json"))
    log.info("seft reviser data: %s", stats)
    init = policy_hf if r.init_from == "policy" else ""
    c = stage_config(config, steps=r.steps, learning_rate=r.learning_rate, max_prompt_len=r.max_prompt_len,
                     max_len=r.max_len, init_from=init, data_dir=data_dir, task="")
    return stages.run_stage(c, workdir)


def _corruption_only(r, task):
    # held-out reviser rows (the engine's jsonl source wants a test split) need no policy samples:
    # keep rows, and corruptions where the task has them
    c = copy.deepcopy(r)
    c.unlock()
    c.pairs = "corruptions"
    if not hasattr(task, "corrupt"):
        c.corruptions_per_prompt = 0
    return c


def revise(reviser, tokenizer, prompts: Sequence[str], drafts: Sequence[str], *, cfg, seed: int,
           batch_size: int) -> tuple[list[str], list[bool]]:
    """Greedy reviser outputs (and whether each ended with EOS) for (prompt, draft) pairs."""
    from alignment.learners import stages
    inputs = [reviser_prompt(cfg.template, x, y) for x, y in zip(prompts, drafts)]
    out = stages.sample("", tokenizer, inputs, samples_per_prompt=1, max_new_tokens=int(cfg.max_new_tokens),
                        temperature=0.0, seed=seed, batch_size=batch_size, policy=reviser)
    return [t[0] for t in out.texts], [f[0] for f in out.finished]


def _write_revisions(task, prompts, drafts, outputs, finished, r, path):
    # every draft and what the reviser made of it, for inspection (the round's stats summarise it)
    from alignment import data as data_lib
    rows = []
    for x, y, o, done in zip(prompts, drafts, outputs, finished):
        revised, kept = parse_revision(y, o, label_format=r.label_format, keep_marker=r.keep_marker)
        rows.append({"prompt": x, "draft": y, "output": o, "finished": bool(done), "kept": kept,
                     "draft_gold": task.gold_reward(x, y), "revised_gold": task.gold_reward(x, revised)})
    data_lib.write_jsonl(rows, path)


def _gold_eval(policy_hf, tokenizer, task, config) -> float:
    from alignment.learners import stages
    s = config.seft
    prompts = task.prompts("test", int(s.num_eval_prompts), 0)
    out = stages.sample(policy_hf, tokenizer, prompts, samples_per_prompt=1, max_new_tokens=int(s.max_new_tokens),
                        temperature=float(s.temperature), seed=0, batch_size=int(s.batch_size))
    return float(task.gold_rewards(prompts, out.flat()).mean())


def train_seft(config, workdir: str) -> dict:
    """SFT policy -> reviser -> `seft.rounds` of sample / revise / SFT; returns the summary that
    is also written to WORKDIR/seft.json; its "policy" is the final policy's HF folder."""
    from alignment import checkpoint as ckpt_lib
    from alignment import metrics as metrics_lib
    from alignment import models
    from alignment import train as train_lib
    from alignment.evaluation import write_json
    from alignment.learners import stages
    check_seft_config(config)
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    s, r = config.seft, config.reviser
    task = make_task(config)
    labeled, unlabeled = split_prompts(config, task)
    tokenizer = train_lib.make_tokenizer(config.tokenizer)

    policy_hf = sft_stage(config, os.path.join(workdir, "sft"))
    reviser_hf = reviser_stage(config, os.path.join(workdir, "reviser"), policy_hf) if unlabeled else None
    out = {"sft_policy": policy_hf, "reviser": reviser_hf, "source_policy": s.source_policy or None,
           "labeled_prompts": len(labeled), "unlabeled_prompts": len(unlabeled), "rounds": []}
    rstats = os.path.join(workdir, "reviser", "stats.json")
    if reviser_hf and os.path.isfile(rstats):
        with open(rstats) as f:
            out["reviser_data"] = json.load(f)
    if s.num_eval_prompts:
        out["eval_gold_sft"] = _gold_eval(policy_hf, tokenizer, task, config)
    writer = metrics_lib.MetricsWriter(workdir, total_steps=int(s.rounds), tensorboard=config.tensorboard,
                                       progress=False)
    reviser = None
    labeled_rows = [{"prompt": p, "completion": c} for p, c in labeled] if s.mix_labeled else []
    try:
        for rnd in range(1, int(s.rounds) + 1):
            rdir = os.path.join(workdir, f"round_{rnd}")
            stats_path = os.path.join(rdir, "stats.json")
            hf = os.path.join(rdir, "hf")
            if os.path.isfile(os.path.join(hf, "config.json")) and os.path.isfile(stats_path):
                with open(stats_path) as f:
                    stats = json.load(f)
            else:
                rows, stats = [], {"unlabeled_prompts": 0, "revised_rows": 0, "dropped": 0}
                if unlabeled:
                    source = s.source_policy or policy_hf
                    drafts = stages.sample(source, tokenizer, unlabeled, samples_per_prompt=1,
                                           max_new_tokens=int(s.max_new_tokens), temperature=float(s.temperature),
                                           seed=config.seed * 1000 + rnd, batch_size=int(s.batch_size)).flat()
                    if reviser is None:
                        reviser = models.from_pretrained(reviser_hf)
                    outputs, finished = revise(reviser, tokenizer, unlabeled, drafts, cfg=r, seed=rnd,
                                               batch_size=int(s.batch_size))
                    rows, stats = round_rows(task, unlabeled, drafts, outputs, finished, cfg=s, reviser_cfg=r)
                    stats["draft_source"] = source
                    _write_revisions(task, unlabeled, drafts, outputs, finished, r, os.path.join(rdir, REVISIONS))
                    log.info("seft round %d: %s", rnd, stats)
                if not rows and not labeled_rows:
                    raise ValueError(f"seft round {rnd}: every revision was dropped ({stats}); loosen seft.filter, "
                                     "train the reviser longer or set seft.mix_labeled=True")
                stats["labeled_rows"] = len(labeled_rows)
                _write_rows(labeled_rows + rows, _held_out(config, task), os.path.join(rdir, "data"))
                c = stage_config(config, steps=s.round_steps, learning_rate=s.round_learning_rate,
                                 max_prompt_len=config.data.max_prompt_len, max_len=config.data.max_len,
                                 init_from=policy_hf, data_dir=os.path.join(rdir, "data"), task=config.task)
                hf = stages.run_stage(c, rdir)
                # experiments.evaluate --workdir ROUND_DIR rebuilds the task from run.json
                ckpt_lib.update_run_record(rdir, task_kwargs=config.task_options.to_dict())
                if s.num_eval_prompts:
                    stats["eval_gold"] = _gold_eval(hf, tokenizer, task, config)
                write_json(stats, stats_path)
            policy_hf = hf
            out["rounds"].append(stats)
            writer.write(rnd, {k: v for k, v in stats.items()
                               if isinstance(v, (int, float)) and v is not None})
    finally:
        writer.close()
    out["policy"] = policy_hf
    write_json(out, os.path.join(workdir, SUMMARY_FILE))
    return out


def summary(workdir: str) -> Optional[dict]:
    """What `train_seft` wrote to WORKDIR/seft.json (None before it finished)."""
    from alignment.evaluation import read_json
    return read_json(os.path.join(workdir, SUMMARY_FILE))


__all__ = ["FILTERS", "LABEL_FORMATS", "PAIR_SOURCES", "check_seft_config", "parse_revision", "reviser_prompt",
           "reviser_rows", "revision_label", "revise", "round_rows", "stage_config", "train_seft"]
