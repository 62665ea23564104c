"""The engine: sharded state, the jitted train/eval step, and the run context.

(Scaffold: re-exports the engine functions of `alignment.train` under their final names while
the split into `engine/state.py`, `engine/step.py` and `engine/run.py` is in progress.)
"""

from alignment.train import (  # noqa: F401
    abstract_model,
    batch_shardings_for,
    create_train_state,
    evaluate,
    init_distributed,
    init_params,
    load_params,
    make_eval_step,
    make_logprob_fn,
    make_tokenizer,
    make_train_step,
    model_config,
    opt_state_shardings,
    param_shardings,
    run_record,
    to_global,
)
