"""Preference losses: every one against a float64 NumPy re-derivation of docs/methods.md
section 1, closed forms, finite-difference gradients, jit/vmap/permutation invariances and bad
input."""

import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alignment import losses

# ----------------------------------------------------------------------------------------
# Independent NumPy references (float64), written from docs/methods.md section 1.


def logsig(x):
    return -np.logaddexp(0.0, -x)


def sig(x):
    return np.exp(logsig(x))


def smooth(z, ls):
    return -(1 - ls) * logsig(z) - ls * logsig(-z)


def logodds(a):
    return a - np.log(1.0 - np.exp(a))


def np_losses(name, d):
    """Per-example losses of `name` for the float64 inputs/knobs in `d`."""
    pc, pr = d["policy_chosen_logps"], d["policy_rejected_logps"]
    rc, rr = d.get("ref_chosen_logps"), d.get("ref_rejected_logps")
    lc, lr = d.get("chosen_lengths"), d.get("rejected_lengths")
    b, ls = d.get("beta", 0.1), d.get("label_smoothing", 0.0)
    if name in ("simpo", "orpo", "cpo", "slic", "asft"):
        rc = rr = None
    if rc is not None:
        cl, rl = pc - rc, pr - rr
        h = cl - rl if cl.shape == rl.shape else None
    if name == "dpo":
        return smooth(b * h, ls)
    if name == "ipo":
        hp = (cl / lc - rl / lr) if d.get("length_normalize", True) else h
        return (hp - 1 / (2 * b)) ** 2
    if name == "hinge":
        return np.maximum(0.0, 1 - b * h)
    if name == "slic":
        target = d.get("target_logps", pc)
        return np.maximum(0.0, d.get("delta", 1.0) - (pc - pr)) - d.get("lam", 0.1) * target
    if name == "sigmoid_norm":
        return smooth(b * (cl / lc - rl / lr), ls)
    if name == "robust":
        return ((1 - ls) * (-logsig(b * h)) + ls * logsig(-b * h)) / (1 - 2 * ls)
    if name == "exo_pair":
        return sig(b * h) * (logsig(b * h) - np.log(1 - ls)) + sig(-b * h) * (
            logsig(-b * h) - np.log(ls)
        )
    if name == "nca_pair":
        return -logsig(b * cl) - 0.5 * logsig(-b * cl) - 0.5 * logsig(-b * rl)
    if name == "bco_pair":
        dd = d.get("reward_shift", 0.0)
        return -logsig(b * cl - dd) - logsig(-(b * rl - dd))
    if name == "sppo_hard":
        return (cl - 1 / (2 * b)) ** 2 + (rl + 1 / (2 * b)) ** 2
    if name == "apo_zero":
        return 1 - sig(b * cl) + sig(b * rl)
    if name == "apo_down":
        return sig(b * cl) + 1 - sig(b * h)
    if name == "aot":
        return smooth(b * (np.sort(pc - pr) - np.sort(rc - rr)), ls)
    if name == "aot_unpaired":
        return smooth(b * (np.sort(cl) - np.sort(rl)), ls)
    if name == "discopop":
        z, tau = b * h, d.get("tau", 0.05)
        m = sig(z / tau)
        return (1 - m) * (-logsig(z)) + m * np.exp(-z)
    if name == "rpo":
        variant = d.get("variant", "cumulative")
        eta = d.get("eta", 0.005 if variant == "cumulative" else 1.0)
        extra = -eta * b * pc if variant == "cumulative" else eta * (-pc / lc)
        return smooth(b * h, ls) + extra
    if name == "simpo":
        return smooth(b * (pc / lc - pr / lr) - d.get("gamma", 0.5), ls)
    if name == "orpo":
        return -pc / lc - b * logsig(logodds(pc / lc) - logodds(pr / lr))
    if name == "cpo":
        return smooth(b * (pc - pr), ls) + d.get("nll_weight", 1.0) * (-pc / lc)
    if name == "kto":
        z0 = max(d["kl"], 0.0)
        return np.concatenate(
            [
                d.get("desirable_weight", 1.0) * (1 - sig(b * (cl - z0))),
                d.get("undesirable_weight", 1.0) * (1 - sig(b * (z0 - rl))),
            ]
        )
    if name == "asft":
        fw, fl = logodds(pc / lc), logodds(pr / lr)
        return -pc / lc + d.get("lam", 1.0) * (-logsig(b * fw) - logsig(-b * fl))
    if name == "inpo":
        eta, tau = d.get("eta", 1 / b), d.get("tau", 0.1)
        tc, tr = d.get("previous_chosen_logps", rc), d.get("previous_rejected_logps", rr)
        hh = (pc - pr) - eta * tau * (rc - rr) - (1 - eta * tau) * (tc - tr)
        return (hh - eta / 2) ** 2
    if name == "sail":
        pref = smooth(b * h, ls)
        return (
            pref
            + d.get("score_coef", 0.2) * pref * (pc + pr)
            - 0.5 * d.get("self_label_coef", 0.0) * logsig(b * h) ** 2
        )
    raise KeyError(name)


