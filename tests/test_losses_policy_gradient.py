"""Policy-gradient losses and KL estimators against float64 NumPy re-derivations (docs/methods.md
section 3), closed-form gradients, aggregation rules, padding safety and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alignment import losses

B, T = 4, 5


def np_kl(logps, ref, est):
    d = ref - logps
    return {"k1": -d, "k2": 0.5 * d**2, "k3": np.exp(d) - d - 1}[est]


def np_aggregate(l, m, agg, num_tokens=None, max_len=None):
    l = np.where(m != 0, l, 0.0)
    if agg == "grpo":
        return np.mean(l.sum(1) / np.maximum(m.sum(1), 1))
    if agg == "bnpo":
        return l.sum() / max(m.sum(), 1)
    if agg == "dr_grpo":
        return l.sum() / (l.shape[0] * (max_len or l.shape[1]))
    return l.sum() / num_tokens


def np_surrogate(lr, a, el, eh, dual):
    r = np.exp(lr)
    pg = np.maximum(-a * r, -a * np.clip(r, 1 - el, 1 + eh))
    if dual is not None:
        pg = np.where(a < 0, np.minimum(pg, -dual * a), pg)
    return pg


def np_grpo(
    logps,
    old,
    mask,
    adv,
    ref=None,
    beta=0.0,
    kl_estimator="k3",
    epsilon_low=0.2,
    epsilon_high=0.2,
    dual_clip=None,
    importance_level="token",
    aggregation="grpo",
    num_tokens=None,
    max_len=None,
    entropy=None,
    entropy_coef=0.0,
):
    a = np.broadcast_to(adv[:, None], logps.shape) if adv.ndim == 1 else adv
    lr = np.where(mask != 0, logps - old, 0.0)
    if importance_level == "sequence":
        lr = np.broadcast_to((lr.sum(1) / mask.sum(1))[:, None], lr.shape)
    l = np_surrogate(lr, a, epsilon_low, epsilon_high, dual_clip)
    if ref is not None:
        l = l + beta * np_kl(logps, ref, kl_estimator)
    if entropy is not None:
        l = l - entropy_coef * entropy
    return np_aggregate(l, mask, aggregation, num_tokens, max_len)


def make(seed=0, adv_per_token=False):
    rng = np.random.default_rng(seed)
    lengths = np.array([5, 3, 4, 1])
    mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.float64)
    logps = -rng.uniform(0.1, 3.0, (B, T))
    old = logps + rng.normal(0, 0.3, (B, T))
    ref = logps + rng.normal(0, 0.5, (B, T))
    adv = rng.normal(0, 1, (B, T) if adv_per_token else (B,))
    return dict(logps=logps, old_logps=old, ref_logps=ref, mask=mask, advantages=adv)


GRPO_CASES = [
    {},
    {"beta": 0.04, "kl_estimator": "k3"},
    {"beta": 0.1, "kl_estimator": "k1", "aggregation": "bnpo"},
    {"beta": 0.1, "kl_estimator": "k2", "aggregation": "dr_grpo"},
    {"aggregation": "dr_grpo", "max_len": 8},
    {"aggregation": "dapo", "num_tokens": 40.0, "epsilon_high": 0.28},
    {"dual_clip": 3.0, "epsilon_low": 0.1, "epsilon_high": 0.1},
    {"importance_level": "sequence", "epsilon_low": 3e-4, "epsilon_high": 4e-4},
    {"importance_level": "sequence"},
    {"per_token_adv": True, "aggregation": "bnpo"},
    {"entropy_coef": 0.01},
]


@pytest.mark.parametrize("case", GRPO_CASES, ids=[str(i) for i in range(len(GRPO_CASES))])
def test_grpo_matches_numpy_reference(case):
    case = dict(case)
    d = make(seed=1, adv_per_token=case.pop("per_token_adv", False))
    rng = np.random.default_rng(5)
    ent = rng.uniform(0, 2, (B, T)) if "entropy_coef" in case else None
    ref = d["ref_logps"] if "beta" in case else None
    loss, m = losses.get("grpo")(
        logps=d["logps"],
        old_logps=d["old_logps"],
        mask=d["mask"],
        advantages=d["advantages"],
        ref_logps=ref,
        entropy=ent,
        **case,
    )
    want = np_grpo(
        d["logps"], d["old_logps"], d["mask"], d["advantages"], ref=ref, entropy=ent, **case
    )
    np.testing.assert_allclose(float(loss), want, rtol=1e-5, atol=1e-6)
    for key in ("per_token_loss", "clip_ratio_low", "clip_ratio_high", "clip_fraction"):
        assert key in m
    if ref is not None:
        want_kl = np.sum(np_kl(d["logps"], ref, case["kl_estimator"]) * d["mask"]) / d["mask"].sum()
        np.testing.assert_allclose(float(m["kl"]), want_kl, rtol=1e-5)


def test_clip_fractions_count_the_clipped_tokens():
    mask = np.ones((1, 4))
    lr = np.log(np.array([[0.5, 1.0, 1.5, 1.5]]))
    adv = np.array([[-1.0, 1.0, 1.0, -1.0]])
    _, m = losses.get("grpo")(logps=lr, old_logps=np.zeros((1, 4)), mask=mask, advantages=adv)
    assert float(m["clip_ratio_low"]) == 0.25  # ratio 0.5 < 0.8 with A < 0
    assert float(m["clip_ratio_high"]) == 0.25  # ratio 1.5 > 1.2 with A > 0
    assert float(m["clip_fraction"]) == 0.5


def test_dual_clip_caps_negative_advantage_loss():
    kw = dict(
        logps=np.log([[10.0]]),
        old_logps=np.zeros((1, 1)),
        mask=np.ones((1, 1)),
        advantages=np.array([-2.0]),
    )
    plain, _ = losses.get("grpo")(**kw)
    dual, m = losses.get("grpo")(**kw, dual_clip=3.0)
    np.testing.assert_allclose(float(plain), 20.0, rtol=1e-5)  # -A * r
    np.testing.assert_allclose(float(dual), 6.0, rtol=1e-5)  # capped at -c * A
    assert float(m["dual_clip_fraction"]) == 1.0


@pytest.mark.parametrize("name", ["grpo", "ppo", "reinforce", "rloo"])
def test_zero_advantages_give_zero_policy_gradient(name):
    d = make(seed=2)
    kw = dict(mask=d["mask"], old_logps=d["old_logps"], advantages=np.zeros(B))
    if name == "ppo":
        zeros = np.zeros((B, T))
        kw.update(advantages=zeros, values=zeros, old_values=zeros, returns=zeros)
    g = jax.grad(lambda lp: losses.get(name)(logps=lp, **kw)[0])(jnp.asarray(d["logps"]))
    np.testing.assert_array_equal(np.asarray(g), 0.0)


def test_on_policy_grpo_gradient_is_advantage_weighted_score():
    d = make(seed=3)
    g = jax.grad(
        lambda lp: losses.get("grpo")(logps=lp, mask=d["mask"], advantages=d["advantages"])[0]
    )(jnp.asarray(d["logps"], jnp.float32))
    want = -d["advantages"][:, None] * d["mask"] / d["mask"].sum(1, keepdims=True) / B
    np.testing.assert_allclose(np.asarray(g), want, rtol=1e-5, atol=1e-7)


def test_gspo_gradient_is_sequence_level():
    d = make(seed=4)
    kw = dict(
        old_logps=d["old_logps"],
        mask=d["mask"],
        advantages=d["advantages"],
        importance_level="sequence",
        epsilon_low=0.99,
        epsilon_high=100.0,
    )
    g = jax.grad(lambda lp: losses.get("grpo")(logps=lp, **kw)[0])(
        jnp.asarray(d["logps"], jnp.float32)
    )
    lengths = d["mask"].sum(1)
    s = np.exp(np.sum((d["logps"] - d["old_logps"]) * d["mask"], 1) / lengths)
    # d/dlogp of -A * s(theta) with s = exp(mean_t log ratio), then the GRPO mean over tokens
    # and sequences (each token carries s, so the token mean of the loss is -A*s).
    want = -(d["advantages"] * s)[:, None] * d["mask"] / lengths[:, None] / B
    np.testing.assert_allclose(np.asarray(g), want, rtol=1e-4, atol=1e-7)


def test_gradients_match_finite_differences():
    d = make(seed=6)
    for name, extra in (
        ("grpo", dict(ref_logps=d["ref_logps"], beta=0.1)),
        ("grpo", dict(importance_level="sequence")),
        ("reinforce", dict(ref_logps=d["ref_logps"], beta=0.05)),
    ):
        kw = dict(old_logps=d["old_logps"], mask=d["mask"], advantages=d["advantages"], **extra)
        g = jax.grad(lambda lp: losses.get(name)(logps=lp, **kw)[0])(
            jnp.asarray(d["logps"], jnp.float32)
        )

        def ref_loss(lp):
            if name == "grpo":
                return np_grpo(
                    lp,
                    d["old_logps"],
                    d["mask"],
                    d["advantages"],
                    ref=extra.get("ref_logps"),
                    beta=extra.get("beta", 0.0),
                    importance_level=extra.get("importance_level", "token"),
                )
            seq = np.exp(np.sum((lp - d["old_logps"]) * d["mask"], 1))
            kl = np.sum(np_kl(lp, d["ref_logps"], "k1") * d["mask"], 1)
            return np.mean(-d["advantages"] * seq + 0.05 * kl)

        eps = 1e-6
        fd = np.zeros((B, T))
        for idx in np.ndindex(B, T):
            up, dn = d["logps"].copy(), d["logps"].copy()
            up[idx] += eps
            dn[idx] -= eps
            fd[idx] = (ref_loss(up) - ref_loss(dn)) / (2 * eps)
        np.testing.assert_allclose(np.asarray(g), fd, rtol=2e-3, atol=2e-5, err_msg=name)


def test_aggregations_closed_form():
    per_token = np.array([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = np.array([[1, 1, 1], [1, 0, 0]], np.float32)
    agg = losses.aggregate
    np.testing.assert_allclose(agg(per_token, mask, "grpo"), (2.0 + 4.0) / 2)
    np.testing.assert_allclose(agg(per_token, mask, "bnpo"), 10.0 / 4)
    np.testing.assert_allclose(agg(per_token, mask, "dr_grpo"), 10.0 / 6)
    np.testing.assert_allclose(agg(per_token, mask, "dr_grpo", max_len=5), 10.0 / 10)
    np.testing.assert_allclose(agg(per_token, mask, "dapo", num_tokens=20), 0.5)
    with pytest.raises(ValueError, match="dapo.*num_tokens"):
        agg(per_token, mask, "dapo")
    with pytest.raises(ValueError, match="aggregation"):
        agg(per_token, mask, "mean")


def test_kl_estimators_closed_form_and_unbiasedness():
    logps, ref = np.array([-1.0, -2.0, -0.5]), np.array([-1.5, -1.0, -0.5])
    for est in ("k1", "k2", "k3"):
        np.testing.assert_allclose(
            losses.kl_estimate(logps, ref, est), np_kl(logps, ref, est), rtol=1e-6, atol=1e-7
        )
    assert np.all(np.asarray(losses.kl_estimate(logps, ref, "k3")) >= 0)
    # Exact expectations over a categorical pi: k1 and k3 are unbiased for KL(pi || ref).
    p = np.array([0.5, 0.3, 0.2])
    q = np.array([0.2, 0.2, 0.6])
    kl = np.sum(p * np.log(p / q))
    for est in ("k1", "k3"):
        e = np.sum(p * np.asarray(losses.kl_estimate(np.log(p), np.log(q), est), np.float64))
        np.testing.assert_allclose(e, kl, rtol=1e-5)
    with pytest.raises(ValueError, match="kl_estimator"):
        losses.kl_estimate(logps, ref, "k4")


def np_ppo(d, values, old_values, returns, value_clip, vf_coef, aggregation="bnpo"):
    lr = np.where(d["mask"] != 0, d["logps"] - d["old_logps"], 0.0)
    pg = np_surrogate(lr, d["advantages"], 0.2, 0.2, None)
    vc = old_values + np.clip(values - old_values, -value_clip, value_clip)
    vf = 0.5 * np.maximum((values - returns) ** 2, (vc - returns) ** 2)
    return np_aggregate(pg, d["mask"], aggregation) + vf_coef * np_aggregate(
        vf, d["mask"], aggregation
    )


@pytest.mark.parametrize("aggregation", ["bnpo", "grpo"])
def test_ppo_matches_numpy_reference(aggregation):
    d = make(seed=7, adv_per_token=True)
    rng = np.random.default_rng(7)
    values, old_values, returns = (rng.normal(0, 1, (B, T)) for _ in range(3))
    loss, m = losses.get("ppo")(
        logps=d["logps"],
        old_logps=d["old_logps"],
        mask=d["mask"],
        advantages=d["advantages"],
        values=values,
        old_values=old_values,
        returns=returns,
        value_clip=0.2,
        vf_coef=0.5,
        aggregation=aggregation,
    )
    want = np_ppo(d, values, old_values, returns, 0.2, 0.5, aggregation)
    np.testing.assert_allclose(float(loss), want, rtol=1e-5, atol=1e-6)
    assert {
        "policy_loss",
        "value_loss",
        "value_clip_fraction",
        "clip_fraction",
        "per_token_loss",
    } <= set(m)


def test_reinforce_and_rloo_are_sequence_level():
    d = make(seed=8)
    g = jax.grad(
        lambda lp: losses.get("reinforce")(logps=lp, mask=d["mask"], advantages=d["advantages"])[0]
    )(jnp.asarray(d["logps"], jnp.float32))
    np.testing.assert_allclose(
        np.asarray(g), -d["advantages"][:, None] * d["mask"] / B, rtol=1e-5, atol=1e-7
    )
    loss, m = losses.get("rloo")(
        logps=d["logps"], old_logps=d["old_logps"], mask=d["mask"], advantages=d["advantages"]
    )
    seq_ratio = np.exp(np.sum((d["logps"] - d["old_logps"]) * d["mask"], 1))
    a = d["advantages"]
    want = np.mean(np.maximum(-a * seq_ratio, -a * np.clip(seq_ratio, 0.8, 1.2)))
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    with pytest.raises(ValueError, match=r"one per sequence, \[B\]"):
        losses.get("reinforce")(logps=d["logps"], mask=d["mask"], advantages=np.zeros((B, T)))


def test_padding_garbage_never_reaches_the_loss():
    d = make(seed=9)
    pad = d["mask"] == 0
    for key, junk in (("logps", -np.inf), ("old_logps", np.nan), ("ref_logps", 1e6)):
        d[key] = np.where(pad, junk, d[key])
    for name in ("grpo", "reinforce"):
        f = lambda lp: losses.get(name)(
            logps=lp,
            old_logps=d["old_logps"],
            mask=d["mask"],
            advantages=d["advantages"],
            ref_logps=d["ref_logps"],
            beta=0.1,
        )[0]
        loss, g = jax.value_and_grad(f)(jnp.asarray(d["logps"], jnp.float32))
        assert np.isfinite(float(loss)) and np.all(np.isfinite(np.asarray(g))), name


def test_jit_equals_eager_and_vmap():
    d = {k: jnp.asarray(v, jnp.float32) for k, v in make(seed=10).items()}
    for name, extra in (("grpo", {"beta": 0.04}), ("reinforce", {}), ("rloo", {})):
        fn = lambda a: losses.get(name)(**a, **extra)[0]
        np.testing.assert_allclose(fn(d), jax.jit(fn)(d), rtol=1e-5, atol=1e-6)
        stacked = jax.tree.map(lambda x: jnp.stack([x, x[::-1]]), d)
        vm = jax.vmap(fn)(stacked)
        np.testing.assert_allclose(
            vm[1], fn(jax.tree.map(lambda x: x[::-1], d)), rtol=1e-5, atol=1e-6
        )


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.floats(-3, 3), min_size=B, max_size=B),
    st.lists(st.integers(1, T), min_size=B, max_size=B),
    st.sampled_from(["grpo", "bnpo", "dr_grpo"]),
)
def test_unit_ratio_loss_is_minus_aggregated_advantage(adv, lengths, aggregation):
    mask = (np.arange(T)[None, :] < np.array(lengths)[:, None]).astype(np.float64)
    logps = -np.ones((B, T))
    adv = np.array(adv)
    loss, m = losses.get("grpo")(
        logps=logps, old_logps=logps, mask=mask, advantages=adv, aggregation=aggregation
    )
    want = np_aggregate(-np.broadcast_to(adv[:, None], (B, T)), mask, aggregation)
    np.testing.assert_allclose(float(loss), want, rtol=1e-5, atol=1e-6)
    assert float(m["clip_fraction"]) == 0.0


def test_bad_input_raises():
    d = make(seed=11)
    g = losses.get("grpo")
    with pytest.raises(ValueError, match="grpo.*shape mismatch.*old_logps"):
        g(
            logps=d["logps"],
            old_logps=d["old_logps"][:, :3],
            mask=d["mask"],
            advantages=d["advantages"],
        )
    with pytest.raises(ValueError, match="advantages"):
        g(logps=d["logps"], mask=d["mask"], advantages=np.zeros(3))
    nan = d["logps"].copy()
    nan[0, 2] = np.nan
    with pytest.raises(ValueError, match=r"logps.*non-finite.*\(0, 2\)"):
        g(logps=nan, mask=d["mask"], advantages=d["advantages"])
    with pytest.raises(ValueError, match="beta=0.1 needs `ref_logps`"):
        g(logps=d["logps"], mask=d["mask"], advantages=d["advantages"], beta=0.1)
    with pytest.raises(ValueError, match="0/1 mask"):
        g(logps=d["logps"], mask=d["mask"] * 2, advantages=d["advantages"])
    with pytest.raises(ValueError, match="epsilon_low"):
        g(logps=d["logps"], mask=d["mask"], advantages=d["advantages"], epsilon_low=-0.1)
    with pytest.raises(ValueError, match="dual_clip"):
        g(logps=d["logps"], mask=d["mask"], advantages=d["advantages"], dual_clip=0.5)
    with pytest.raises(ValueError, match="entropy_coef.*needs `entropy`"):
        g(logps=d["logps"], mask=d["mask"], advantages=d["advantages"], entropy_coef=0.1)
    nan_under_jit = jax.jit(lambda lp: g(logps=lp, mask=d["mask"], advantages=d["advantages"])[0])
    assert np.isnan(float(nan_under_jit(jnp.asarray(nan, jnp.float32))))


def test_entropy_from_logits():
    logits = np.array([[0.0, 0.0, 0.0, 0.0], [100.0, 0.0, 0.0, 0.0]])
    np.testing.assert_allclose(losses.entropy_from_logits(logits), [np.log(4.0), 0.0], atol=1e-5)
