"""Checks of a training config that must fail before anything is built or compiled: the
learner, loss, reference mode, batch arithmetic, schedule and evaluation settings.

Types and unknown keys are already enforced by the locked ConfigDict and the flag parser; these
are the semantic checks across keys. `alignment.learners` registers `validate_config` for the
offline kinds; `learners.run` calls it before anything is built.
"""

from __future__ import annotations

from alignment import losses, optim, tasks
from alignment.learners import reward_model
from alignment.learners.offline import REFERENCE_MODES, check_supported

KINDS = ("sft", "preference", "reward_model")
# the data kind each learner reads (a reward model trains on preference pairs)
DATA_KINDS = {"sft": "sft", "preference": "preference", "reward_model": "preference"}


def check_positive(config, keys, prefix: str = "config") -> None:
    """Each of `config[key]` for `keys` is a positive integer; the error names `prefix.key`."""
    for key in keys:
        if int(config[key]) <= 0:
            raise ValueError(f"{prefix}.{key} must be positive, got {config[key]}")


def validate_config(config) -> None:
    """Raises ValueError naming the offending key(s); see the module docstring."""
    if config.kind not in KINDS:
        raise ValueError(f"config.kind must be one of {KINDS}, got {config.kind!r}")
    check_positive(
        config,
        (
            "num_train_steps",
            "checkpoint_every_steps",
            "keep_checkpoints",
            "global_batch_size",
            "grad_accum_steps",
            "log_every_steps",
        ),
    )
    if config.reference.mode not in REFERENCE_MODES:
        raise ValueError(
            f"config.reference.mode must be one of {REFERENCE_MODES}, got {config.reference.mode!r}"
        )
    family = losses.available().get(config.loss)
    if family is None:
        raise ValueError(
            f"config.loss={config.loss!r} is not a registered loss; "
            f"available: {sorted(losses.available())}"
        )
    want = {
        "sft": ("supervised",),
        "preference": ("preference", "token_preference"),
        "reward_model": ("reward_model",),
    }[config.kind]
    if family not in want:
        raise ValueError(
            f"config.loss={config.loss!r} is a {family} loss; kind={config.kind!r} needs {want}"
        )
    loss_fn = losses.get(config.loss)
    spec = losses.spec(loss_fn)
    knobs = set(config.loss_kwargs.keys())
    if config.kind == "reward_model":
        reward_model.check_supported(loss_fn, knobs)
    else:
        check_supported(loss_fn, config.kind, knobs)
    if (
        spec.needs_reference
        and config.reference.mode == "precomputed"
        and (config.kind == "sft" or family == "token_preference")
    ):
        raise ValueError(
            f"loss {config.loss!r} needs per-token reference log-probs: set reference.mode='in_step'"
        )
    unknown = knobs - set(spec.knobs)
    if unknown and not spec.var_kw:
        arrays = sorted(unknown & set(spec.inputs))
        hint = f" ({arrays} are array inputs the learner computes)" if arrays else ""
        raise ValueError(
            f"config.loss_kwargs {sorted(unknown)} are not arguments of loss {config.loss!r}{hint}"
        )
    d = config.distributed
    if d.num_processes > 1 and not d.coordinator_address:
        raise ValueError(
            "distributed.num_processes > 1 needs distributed.coordinator_address (host:port)"
        )
    if not 0 <= d.process_id < max(d.num_processes, 1):
        raise ValueError(f"distributed.process_id={d.process_id} outside [0, {d.num_processes})")
    if config.global_batch_size % (max(d.num_processes, 1) * config.grad_accum_steps):
        raise ValueError(
            f"global_batch_size={config.global_batch_size} must divide evenly over "
            f"{d.num_processes} process(es) x grad_accum_steps={config.grad_accum_steps}"
        )
    optim.make_schedule(
        config.optim, config.num_train_steps
    )  # warmup within the run, known schedule
    if config.eval_every_steps < 0:
        raise ValueError(
            f"config.eval_every_steps must be >= 0 (0 = no evaluation), got {config.eval_every_steps}"
        )
    if config.eval_every_steps and config.eval_batches <= 0:
        raise ValueError(
            f"config.eval_batches must be positive when eval_every_steps > 0, got {config.eval_batches}"
        )
    if config.task:
        if config.task not in tasks.available():
            raise ValueError(
                f"config.task={config.task!r} is not an embedded task; available: {tasks.available()}"
            )
    if config.data.kind != DATA_KINDS[config.kind]:
        raise ValueError(
            f"config.data.kind={config.data.kind!r} but kind={config.kind!r} reads "
            f"{DATA_KINDS[config.kind]!r} data"
        )


def check_mesh_batch(config, mesh) -> None:
    """The micro-batch (also the eval batch) must split evenly over the batch-sharded mesh axes."""
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    micro = config.global_batch_size // config.grad_accum_steps
    if micro % shards:
        raise ValueError(
            f"micro-batch size {micro} (global_batch_size / grad_accum_steps) is not divisible "
            f"by mesh data x fsdp = {shards}"
        )