PREFERENCE = sorted(n for n, f in losses.available().items() if f == "preference")

# Knobs each loss needs on top of the common inputs (exo needs ls > 0, kto a reference point).
NEEDS = {"exo_pair": {"label_smoothing": 1e-3}, "kto": {"kl": 0.3}}

# Extra knob settings exercised against the reference.
VARIANTS = [
    ("dpo", {"label_smoothing": 0.2}),
    ("ipo", {"length_normalize": False}),
    ("robust", {"label_smoothing": 0.3}),
    ("exo_pair", {"label_smoothing": 0.1}),
    ("bco_pair", {"reward_shift": 0.7}),
    ("aot", {"label_smoothing": 0.1}),
    ("aot_unpaired", {"label_smoothing": 0.1}),
    ("discopop", {"tau": 0.3}),
    ("rpo", {"variant": "average"}),
    ("rpo", {"variant": "cumulative", "eta": 0.5}),
    ("simpo", {"gamma": 1.2, "beta": 2.0, "label_smoothing": 0.1}),
    ("cpo", {"nll_weight": 0.3, "label_smoothing": 0.05}),
    ("slic", {"delta": 3.0, "lam": 0.5}),
    ("kto", {"kl": -0.2, "desirable_weight": 1.5, "undesirable_weight": 0.7}),
    ("asft", {"lam": 0.4, "beta": 1.0}),
    ("inpo", {"eta": 2.0, "tau": 0.3}),
    ("sail", {"self_label_coef": 0.4, "score_coef": 0.3, "label_smoothing": 0.1}),
    ("sigmoid_norm", {"label_smoothing": 0.1}),
]


def make_batch(seed=0, b=6):
    rng = np.random.default_rng(seed)
    lc = rng.integers(2, 12, b).astype(np.float64)
    lr = rng.integers(2, 12, b).astype(np.float64)
    return {
        "policy_chosen_logps": -rng.uniform(0.2, 2.5, b) * lc,
        "policy_rejected_logps": -rng.uniform(0.2, 2.5, b) * lr,
        "ref_chosen_logps": -rng.uniform(0.2, 2.5, b) * lc,
        "ref_rejected_logps": -rng.uniform(0.2, 2.5, b) * lr,
        "chosen_lengths": lc,
        "rejected_lengths": lr,
        "beta": 0.1,
    }


def call(name, batch, **knobs):
    kw = {**batch, **NEEDS.get(name, {}), **knobs}
    return losses.get(name)(**kw)


def reference(name, batch, **knobs):
    return np_losses(name, {**batch, **NEEDS.get(name, {}), **knobs})


# ----------------------------------------------------------------------------------------


def test_every_issue_loss_is_registered_with_its_family():
    names = (
        "dpo ipo hinge slic sigmoid_norm robust exo_pair nca_pair bco_pair sppo_hard aot "
        "aot_unpaired apo_zero apo_down discopop rpo simpo orpo cpo kto asft inpo sail"
    ).split()
    avail = losses.available()
    for n in names:
        assert avail.get(n) == "preference", n
    assert avail["token_dpo"] == "token_preference"
    for n in ("sft", "iq_mle", "fdiv_sft"):
        assert avail[n] == "supervised"
    for n in ("grpo", "ppo", "reinforce", "rloo"):
        assert avail[n] == "policy_gradient"


def test_register_refuses_a_taken_name_unless_overwrite():
    def first(*, policy_chosen_logps):
        return policy_chosen_logps.mean(), {}

    def second(*, policy_chosen_logps):
        return -policy_chosen_logps.mean(), {}

    losses.register("_test_overwrite", "preference")(first)
    losses.register("_test_overwrite", "preference")(first)  # the same function again is fine
    with pytest.raises(ValueError, match="already registered.*overwrite=True"):
        losses.register("_test_overwrite", "preference")(second)
    assert losses.get("_test_overwrite") is first
    losses.register("_test_overwrite", "preference", overwrite=True)(second)
    assert losses.get("_test_overwrite") is second


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown loss .dpoo.*dpo.*sft.*grpo"):
        losses.get("dpoo")


def test_get_imports_module_function_paths():
    assert losses.get("alignment.losses.preference:dpo") is losses.get("dpo")
    with pytest.raises(ValueError, match="cannot load loss"):
        losses.get("alignment.losses.preference:nope")


@pytest.mark.parametrize("name", PREFERENCE)
def test_matches_numpy_reference(name):
    batch = make_batch(seed=1)
    loss, metrics = call(name, batch)
    want = reference(name, batch)
    np.testing.assert_allclose(np.asarray(metrics["losses"]), want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(float(loss), want.mean(), rtol=1e-4, atol=1e-4)
    assert loss.dtype == jnp.float32


@pytest.mark.parametrize(
    "name,knobs", VARIANTS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(VARIANTS)]
)
def test_variants_match_numpy_reference(name, knobs):
    batch = make_batch(seed=2)
    loss, metrics = call(name, batch, **knobs)
    want = reference(name, batch, **knobs)
    np.testing.assert_allclose(np.asarray(metrics["losses"]), want, rtol=1e-4, atol=1e-4)


