"""Two `jax.distributed` processes on localhost (4 fake CPU devices each, gloo collectives)
match the single-process 8-device run of the same config."""

import socket

import engine_testlib as lib  # tests/ is on sys.path (conftest.py)
import numpy as np

STEPS = 40  # same as test_train_resume, so the cached reference run is shared


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_match_single_process(tmp_path_factory):
    reference = lib.reference_dpo_run(str(tmp_path_factory.mktemp("dpo_ref")), STEPS)
    workdir = tmp_path_factory.mktemp("dist") / "run"
    port = _free_port()
    procs = [
        lib.run_train_cli(
            workdir,
            f"--config.num_train_steps={STEPS}",
            f"--config.checkpoint_every_steps={STEPS}",
            "--config.distributed.num_processes=2",
            f"--config.distributed.process_id={i}",
            f"--config.distributed.coordinator_address=localhost:{port}",
            devices=4,
            wait=False,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=400)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-4000:]
    step, dist = lib.final_params(workdir)
    ref_step, expected = lib.final_params(reference)
    assert step == ref_step == STEPS
    for k in expected:
        np.testing.assert_allclose(dist[k], expected[k], atol=1e-5, err_msg=k)
    ref_rows = [l for l in open(reference / "metrics.jsonl")]
    dist_rows = [l for l in open(workdir / "metrics.jsonl")]
    assert len(dist_rows) == len(ref_rows) == STEPS  # only process 0 writes
