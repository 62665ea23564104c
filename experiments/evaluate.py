"""Evaluate a trained policy against its reference on a task's held-out prompts.

    python -m experiments.evaluate --workdir DIR [--policy HF_DIR] [--reference HF_DIR] [--task NAME]
    python -m experiments.evaluate --workdir OUT --frontier RUN1 RUN2 ... [--reference HF_DIR]

Writes DIR/eval.json (gold_reward, win_rate, kl, pass_at_k, ranking_accuracy, examples, ...) and
DIR/eval.md. Defaults come from the run: the policy is DIR/hf, and the reference, task,
task_kwargs, tokenizer and chat_template are read from DIR/run.json when it records them
(flags win). The tokenizer defaults to the policy folder's own tokenizer files.

With --frontier, each listed run (a run directory with hf/, or a Hugging Face folder) is
evaluated the same way, or read from its eval.json when it has one (unless --recompute), and
OUT/frontier.png plots gold reward against KL across them; their results go to OUT/eval.json
under "frontier" (next to OUT's own result when OUT has a policy) and to OUT/eval.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from alignment import evaluation, models, sharding, tasks
from alignment import tokenizer as tok_lib


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m experiments.evaluate", description=__doc__.split("\n\n")[0]
    )
    p.add_argument(
        "--workdir", required=True, help="run directory; eval.json and eval.md are written here"
    )
    p.add_argument("--policy", default="", help="policy HF folder (default: WORKDIR/hf)")
    p.add_argument(
        "--reference", default="", help="reference HF folder (default: run.json's 'reference')"
    )
    p.add_argument("--task", default="", help="embedded task name (default: run.json's 'task')")
    p.add_argument(
        "--task_kwargs", default="", help="task options as JSON, e.g. '{\"num_ops\": [2, 3]}'"
    )
    p.add_argument(
        "--tokenizer",
        default="",
        help="'tiny' or a folder with tokenizer.json (default: the "
        "policy folder, then run.json's 'tokenizer')",
    )
    p.add_argument("--split", default="test")
    p.add_argument("--num_prompts", type=int, default=64)
    p.add_argument("--samples_per_prompt", type=int, default=4)
    p.add_argument("--max_new_tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top_k", type=int, default=None)
    p.add_argument("--top_p", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--num_examples", type=int, default=4)
    p.add_argument(
        "--chat_template",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="wrap prompts in the tokenizer's chat template (default: run.json's, else off)",
    )
    p.add_argument(
        "--pairs",
        default="",
        help="JSONL of held-out {prompt, chosen, rejected} rows for "
        "ranking accuracy (default: pairs of reference samples)",
    )
    p.add_argument(
        "--dtype", default=None, help="compute dtype for both models (default: as saved)"
    )
    p.add_argument(
        "--mesh",
        default="",
        help="shard both models over a mesh, e.g. 'fsdp=-1' or "
        "'data=1,fsdp=4,tensor=2' (default: one device)",
    )
    p.add_argument(
        "--frontier", nargs="+", default=[], metavar="RUN", help="runs/checkpoints to plot"
    )
    p.add_argument(
        "--recompute", action="store_true", help="re-evaluate --frontier runs that have eval.json"
    )
    return p


def read_run_record(run_dir: str) -> dict:
    """RUN_DIR/run.json as a dict ({} when absent); a file that is not a JSON object is an error."""
    path = os.path.join(run_dir, "run.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        try:
            record = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(record).__name__}")
    return record


def _hf_folder(path: str, what: str) -> str:
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(
            f"{what}: {path!r} is not a Hugging Face model folder (no config.json)"
        )
    return path


def policy_path(run: str, explicit: str = "") -> str:
    """The policy folder of a run: `explicit`, else RUN/hf, else RUN itself when it is an HF folder."""
    if explicit:
        return _hf_folder(explicit, "--policy")
    for candidate in (os.path.join(run, "hf"), run):
        if os.path.isfile(os.path.join(candidate, "config.json")):
            return candidate
    raise FileNotFoundError(
        f"no policy in {run!r}: neither {run}/hf/config.json nor {run}/config.json "
        f"exists (export it with config.export_hf=True, or pass --policy)"
    )


def _resolve(args, run: str, record: dict, policy: str) -> dict:
    """Reference, task, tokenizer and chat template for one run: flags, then run.json, then defaults."""
    reference = args.reference or record.get("reference", "")
    if not reference:
        raise ValueError(
            f"no reference model for {run!r}: pass --reference HF_DIR (run.json records none)"
        )
    task = args.task or record.get("task", "")
    if not task:
        raise ValueError(f"no task for {run!r}: pass --task NAME (run.json records none)")
    if args.task_kwargs:
        try:
            task_kwargs = json.loads(args.task_kwargs)
        except json.JSONDecodeError as e:
            raise ValueError(
                f"--task_kwargs is not valid JSON ({e}): {args.task_kwargs!r}"
            ) from None
    else:
        task_kwargs = record.get("task_kwargs", {})
    if not isinstance(task_kwargs, dict):
        raise ValueError(f"task kwargs must be a JSON object, got {task_kwargs!r}")
    tokenizer = args.tokenizer
    if not tokenizer:
        if os.path.isfile(os.path.join(policy, "tokenizer.json")) or os.path.isfile(
            os.path.join(policy, "tokenizer.model")
        ):
            tokenizer = policy
        else:
            tokenizer = record.get("tokenizer", "")
    if not tokenizer:
        raise ValueError(
            f"no tokenizer for {run!r}: {policy} has no tokenizer files and run.json records "
            f"none; pass --tokenizer tiny|DIR"
        )
    chat = (
        args.chat_template
        if args.chat_template is not None
        else bool(record.get("chat_template", False))
    )
    return {
        "reference": _hf_folder(reference, "reference"),
        "task": task,
        "task_kwargs": task_kwargs,
        "tokenizer": tokenizer,
        "chat_template": chat,
    }


def _read_pairs(path: str) -> list[tuple[str, str, str]]:
    pairs = []
    with open(path) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{line_no}: not valid JSON ({e})") from None
            for field in ("prompt", "chosen", "rejected"):
                if not isinstance(row.get(field), str) or not row[field]:
                    raise ValueError(
                        f"{path}:{line_no}: field {field!r} must be a non-empty string"
                    )
            pairs.append((row["prompt"], row["chosen"], row["rejected"]))
    if not pairs:
        raise ValueError(f"{path}: no pairs")
    return pairs


def parse_mesh(spec: str):
    """'fsdp=4,tensor=2' -> a (data, fsdp, tensor) mesh (unnamed axes 1); '' -> None."""
    if not spec:
        return None
    shape = {"data": 1, "fsdp": 1, "tensor": 1}
    for part in spec.split(","):
        name, sep, value = part.partition("=")
        if name.strip() not in shape or not sep:
            raise ValueError(f"--mesh {spec!r}: expected comma-separated data=/fsdp=/tensor= sizes")
        try:
            shape[name.strip()] = int(value)
        except ValueError:
            raise ValueError(
                f"--mesh {spec!r}: {name.strip()} size {value!r} is not an int"
            ) from None
    return sharding.make_mesh(shape)


def evaluate_run(args, run: str, policy: str) -> dict:
    """Loads the models of one run and evaluates them; the settings used are recorded in the result."""
    cfg = _resolve(args, run, read_run_record(run), policy)
    # an unknown task or option fails here, before any model loads
    task = tasks.get_task(cfg["task"], **cfg["task_kwargs"])
    if args.num_prompts < 1:
        raise ValueError(
            f"--num_prompts must be >= 1, got {args.num_prompts}: the evaluation set has no prompts"
        )
    tokenizer = (
        tok_lib.tiny_tokenizer()
        if cfg["tokenizer"] == "tiny"
        else tok_lib.Tokenizer.from_pretrained(cfg["tokenizer"])
    )
    pairs = _read_pairs(args.pairs) if args.pairs else None
    mesh = parse_mesh(args.mesh)
    policy_model = models.from_pretrained(policy, dtype=args.dtype, mesh=mesh)
    reference_model = models.from_pretrained(cfg["reference"], dtype=args.dtype, mesh=mesh)
    if tokenizer.vocab_size > policy_model.config.vocab_size:
        raise ValueError(
            f"tokenizer {cfg['tokenizer']!r} has {tokenizer.vocab_size} ids but the policy's "
            f"vocab_size is {policy_model.config.vocab_size}"
        )
    result = evaluation.evaluate_policy(
        policy_model,
        reference_model,
        tokenizer,
        task,
        num_prompts=args.num_prompts,
        samples_per_prompt=args.samples_per_prompt,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        seed=args.seed,
        split=args.split,
        batch_size=args.batch_size,
        num_examples=args.num_examples,
        pairs=pairs,
        chat_template=cfg["chat_template"],
        top_k=args.top_k,
        top_p=args.top_p,
    )
    result.update(
        policy=os.path.abspath(policy),
        reference=os.path.abspath(cfg["reference"]),
        task_kwargs=cfg["task_kwargs"],
        tokenizer=cfg["tokenizer"],
    )
    return result


def _frontier_point(result: dict, run: str) -> dict:
    record = read_run_record(run) if os.path.isdir(run) else {}
    name = os.path.basename(os.path.normpath(run))
    if name == "hf":  # RUN/hf given directly: name it after the run
        name = os.path.basename(os.path.dirname(os.path.normpath(run)))
    return {
        "run": os.path.abspath(run),
        "label": name,
        "series": str(record.get("series", record.get("loss", ""))),
        **{
            k: result.get(k)
            for k in (
                "gold_reward",
                "gold_reward_stderr",
                "kl",
                "kl_stderr",
                "win_rate",
                "reference_gold_reward",
                "pass_at_k",
                "ranking_accuracy",
            )
        },
    }


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    workdir = os.path.abspath(args.workdir)
    if not os.path.isdir(workdir):
        if not args.frontier:
            raise FileNotFoundError(f"--workdir {workdir!r} does not exist")
        os.makedirs(workdir)
    out: dict = {}
    has_policy = bool(args.policy) or any(
        os.path.isfile(os.path.join(c, "config.json"))
        for c in (os.path.join(workdir, "hf"), workdir)
    )
    if has_policy or not args.frontier:
        out = evaluate_run(args, workdir, policy_path(workdir, args.policy))
    md = [evaluation.markdown_report(out, title=f"Evaluation of {workdir}")] if out else []
    if args.frontier:
        points = []
        for run in args.frontier:
            cached = os.path.join(run, "eval.json")
            if os.path.isfile(cached) and not args.recompute:
                with open(cached) as f:
                    result = json.load(f)
                for key in ("gold_reward", "kl"):
                    if not isinstance(result.get(key), (int, float)):
                        raise ValueError(
                            f"{cached}: no numeric {key!r}; pass --recompute to re-evaluate"
                        )
            else:
                result = evaluate_run(args, run, policy_path(run))
            points.append(_frontier_point(result, run))
        out["frontier"] = points
        out["frontier_png"] = evaluation.frontier_plot(
            points, os.path.join(workdir, "frontier.png")
        )
        md.append(
            "# Frontier\n\n"
            + evaluation.markdown_table([{**p, "run": p["label"]} for p in points])
            + "\n![gold reward vs KL](frontier.png)\n"
        )
    evaluation.write_json(out, os.path.join(workdir, "eval.json"))
    with open(os.path.join(workdir, "eval.md"), "w") as f:
        f.write("\n".join(md))
    shown = out if "gold_reward" in out else [{**p, "run": p["label"]} for p in out["frontier"]]
    print(evaluation.markdown_table(shown))
    print(f"wrote {os.path.join(workdir, 'eval.json')}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (
        ValueError,
        FileNotFoundError,
        TypeError,
    ) as e:  # bad input: one clear line, no traceback
        print(f"evaluate: error: {e}", file=sys.stderr)
        sys.exit(2)
