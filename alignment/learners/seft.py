"""SEFT: self-evolution fine-tuning (prompts without labels are the fuel).

(1) A reviser `R(y_better | x, y)` is trained on ranked pairs `(x, y_low -> y_high)` built from
    the labeled prompts, and on keep rows `(x, y_high -> y_high)` so that it learns to return
    good responses unchanged (revise-or-keep). (2) Each round samples `y ~ pi(x)` on UNLABELED
    prompts (train prompts the SFT stage never saw a demonstration for), revises
    `y' = R(x, y)` greedily, and SFTs pi on `(x, y')`. (3) External evolution
    (`seft.source_policy`): the drafts come from another (stronger) model instead of pi.
Method card: docs/methods.md section 4; the paper's revision-label format is unverified, so
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

This module holds the reusable pieces (reviser prompts, labels and their parsing, the reviser's
rows, a round's rows and filter); the pipeline (SFT stage -> reviser stage -> rounds, the layout
WORKDIR/sft, WORKDIR/reviser, WORKDIR/round_<r>, WORKDIR/seft.json) is
`experiments/pipelines/seft.py`, config `configs/seft.py`.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

LABEL_FORMATS = ("full", "keep_token")
PAIR_SOURCES = ("corruptions", "samples", "both")
FILTERS = ("none", "changed", "oracle_not_worse")
REVISER_INITS = ("policy", "scratch")


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


def parse_revision(
    draft: str, output: str, *, label_format: str, keep_marker: str
) -> tuple[str, bool]:
    """(revised response, kept): the reviser's decoded `output` for `draft` read back."""
    out = output.strip()
    if label_format == "keep_token" and out == keep_marker:
        return draft, True
    if label_format not in LABEL_FORMATS:
        raise ValueError(
            f"reviser.label_format must be one of {LABEL_FORMATS}, got {label_format!r}"
        )
    return out, out == draft.strip()


# ----------------------------------------------------------------------------- reviser data


def reviser_rows(
    task,
    demos: Sequence[tuple[str, str]],
    samples: Optional[Sequence[Sequence[str]]],
    *,
    cfg,
    seed: int,
) -> tuple[list[dict], dict]:
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
        raise ValueError(
            f"reviser.pairs={cfg.pairs!r} needs the SFT policy's samples for each of the "
            f"{len(demos)} labeled prompts"
        )
    if use_corrupt and not hasattr(task, "corrupt"):
        raise ValueError(
            f"reviser.pairs={cfg.pairs!r}: task {task.name!r} has no corrupt(); use pairs='samples'"
        )
    rng = np.random.default_rng([int(seed), 7])
    rows = []
    st = dict(
        labeled_prompts=len(demos),
        revise_rows_samples=0,
        revise_rows_corruptions=0,
        keep_rows=0,
        keep_rows_good_samples=0,
        samples_better_than_demo=0,
        corruptions_failed=0,
    )

    def add(x, draft, better, kind):
        rows.append(
            {
                "prompt": reviser_prompt(cfg.template, x, draft),
                "completion": revision_label(
                    draft, better, label_format=cfg.label_format, keep_marker=cfg.keep_marker
                ),
            }
        )
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


def round_rows(
    task,
    prompts: Sequence[str],
    drafts: Sequence[str],
    outputs: Sequence[str],
    finished: Sequence[bool],
    *,
    cfg,
    reviser_cfg,
) -> tuple[list[dict], dict]:
    """SFT rows {"prompt": x, "completion": y'} of one round, after `cfg.filter`; statistics count
    every drop and carry gold-reward diagnostics (the gold reward is read for reporting only,
    and for the `oracle_not_worse` filter, which is documented as leaking labels)."""
    if not len(prompts) == len(drafts) == len(outputs) == len(finished):
        raise ValueError(
            f"round_rows: {len(prompts)} prompts, {len(drafts)} drafts, {len(outputs)} outputs, "
            f"{len(finished)} finished flags"
        )
    if cfg.filter not in FILTERS:
        raise ValueError(f"seft.filter must be one of {FILTERS}, got {cfg.filter!r}")
    revised, kept = (
        zip(
            *[
                parse_revision(
                    d, o, label_format=reviser_cfg.label_format, keep_marker=reviser_cfg.keep_marker
                )
                for d, o in zip(drafts, outputs)
            ]
        )
        if prompts
        else ((), ())
    )
    g_draft = task.gold_rewards(list(prompts), list(drafts)).astype(np.float64)
    g_rev = task.gold_rewards(list(prompts), list(revised)).astype(np.float64)
    rows = []
    drops = dict(dropped_empty=0, dropped_unfinished=0, dropped_unchanged=0, dropped_worse=0)
    for x, y, k, done, gd, gr in zip(prompts, revised, kept, finished, g_draft, g_rev):
        if not y.strip():
            drops["dropped_empty"] += 1
        elif (
            not done and not k
        ):  # a revision cut at max_new_tokens (a kept draft needs no EOS of its own)
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
        "unlabeled_prompts": len(prompts),
        "revised_rows": len(rows),
        **drops,
        "dropped": sum(drops.values()),
        "kept_fraction": float(kept_a.sum() / n),
        "draft_gold": float(g_draft.mean()) if len(prompts) else 0.0,
        "revised_gold": float(g_rev.mean()) if len(prompts) else 0.0,
        "improved_fraction": float(np.sum(g_rev > g_draft) / n),
        "worsened_fraction": float(np.sum(g_rev < g_draft) / n),
        # does the reviser keep what is already perfect, and fix what is not?
        # None when no draft of this round is perfect (or none is imperfect); gold 1.0 = perfect
        "kept_when_draft_perfect": float(kept_a[g_draft >= 1.0].mean())
        if np.any(g_draft >= 1.0)
        else None,
        "kept_when_draft_imperfect": float(kept_a[g_draft < 1.0].mean())
        if np.any(g_draft < 1.0)
        else None,
        "trained_gold": float(
            np.mean([task.gold_reward(r["prompt"], r["completion"]) for r in rows])
        )
        if rows
        else 0.0,
    }
    return rows, stats
