"""The engine: what every learner builds on, importing no learner.

- `state`: model config and parameters born sharded (or loaded from a Hugging Face folder), the
  train state with its optimizer sharded like the parameters, the per-token log-prob function;
- `step`: one jitted, donated `train_step(state, batch) -> (state, metrics)` (gradient
  accumulation included), its `eval_step`, host batch -> global sharded arrays;
- `run`: `open_run(config, workdir)`, the run context (mesh, tokenizer, policy, reference,
  checkpointer, metrics one step late, export);
- `config`: the shared config schema of `configs/*.py`.
"""

from alignment.engine.run import (
    MetricsLog,
    RunContext,
    init_distributed,
    load_policy,
    make_tokenizer,
    open_run,
    run_record,
)
from alignment.engine.state import (
    abstract_model,
    create_train_state,
    init_params,
    load_params,
    make_logprob_fn,
    model_config,
    opt_state_shardings,
    param_shardings,
)
from alignment.engine.step import (
    LossFn,
    batch_shardings_for,
    evaluate,
    make_eval_step,
    make_train_step,
    to_global,
)

__all__ = [
    "LossFn",
    "MetricsLog",
    "RunContext",
    "abstract_model",
    "batch_shardings_for",
    "create_train_state",
    "evaluate",
    "init_distributed",
    "init_params",
    "load_params",
    "load_policy",
    "make_eval_step",
    "make_logprob_fn",
    "make_tokenizer",
    "make_train_step",
    "model_config",
    "open_run",
    "opt_state_shardings",
    "param_shardings",
    "run_record",
    "to_global",
]
