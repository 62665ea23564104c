"""experiments/reproduce/ipo_bandit.py: the IPO closed form on the bandit, and the --quick run end to end."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignment import losses
from experiments.reproduce import ipo_bandit as ib

UNIFORM = np.full(3, 1 / 3)
# P[y, y'] = P(y beats y'): the paper's deterministic y1 > y2 > y3, 1/2 on the diagonal
PAPER_PREFERENCE = np.array([[0.5, 1.0, 1.0], [0.0, 0.5, 1.0], [0.0, 0.0, 0.5]])


def _dataset_loss(name, logits_A, reference, beta, **kw):
    logp_A = jax.nn.log_softmax(logits_A)
    ref_A = jnp.log(jnp.asarray(reference, jnp.float32))
    w, l = np.array([p[0] for p in ib.PAIRS]), np.array([p[1] for p in ib.PAIRS])
    loss, _ = losses.get(name)(
        policy_chosen_logps=logp_A[w],
        policy_rejected_logps=logp_A[l],
        ref_chosen_logps=ref_A[w],
        ref_rejected_logps=ref_A[l],
        beta=beta,
        **kw,
    )
    return loss


@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0, 3.0])
def test_ipo_optimum_matches_the_papers_closed_form(tau):
    """Least-squares optimum == Azar et al.'s pi* ∝ pi_ref exp(p(y > mu)/tau) == gaps of 1/(3 tau)."""
    pi = ib.ipo_optimum(UNIFORM, ib.PAIRS, tau)
    np.testing.assert_allclose(pi, ib.ipo_paper_optimum(UNIFORM, PAPER_PREFERENCE, tau), atol=1e-12)
    np.testing.assert_allclose(np.log(pi[:2] / pi[1:]), [1 / (3 * tau)] * 2, atol=1e-12)
    assert pi.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("reference", [UNIFORM, np.array([0.2, 0.5, 0.3])])
@pytest.mark.parametrize("tau", [0.1, 1.0])
def test_library_ipo_loss_is_stationary_and_minimal_at_the_closed_form(reference, tau):
    """The library's `ipo` loss (paper form) has zero gradient at the closed form, where its value is
    1/(36 tau^2) (residuals -c/3, -c/3, +c/3 with c = 1/(2 tau)); nearby points are worse."""
    pi = ib.ipo_optimum(reference, ib.PAIRS, tau)
    logits = jnp.asarray(np.log(pi), jnp.float32)
    loss_fn = lambda z: _dataset_loss("ipo", z, reference, tau, length_normalize=False)  # noqa: E731
    value, grad = jax.value_and_grad(loss_fn)(logits)
    assert float(value) == pytest.approx(1 / (36 * tau**2), rel=1e-4)
    np.testing.assert_allclose(np.asarray(grad), 0.0, atol=1e-4 / tau)
    rng = np.random.default_rng(0)
    for _ in range(5):
        assert float(loss_fn(logits + 0.05 * jnp.asarray(rng.normal(size=3), jnp.float32))) > float(
            value
        )
    # the policy depends on tau only through the closed form: pi_ref reweighted by exp(gap terms)
    if np.allclose(reference, UNIFORM):
        assert pi.max() < 0.97


def test_dpo_has_no_finite_minimiser_on_this_data():
    """Along the direction that widens every gap, the DPO dataset loss strictly decreases for any beta:
    its infimum is only approached as pi(y1) -> 1 (the degeneracy the paper points out)."""
    direction = jnp.array([1.0, 0.0, -1.0])
    for beta in (0.1, 1.0, 10.0):
        values = [
            float(_dataset_loss("dpo", t * direction, UNIFORM, beta)) for t in (0.0, 1.0, 4.0, 16.0)
        ]
        assert all(a > b for a, b in zip(values, values[1:])), (beta, values)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="tau must be > 0"):
        ib.ipo_optimum(UNIFORM, ib.PAIRS, 0.0)
    with pytest.raises(ValueError, match="log_every dividing steps"):
        ib.train_bandit(
            "dpo",
            [0.1],
            [0],
            steps=10,
            learning_rate=0.1,
            batch_size=2,
            init_scale=0.1,
            log_every=3,
            reference=UNIFORM,
            pairs=ib.PAIRS,
        )


def test_quick_run_end_to_end(tmp_path):
    """`--quick` writes the reproduction contract, with per-seed values, and (being deterministic per
    seed) supports the claim: if a change to the losses or optax makes this fail, look at the table
    in results.md before loosening a threshold."""
    out = tmp_path / "out"
    result = ib.main(["--quick", "--out", str(out)])
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk == result
    for key in (
        "name",
        "paper",
        "claim",
        "supported",
        "verdict",
        "rows",
        "settings",
        "quick",
        "wall_clock_s",
        "plots",
        "command",
    ):
        assert key in on_disk, key
    assert on_disk["name"] == "ipo_bandit" and on_disk["quick"] is True
    assert isinstance(on_disk["supported"], bool)
    betas = on_disk["settings"]["betas"]
    rows = {r["method"]: r for r in on_disk["rows"]}
    assert set(rows) == {f"{m} beta={b:g}" for m in ("DPO", "IPO") for b in betas}
    for r in rows.values():
        assert r["seeds"] == [0, 1]
        for metric in (
            "pi_y1",
            "pi_y2",
            "pi_y3",
            "max_prob",
            "kl_to_ref",
            "dist_to_ipo_optimum",
            "final_loss",
        ):
            assert len(r[metric]["values"]) == 2 and all(
                math.isfinite(v) for v in r[metric]["values"]
            )
        total = np.add(np.add(r["pi_y1"]["values"], r["pi_y2"]["values"]), r["pi_y3"]["values"])
        np.testing.assert_allclose(total, 1.0, atol=1e-5)
    for b in betas:
        dpo, ipo = rows[f"DPO beta={b:g}"], rows[f"IPO beta={b:g}"]
        assert min(dpo["max_prob"]["values"]) >= ib.DETERMINISTIC
        assert max(ipo["dist_to_ipo_optimum"]["values"]) <= ib.CLOSED_FORM_TOL
        assert max(ipo["kl_to_ref"]["values"]) < min(dpo["kl_to_ref"]["values"])
        closed = on_disk["settings"]["ipo_closed_form"][f"{b:g}"]
        np.testing.assert_allclose(ipo["pi_y1"]["mean"], closed[0], atol=ib.CLOSED_FORM_TOL)
    assert on_disk["supported"] is True, on_disk["verdict"]
    for plot in on_disk["plots"]:
        assert os.path.getsize(plot) > 0
    assert (out / "results.md").read_text().startswith("# ipo_bandit")