def test_slic_and_inpo_optional_models():
    batch = make_batch(seed=3)
    rng = np.random.default_rng(3)
    target = -rng.uniform(1, 10, 6)
    _, m = losses.get("slic")(**batch, target_logps=target)
    np.testing.assert_allclose(
        m["losses"], np_losses("slic", {**batch, "target_logps": target}), rtol=1e-4, atol=1e-4
    )
    prev = {
        "previous_chosen_logps": -rng.uniform(1, 10, 6),
        "previous_rejected_logps": -rng.uniform(1, 10, 6),
    }
    _, m = losses.get("inpo")(**batch, **prev)
    np.testing.assert_allclose(
        m["losses"], np_losses("inpo", {**batch, **prev}), rtol=1e-4, atol=1e-4
    )


def test_contract_metrics():
    batch = make_batch(seed=4)
    for name in PREFERENCE:
        _, m = call(name, batch)
        b = batch["beta"]
        for key in (
            "losses",
            "chosen_rewards",
            "rejected_rewards",
            "reward_margin",
            "reward_accuracy",
        ):
            assert key in m, (name, key)
        if name in ("simpo", "orpo", "cpo", "slic", "asft") or name == "kto":
            continue
        cr = b * (batch["policy_chosen_logps"] - batch["ref_chosen_logps"])
        rr = b * (batch["policy_rejected_logps"] - batch["ref_rejected_logps"])
        np.testing.assert_allclose(m["chosen_rewards"], cr, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(m["rejected_rewards"], rr, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(m["reward_margin"], cr - rr, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(float(m["reward_accuracy"]), np.mean(cr > rr))
        np.testing.assert_allclose(
            float(m["ranking_accuracy"]),
            np.mean(batch["policy_chosen_logps"] >= batch["policy_rejected_logps"]),
        )


def test_reference_free_losses_report_policy_rewards():
    batch = make_batch(seed=5)
    no_ref = {k: v for k, v in batch.items() if not k.startswith("ref_")}
    for name in ("simpo", "orpo", "cpo", "slic", "asft"):
        _, m = losses.get(name)(**no_ref)
        np.testing.assert_allclose(
            m["chosen_rewards"], 0.1 * batch["policy_chosen_logps"], rtol=1e-5
        )
        # Passing the reference changes the reported rewards only, never the loss.
        l_ref, _ = losses.get(name)(**batch)
        l_noref, _ = losses.get(name)(**no_ref)
        np.testing.assert_allclose(l_ref, l_noref, rtol=1e-6)


# --- closed forms -------------------------------------------------------------------------


@pytest.mark.parametrize("ls", [0.0, 0.1, 0.5])
def test_dpo_is_log2_when_policy_equals_reference(ls):
    batch = make_batch(seed=6)
    batch["ref_chosen_logps"] = batch["policy_chosen_logps"]
    batch["ref_rejected_logps"] = batch["policy_rejected_logps"]
    for name in ("dpo", "sigmoid_norm", "robust", "aot", "aot_unpaired"):
        if name == "robust" and ls == 0.5:
            continue
        loss, _ = losses.get(name)(**batch, label_smoothing=ls)
        # h = 0: every label-smoothed logistic is log 2 (robust: (1-2ls) log 2 / (1-2ls)).
        np.testing.assert_allclose(float(loss), np.log(2.0), rtol=1e-6, err_msg=name)


def test_ipo_minimum_at_target_gap():
    beta = 0.25
    target = 1 / (2 * beta)
    pc = jnp.array([-3.0, -7.0])
    base = dict(
        policy_rejected_logps=jnp.array([-5.0, -2.0]),
        ref_chosen_logps=jnp.array([-4.0, -6.0]),
        ref_rejected_logps=jnp.array([-4.5, -1.0]),
        beta=beta,
        length_normalize=False,
    )

    def f(pc):
        return losses.get("ipo")(policy_chosen_logps=pc, **base)[0]

    # Put each pair exactly at the target gap: the loss and its gradient vanish there.
    h0 = (pc - base["ref_chosen_logps"]) - (
        base["policy_rejected_logps"] - base["ref_rejected_logps"]
    )
    at_target = pc + (target - h0)
    assert float(f(at_target)) < 1e-10
    np.testing.assert_allclose(jax.grad(f)(at_target), 0.0, atol=1e-5)
    for delta in (-0.5, 0.5):
        assert float(f(at_target + delta)) > float(f(at_target))


def test_hinge_is_zero_beyond_its_margin():
    beta = 0.5
    kw = dict(
        policy_rejected_logps=jnp.array([-5.0, -5.0]),
        ref_chosen_logps=jnp.array([-5.0, -5.0]),
        ref_rejected_logps=jnp.array([-5.0, -5.0]),
        beta=beta,
    )

    def f(pc):
        return losses.get("hinge")(policy_chosen_logps=pc, **kw)[0]

    beyond = jnp.array([-5.0 + 2.0 / beta + 0.1, -5.0 + 10.0])  # b*h > 1
    assert float(f(beyond)) == 0.0
    np.testing.assert_array_equal(jax.grad(f)(beyond), 0.0)
    inside = jnp.array([-5.0 + 1.0, -5.0 - 1.0])  # b*h < 1
    np.testing.assert_allclose(float(f(inside)), np.mean([1 - 0.5, 1 + 0.5]), rtol=1e-6)


def test_inpo_first_iteration_is_ipo():
    batch = make_batch(seed=7)
    l_inpo, _ = losses.get("inpo")(**batch)
    l_ipo, _ = losses.get("ipo")(**batch, length_normalize=False)
    np.testing.assert_allclose(float(l_inpo), float(l_ipo), rtol=1e-5)


def test_robust_and_rpo_reduce_to_dpo():
    batch = make_batch(seed=8)
    l_dpo, _ = losses.get("dpo")(**batch)
    np.testing.assert_allclose(losses.get("robust")(**batch)[0], l_dpo, rtol=1e-6)
    np.testing.assert_allclose(losses.get("rpo")(**batch, eta=0.0)[0], l_dpo, rtol=1e-6)
    # SAIL without its extra terms is DPO; its score term only changes the gradient's size.
    np.testing.assert_allclose(losses.get("sail")(**batch, score_coef=0.0)[0], l_dpo, rtol=1e-6)


def test_sail_gradient_adds_the_score_function_term():
    batch = make_batch(seed=9)
    c = 0.3
    b = batch["beta"]

    def grad_of(name, **kw):
        def f(pc, pr):
            return losses.get(name)(
                **{**batch, "policy_chosen_logps": pc, "policy_rejected_logps": pr}, **kw
            )[0]

        return jax.grad(f, argnums=(0, 1))(
            jnp.asarray(batch["policy_chosen_logps"]), jnp.asarray(batch["policy_rejected_logps"])
        )

    g_dpo = grad_of("dpo")
    g_sail = grad_of("sail", score_coef=c)
    h = (batch["policy_chosen_logps"] - batch["ref_chosen_logps"]) - (
        batch["policy_rejected_logps"] - batch["ref_rejected_logps"]
    )
    ell = -logsig(b * h)
    n = len(h)
    np.testing.assert_allclose(g_sail[0], g_dpo[0] + c * ell / n, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(g_sail[1], g_dpo[1] + c * ell / n, rtol=1e-4, atol=1e-6)
    # normalize_score_term divides by the detached |log pi|.
    g_norm = grad_of("sail", score_coef=c, normalize_score_term=True)
    np.testing.assert_allclose(
        g_norm[0],
        g_dpo[0] + c * ell / np.abs(batch["policy_chosen_logps"]) / n,
        rtol=1e-4,
        atol=1e-6,
    )


def test_discopop_stays_finite_for_extreme_margins():
    # exp(-z) alone overflows for z = -2000; the modulated form must stay finite.
    margins = np.array([-2000.0, 2000.0, 0.0, -50.0, 50.0, 1.0])
    ones = np.ones(6)
    kw = dict(
        policy_chosen_logps=-ones,
        policy_rejected_logps=-ones,
        ref_chosen_logps=-1 - margins,
        ref_rejected_logps=-ones,
        beta=1.0,
    )
    _, m = losses.get("discopop")(**kw)
    assert np.all(np.isfinite(m["losses"]))
    with np.errstate(all="ignore"):  # the naive reference overflows at +-2000
        want = np_losses("discopop", kw)
    np.testing.assert_allclose(m["losses"][2:], want[2:], rtol=1e-4)
    g = jax.grad(lambda pc: losses.get("discopop")(**{**kw, "policy_chosen_logps": pc})[0])(
        jnp.asarray(kw["policy_chosen_logps"], jnp.float32)
    )
    assert np.all(np.isfinite(g))


def test_kto_reference_point_is_a_constant_and_unpaired_sizes_work():
    rng = np.random.default_rng(10)
    kw = dict(
        policy_chosen_logps=-rng.uniform(1, 9, 3),
        ref_chosen_logps=-rng.uniform(1, 9, 3),
        policy_rejected_logps=-rng.uniform(1, 9, 5),
        ref_rejected_logps=-rng.uniform(1, 9, 5),
        beta=0.2,
    )
    pk, rk = -rng.uniform(1, 9, 4), -rng.uniform(1, 9, 4)
    loss, m = losses.get("kto")(**kw, policy_kl_logps=pk, ref_kl_logps=rk)
    assert m["losses"].shape == (8,)
    z0 = max(np.mean(pk - rk), 0.0)
    np.testing.assert_allclose(
        m["losses"], np_losses("kto", {**kw, "kl": z0}), rtol=1e-4, atol=1e-5
    )
    g = jax.grad(lambda x: losses.get("kto")(**kw, policy_kl_logps=x, ref_kl_logps=rk)[0])(
        jnp.asarray(pk, jnp.float32)
    )
    np.testing.assert_array_equal(g, 0.0)
    assert 0.0 <= float(m["reward_accuracy"]) <= 1.0


# --- gradients, jit, vmap, permutations -----------------------------------------------------

SMOOTH = [n for n in PREFERENCE if n not in ("sail",)]


@pytest.mark.parametrize("name", SMOOTH)
def test_gradient_matches_finite_differences_of_the_reference(name):
    batch = make_batch(seed=11)
    pc0 = batch["policy_chosen_logps"].copy()
    pr0 = batch["policy_rejected_logps"].copy()

    def f(pc, pr):
        return call(name, {**batch, "policy_chosen_logps": pc, "policy_rejected_logps": pr})[0]

    gc, gr = jax.grad(f, argnums=(0, 1))(
        jnp.asarray(pc0, jnp.float32), jnp.asarray(pr0, jnp.float32)
    )
    eps = 1e-5

    def ref_mean(pc, pr):
        return reference(
            name, {**batch, "policy_chosen_logps": pc, "policy_rejected_logps": pr}
        ).mean()

    for got, which in ((gc, 0), (gr, 1)):
        fd = np.zeros(6)
        for i in range(6):
            up = [pc0.copy(), pr0.copy()]
            dn = [pc0.copy(), pr0.copy()]
            up[which][i] += eps
            dn[which][i] -= eps
            fd[i] = (ref_mean(*up) - ref_mean(*dn)) / (2 * eps)
        np.testing.assert_allclose(np.asarray(got), fd, rtol=2e-3, atol=2e-5, err_msg=name)


@pytest.mark.parametrize("name", PREFERENCE)
def test_jit_equals_eager(name):
    batch = {
        k: (jnp.asarray(v, jnp.float32) if isinstance(v, np.ndarray) else v)
        for k, v in make_batch(seed=12).items()
    }
    arrays = {k: v for k, v in batch.items() if k != "beta"}
    fn = losses.get(name)
    eager_loss, eager_m = fn(**arrays, beta=0.1, **NEEDS.get(name, {}))
    jit_loss, jit_m = jax.jit(lambda a: fn(**a, beta=0.1, **NEEDS.get(name, {})))(arrays)
    np.testing.assert_allclose(eager_loss, jit_loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(eager_m["losses"], jit_m["losses"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["dpo", "ipo", "simpo", "kto", "aot", "orpo", "sail"])
def test_vmap_equals_loop(name):
    batches = [make_batch(seed=20 + i) for i in range(3)]
    stacked = {
        k: jnp.stack([jnp.asarray(b[k], jnp.float32) for b in batches])
        for k in batches[0]
        if k != "beta"
    }
    fn = functools.partial(losses.get(name), beta=0.1, **NEEDS.get(name, {}))
    vl, _ = jax.vmap(lambda a: fn(**a))(stacked)
    for i, b in enumerate(batches):
        li, _ = fn(**{k: v for k, v in b.items() if k != "beta"})
        np.testing.assert_allclose(vl[i], li, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", PREFERENCE)
def test_batch_permutation(name):
    batch = make_batch(seed=13)
    perm = np.random.default_rng(0).permutation(6)
    permuted = {k: (v[perm] if isinstance(v, np.ndarray) else v) for k, v in batch.items()}
    l0, m0 = call(name, batch)
    l1, m1 = call(name, permuted)
    np.testing.assert_allclose(l0, l1, rtol=1e-5)
    if name in ("aot", "aot_unpaired"):
        return
    want = np.asarray(m0["losses"])
    want = np.concatenate([want[:6][perm], want[6:][perm]]) if name == "kto" else want[perm]
    np.testing.assert_allclose(m1["losses"], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["aot", "aot_unpaired"])
def test_aot_couples_the_batch(name):
    zeros = np.zeros(4)
    batch = dict(
        policy_chosen_logps=np.array([-1.0, -2.0, -3.0, -4.0]),
        policy_rejected_logps=np.array([-5.0, -5.0, -5.0, -5.0]),
        ref_chosen_logps=zeros - 5,
        ref_rejected_logps=zeros - 5,
        beta=1.0,
    )
    _, m0 = call(name, batch)
    moved = dict(batch, policy_chosen_logps=np.array([-9.0, -2.0, -3.0, -4.0]))
    _, m1 = call(name, moved)
    # Example 0 drops from the largest to the smallest margin: every order statistic moves,
    # so every per-position loss changes although examples 1-3 are untouched.
    changed = np.abs(np.asarray(m1["losses"]) - np.asarray(m0["losses"])) > 1e-6
    assert changed.all(), changed


def test_float32_whatever_the_input_dtype():
    batch = make_batch(seed=15)
    for dtype in (jnp.bfloat16, jnp.float16, jnp.float32):
        cast = {
            k: (jnp.asarray(v, dtype) if isinstance(v, np.ndarray) else v) for k, v in batch.items()
        }
        for name in ("dpo", "simpo", "ipo"):
            loss, m = losses.get(name)(**cast)
            assert loss.dtype == jnp.float32 and m["losses"].dtype == jnp.float32


# --- properties ----------------------------------------------------------------------------

finite = st.floats(-60.0, -0.05, allow_nan=False)


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.tuples(finite, finite, finite, finite), min_size=6, max_size=6),
    st.floats(0.01, 2.0),
    st.floats(-5.0, 5.0),
)
def test_pair_losses_depend_only_on_the_log_ratio_gap(rows, beta, shift):
    arr = np.array(rows, dtype=np.float64)
    kw = dict(
        policy_chosen_logps=arr[:, 0],
        policy_rejected_logps=arr[:, 1],
        ref_chosen_logps=arr[:, 2],
        ref_rejected_logps=arr[:, 3],
        beta=beta,
    )
    shifted = dict(
        kw, policy_chosen_logps=arr[:, 0] + shift, policy_rejected_logps=arr[:, 1] + shift
    )
    for name in ("dpo", "robust", "hinge", "discopop"):
        l0, m0 = losses.get(name)(**kw)
        l1, _ = losses.get(name)(**shifted)
        assert np.isfinite(float(l0))
        np.testing.assert_allclose(l0, l1, rtol=2e-4, atol=2e-4)
        np.testing.assert_allclose(m0["losses"], np_losses(name, kw), rtol=2e-4, atol=2e-4)


@settings(max_examples=25, deadline=None)
@given(st.floats(-30.0, 30.0), st.floats(0.0, 0.5), st.floats(0.01, 1.0))
def test_dpo_is_decreasing_in_the_margin_and_symmetric_under_label_flip(h, ls, beta):
    def per_example(hh, lsmooth):
        return float(
            losses.get("dpo")(
                policy_chosen_logps=np.array([hh]),
                policy_rejected_logps=np.array([0.0]),
                ref_chosen_logps=np.array([0.0]),
                ref_rejected_logps=np.array([0.0]),
                beta=beta,
                label_smoothing=lsmooth,
            )[0]
        )

    if ls == 0.0:
        assert per_example(h + 1.0, 0.0) <= per_example(h, 0.0) + 1e-6
    # Swapping chosen and rejected is the same as smoothing 1 - ls (checked at ls <= 0.5).
    np.testing.assert_allclose(
        per_example(h, ls), float(smooth(-beta * -h, ls)), rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(
        per_example(-h, ls), float(smooth(beta * -h, ls)), rtol=1e-4, atol=1e-5
    )


# --- bad input -----------------------------------------------------------------------------


def test_mismatched_shapes_raise():
    batch = make_batch(seed=16)
    bad = dict(batch, ref_rejected_logps=batch["ref_rejected_logps"][:3])
    with pytest.raises(ValueError, match="dpo.*shape mismatch.*ref_rejected_logps"):
        losses.get("dpo")(**bad)
    with pytest.raises(ValueError, match="rank 1"):
        losses.get("dpo")(**dict(batch, policy_chosen_logps=batch["policy_chosen_logps"][:, None]))
    bad_len = dict(batch, chosen_lengths=batch["chosen_lengths"][:2])
    with pytest.raises(ValueError, match="chosen_lengths"):
        losses.get("simpo")(**bad_len)


@pytest.mark.parametrize("name", ["sigmoid_norm", "simpo", "ipo", "orpo", "cpo", "asft"])
def test_non_positive_lengths_raise(name):
    batch = make_batch(seed=17)
    lengths = batch["chosen_lengths"].copy()
    lengths[2] = 0
    with pytest.raises(ValueError, match=rf"{name}.*chosen_lengths.*> 0.*index \(2,\)"):
        losses.get(name)(**dict(batch, chosen_lengths=lengths))
    no_lengths = {k: v for k, v in batch.items() if "lengths" not in k}
    with pytest.raises(ValueError, match="chosen_lengths"):
        losses.get(name)(**no_lengths)


@pytest.mark.parametrize(
    "name,ls",
    [("dpo", -0.1), ("dpo", 0.7), ("robust", 0.5), ("exo_pair", 0.0), ("simpo", 1.2), ("aot", 0.6)],
)
def test_label_smoothing_out_of_range_raises(name, ls):
    with pytest.raises(ValueError, match=f"{name}.*label_smoothing"):
        losses.get(name)(**make_batch(seed=18), label_smoothing=ls)


def test_label_smoothing_on_a_loss_without_it_raises():
    with pytest.raises(ValueError, match="'ipo' has no label-smoothing term"):
        losses.get("ipo")(**make_batch(seed=19), label_smoothing=0.1)


@pytest.mark.parametrize("name", PREFERENCE)
def test_nan_input_raises_eagerly(name):
    batch = make_batch(seed=21)
    pc = batch["policy_chosen_logps"].copy()
    pc[3] = np.nan
    with pytest.raises(ValueError, match=r"policy_chosen_logps.*non-finite.*index \(3,\)"):
        call(name, dict(batch, policy_chosen_logps=pc))


def test_nan_input_under_jit_is_not_hidden():
    batch = {
        k: (jnp.asarray(v, jnp.float32) if isinstance(v, np.ndarray) else v)
        for k, v in make_batch(seed=22).items()
    }
    batch["policy_rejected_logps"] = batch["policy_rejected_logps"].at[1].set(jnp.nan)
    for name in ("dpo", "ipo", "simpo", "hinge"):
        loss, _ = jax.jit(lambda b: losses.get(name)(**b))(batch)
        assert np.isnan(float(loss)), name


def test_other_bad_knobs_raise():
    batch = make_batch(seed=23)
    with pytest.raises(ValueError, match="beta"):
        losses.get("dpo")(**batch | {"beta": 0.0})
    with pytest.raises(ValueError, match="kto.*z0"):
        losses.get("kto")(**batch)
    with pytest.raises(ValueError, match="variant"):
        losses.get("rpo")(**batch, variant="sum")
    pos = dict(batch, policy_chosen_logps=np.abs(batch["policy_chosen_logps"]))
    with pytest.raises(ValueError, match=r"log-probabilities \(<= 0\)"):
        losses.get("orpo")(**pos)
    with pytest.raises(ValueError, match="eta\\*tau"):
        losses.get("inpo")(**batch, eta=20.0, tau=0.1)


# --- the decorator, the input names -------------------------------------------------------


@losses.preference_loss("_test_dpo_positive", overwrite=True)
def _dpo_positive(p: losses.Pair, *, beta: float = 0.1, lam: float = 5.0):
    penalty = jax.nn.relu(-p.cl)
    return -jax.nn.log_sigmoid(beta * (p.h - lam * penalty)), {"penalty": jnp.mean(penalty)}


def test_preference_loss_decorator_gives_the_common_interface_and_checks():
    fn = losses.get("_test_dpo_positive")
    assert losses.family("_test_dpo_positive") == "preference"
    assert list(inspect.signature(fn).parameters) == [
        "policy_chosen_logps",
        "policy_rejected_logps",
        "ref_chosen_logps",
        "ref_rejected_logps",
        "chosen_lengths",
        "rejected_lengths",
        "beta",
        "label_smoothing",
        "lam",
    ]
    assert losses.defaults("_test_dpo_positive") == {
        "beta": 0.1,
        "label_smoothing": 0.0,
        "lam": 5.0,
    }
    batch = make_batch(seed=30)
    loss, m = fn(**batch, lam=2.0)
    cl = batch["policy_chosen_logps"] - batch["ref_chosen_logps"]
    h = cl - (batch["policy_rejected_logps"] - batch["ref_rejected_logps"])
    want = -logsig(0.1 * (h - 2.0 * np.maximum(-cl, 0.0)))
    np.testing.assert_allclose(m["losses"], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(loss), want.mean(), rtol=1e-5)
    np.testing.assert_allclose(float(m["penalty"]), np.maximum(-cl, 0.0).mean(), rtol=1e-5)
    assert {"chosen_rewards", "reward_accuracy", "ranking_accuracy_normalized"} <= set(m)
    with pytest.raises(ValueError, match="_test_dpo_positive.*shape mismatch.*ref_chosen_logps"):
        fn(**dict(batch, ref_chosen_logps=batch["ref_chosen_logps"][:2]))
    with pytest.raises(ValueError, match="'_test_dpo_positive' has no label-smoothing term"):
        fn(**batch, label_smoothing=0.1)
    with pytest.raises(TypeError, match="_test_dpo_positive.*ref_rejected_logps"):
        fn(**{k: v for k, v in batch.items() if k != "ref_rejected_logps"})
    old = {("reference" + k[3:] if k.startswith("ref_") else k): v for k, v in batch.items()}
    with pytest.raises(TypeError, match="`reference_chosen_logps` is now `ref_chosen_logps`"):
        fn(**old)


def test_every_registered_loss_declares_its_inputs_from_the_one_list():
    for name, fam in losses.available().items():
        if name.startswith("_test"):
            continue
        spec = losses.spec(name)
        assert spec.family == fam
        if name != "iq_mle":  # declares logits/targets, which no learner computes
            assert set(spec.inputs) <= set(losses.INPUTS[fam]), name
        assert not set(spec.inputs) & set(losses.defaults(name)), name
    assert losses.inputs("dpo") == losses.INPUTS["preference"]
    assert losses.inputs("iq_mle") == ("logits", "targets", "mask")
    assert losses.needs_reference("dpo") and losses.needs_reference("fdiv_sft")
    assert not losses.needs_reference("simpo") and not losses.needs_reference("sft")

    # a function that is not registered is read from its argument names
    def mine(*, policy_chosen_logps, ref_chosen_logps, beta=0.1):
        return 0.0, {}

    assert losses.inputs(mine) == ("policy_chosen_logps", "ref_chosen_logps")
    assert losses.spec(mine).knobs == ("beta",) and losses.needs_reference(mine)


def _tabular_sail_setup(seed=0, k=4):
    """A softmax policy over `k` responses with a fixed reference and reward; every ordered pair
    (y1, y2) of responses, labelled chosen = the higher reward (ties: y1)."""
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=k)
    ref_logits = rng.normal(size=k)
    ref_lp = ref_logits - np.log(np.exp(ref_logits).sum())
    reward = rng.normal(size=k)
    i, j = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")
    i, j = i.ravel(), j.ravel()
    w = np.where(reward[i] >= reward[j], i, j)
    lo = np.where(reward[i] >= reward[j], j, i)
    return theta, ref_lp, i, j, w, lo


def _sail_expected_gradient(theta, ref_lp, i, j, w, lo, *, b, c, sign, normalize):
    """numpy closed form of E_{y1, y2 ~ pi}[grad of SAIL's surrogate] for the tabular policy:
    grad lp_y = e_y - pi, grad l = -b*sigmoid(-b*h)*(grad lp_w - grad lp_l), score part
    sign * c * l * (grad lp_w / n_w + grad lp_l / n_l), n = 1 or |lp|."""
    k = len(theta)
    pi = np.exp(theta - theta.max())
    pi /= pi.sum()
    lp = np.log(pi)
    eye = np.eye(k)
    g = np.zeros(k)
    for a, bb, yw, yl in zip(i, j, w, lo):
        h = (lp[yw] - ref_lp[yw]) - (lp[yl] - ref_lp[yl])
        ell = -logsig(b * h)
        grad_w, grad_l = eye[yw] - pi, eye[yl] - pi
        n_w, n_l = (abs(lp[yw]), abs(lp[yl])) if normalize else (1.0, 1.0)
        grad = -b * sig(-b * h) * (grad_w - grad_l) + sign * c * ell * (grad_w / n_w + grad_l / n_l)
        g += pi[a] * pi[bb] * grad
    return g


def _sail_surrogate_gradient(theta, ref_lp, i, j, w, lo, **kw):
    """jax gradient of sum_pairs pi(y1) pi(y2) * (SAIL's per-pair surrogate), the sampling
    weights held fixed: the expectation of the per-sample gradient the learner follows."""

    def f(t):
        lp = jax.nn.log_softmax(t)
        weights = jax.lax.stop_gradient(jnp.exp(lp)[i] * jnp.exp(lp)[j])
        _, m = losses.get("sail")(
            policy_chosen_logps=lp[w],
            policy_rejected_logps=lp[lo],
            ref_chosen_logps=jnp.asarray(ref_lp)[w],
            ref_rejected_logps=jnp.asarray(ref_lp)[lo],
            **kw,
        )
        return jnp.sum(weights * m["losses"])

    return np.asarray(jax.grad(f)(jnp.asarray(theta, jnp.float32)))


def test_sail_exact_score_term_is_the_gradient_of_the_sampled_objective():
    """With c = 1 (no normalisation, no smoothing) the expected surrogate gradient over pairs drawn
    from pi is exactly grad of -E_{y1, y2 ~ pi} logsig(b*h): the score-function term is what the
    sampling distribution's dependence on the policy contributes."""
    theta, ref_lp, i, j, w, lo = _tabular_sail_setup()
    b = 0.5

    def objective(t):
        lp = jax.nn.log_softmax(t)
        pi = jnp.exp(lp)
        ref = jnp.asarray(ref_lp)
        h = (lp[w] - ref[w]) - (lp[lo] - ref[lo])
        return -jnp.sum(pi[i] * pi[j] * jax.nn.log_sigmoid(b * h))

    exact = np.asarray(jax.grad(objective)(jnp.asarray(theta, jnp.float32)))
    got = _sail_surrogate_gradient(theta, ref_lp, i, j, w, lo, beta=b, score_coef=1.0)
    np.testing.assert_allclose(got, exact, rtol=1e-4, atol=1e-6)
    # the DPO part alone misses the sampling term: the check is not vacuous
    dpo_only = _sail_surrogate_gradient(theta, ref_lp, i, j, w, lo, beta=b, score_coef=0.0)
    assert np.abs(dpo_only - exact).max() > 1e-3


@pytest.mark.parametrize("sign", ["exact", "authors"])
@pytest.mark.parametrize("normalize", [False, True])
def test_sail_score_term_forms_match_their_closed_form_gradients(sign, normalize):
    """Each form of the score term (sign: the exact gradient's or the authors' code's; raw or
    divided by |log pi|) against its numpy closed form on the tabular policy."""
    theta, ref_lp, i, j, w, lo = _tabular_sail_setup(seed=1)
    b, c = 0.5, 0.3
    got = _sail_surrogate_gradient(
        theta,
        ref_lp,
        i,
        j,
        w,
        lo,
        beta=b,
        score_coef=c,
        normalize_score_term=normalize,
        score_term_sign=sign,
    )
    want = _sail_expected_gradient(
        theta,
        ref_lp,
        i,
        j,
        w,
        lo,
        b=b,
        c=c,
        sign=1.0 if sign == "exact" else -1.0,
        normalize=normalize,
    )
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_sail_authors_sign_is_the_exact_term_negated():
    """The authors' code's hook `grad - c * logsig(b*h) / log pi(y)` (signed log-prob) is the
    normalised exact term with c -> -c."""
    batch = make_batch(seed=10)
    authors = losses.get("sail")(
        **batch, score_coef=0.3, normalize_score_term=True, score_term_sign="authors"
    )
    negated = losses.get("sail")(**batch, score_coef=-0.3, normalize_score_term=True)
    np.testing.assert_allclose(authors[1]["losses"], negated[1]["losses"], rtol=1e-6)
    with pytest.raises(ValueError, match="score_term_sign"):
        losses.get("sail")(**batch, score_term_sign="paper")
