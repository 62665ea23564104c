"""Supervised losses (sft, fdiv_sft, iq_mle), the per-token preference loss (token_dpo, WPO
weights) and ranking diagnostics, each against a float64 NumPy re-derivation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignment import losses

B, T, V = 3, 5, 7


def logsig(x):
    return -np.logaddexp(0.0, -x)


def np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def make(seed=0):
    rng = np.random.default_rng(seed)
    mask = np.array([[0, 1, 1, 1, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], np.float64)
    logps = -rng.uniform(0.05, 4.0, (B, T))
    ref = logps + rng.normal(0, 0.7, (B, T))
    return logps, ref, mask


def test_sft_is_token_mean_nll():
    logps, _, mask = make(1)
    loss, m = losses.get("sft")(logps=logps, mask=mask)
    want = -(logps * mask).sum() / mask.sum()
    np.testing.assert_allclose(float(loss), want, rtol=1e-6)
    np.testing.assert_allclose(float(m["perplexity"]), np.exp(want), rtol=1e-5)
    seq, _ = losses.get("sft")(logps=logps, mask=mask, aggregation="sequence_mean")
    np.testing.assert_allclose(float(seq), np.mean(-(logps * mask).sum(1) / mask.sum(1)), rtol=1e-6)
    fixed, _ = losses.get("sft")(logps=logps, mask=mask, normalizer=100.0)
    np.testing.assert_allclose(float(fixed), -(logps * mask).sum() / 100.0, rtol=1e-6)


def test_sft_is_packing_invariant():
    logps, _, mask = make(2)
    # Pack rows 0 and 1 into one row of length 2T; row 2 stays alone.
    packed_lp = np.stack(
        [np.concatenate([logps[0], logps[1]]), np.concatenate([logps[2], 0 * logps[2]])]
    )
    packed_m = np.stack(
        [np.concatenate([mask[0], mask[1]]), np.concatenate([mask[2], 0 * mask[2]])]
    )
    seg = np.stack([np.r_[np.ones(T), 2 * np.ones(T)], np.r_[np.ones(T), np.zeros(T)]]).astype(int)
    for agg in ("token_mean", "sequence_mean"):
        unpacked, _ = losses.get("sft")(logps=logps, mask=mask, aggregation=agg)
        packed, _ = losses.get("sft")(
            logps=packed_lp, mask=packed_m, aggregation=agg, segment_ids=seg
        )
        np.testing.assert_allclose(float(packed), float(unpacked), rtol=1e-6, err_msg=agg)


def np_fdiv(u, div):
    r = np.exp(u)
    return {
        "none": 0 * u,
        "kl": r * u - r + 1,
        "reverse_kl": r - 1 - u,
        "chi2": (r - 1) ** 2,
        "hellinger": (np.sqrt(r) - 1) ** 2,
        "js": r * u - (1 + r) * np.log((1 + r) / 2),
    }[div]


@pytest.mark.parametrize("div", ["none", "kl", "reverse_kl", "chi2", "hellinger", "js"])
def test_fdiv_sft_matches_reference_and_vanishes_at_the_reference(div):
    logps, ref, mask = make(3)
    loss, m = losses.get("fdiv_sft")(
        logps=logps, ref_logps=ref, mask=mask, divergence=div, ratio_coef=0.3
    )
    pen = np_fdiv(logps - ref, div)
    want = ((-logps + 0.3 * pen) * mask).sum() / mask.sum()
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    assert float(m["divergence"]) >= 0.0
    at_ref, m2 = losses.get("fdiv_sft")(
        logps=logps, ref_logps=logps, mask=mask, divergence=div, ratio_coef=0.3
    )
    sft, _ = losses.get("sft")(logps=logps, mask=mask)
    np.testing.assert_allclose(float(at_ref), float(sft), rtol=1e-6)
    # f'(1) = 0: at pi = ref the penalty adds nothing to the gradient either.
    g = jax.grad(
        lambda lp: losses.get("fdiv_sft")(
            logps=lp, ref_logps=logps, mask=mask, divergence=div, ratio_coef=0.3
        )[0]
    )(jnp.asarray(logps, jnp.float32))
    np.testing.assert_allclose(np.asarray(g), -mask / mask.sum(), atol=1e-6)


def np_iq_mle(logits, targets, mask, lam, gamma):
    logp_all = np_log_softmax(logits)
    v = np.log(np.exp(logits).sum(-1))
    q_a = np.take_along_axis(logits, targets[..., None], -1)[..., 0]
    logp = np.take_along_axis(logp_all, targets[..., None], -1)[..., 0]
    total_nll, total_td = 0.0, 0.0
    for b in range(logits.shape[0]):
        for t in range(logits.shape[1]):
            if not mask[b, t]:
                continue
            nxt = v[b, t + 1] if t + 1 < logits.shape[1] and mask[b, t + 1] else 0.0
            total_nll += -logp[b, t]
            total_td += (q_a[b, t] - gamma * nxt) ** 2
    n = mask.sum()
    return total_nll / n + lam * total_td / n


@pytest.mark.parametrize("lam,gamma", [(0.0, 1.0), (0.5, 1.0), (0.1, 0.9)])
def test_iq_mle_matches_reference(lam, gamma):
    rng = np.random.default_rng(4)
    logits = rng.normal(0, 2, (B, T, V))
    targets = rng.integers(0, V, (B, T))
    _, _, mask = make(4)
    loss, m = losses.get("iq_mle")(logits=logits, targets=targets, mask=mask, lam=lam, gamma=gamma)
    np.testing.assert_allclose(float(loss), np_iq_mle(logits, targets, mask, lam, gamma), rtol=1e-5)
    if lam == 0.0:  # MLE: identical to sft on the implied log-probs
        logp = np.take_along_axis(np_log_softmax(logits), targets[..., None], -1)[..., 0]
        np.testing.assert_allclose(
            float(loss), float(losses.get("sft")(logps=logp, mask=mask)[0]), rtol=1e-5
        )


def test_supervised_bad_input():
    logps, ref, mask = make(5)
    with pytest.raises(ValueError, match="sft.*shape mismatch"):
        losses.get("sft")(logps=logps, mask=mask[:, :3])
    bad = logps.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"sft.*logps.*non-finite.*\(2, 1\)"):
        losses.get("sft")(logps=bad, mask=mask)
    with pytest.raises(ValueError, match="divergence"):
        losses.get("fdiv_sft")(logps=logps, ref_logps=ref, mask=mask, divergence="tv")
    with pytest.raises(ValueError, match="targets"):
        losses.get("iq_mle")(logits=np.zeros((B, T, V)), targets=np.full((B, T), V), mask=mask)
    with pytest.raises(TypeError, match="integer"):
        losses.get("iq_mle")(logits=np.zeros((B, T, V)), targets=np.zeros((B, T)), mask=mask)


# --- token-level preference ------------------------------------------------------------


def np_token_dpo(pc, rc, mc, pr, rr, mr, beta, wc=None, wr=None, alpha=None, e=None, ls=0.0):
    wc = mc if wc is None else wc * mc
    wr = mr if wr is None else wr * mr
    if alpha is not None:
        public = np.minimum(mc.sum(1), mr.sum(1))
        for w, m in ((wc, mc), (wr, mr)):
            count = np.cumsum(m, 1)
            w *= np.where(count <= public[:, None], 1.0, alpha)
    cl = ((pc - rc) * wc).sum(1)
    rl = ((pr - rr) * wr).sum(1)
    z = beta * (cl - rl)
    losses_ = -(1 - ls) * logsig(z) - ls * logsig(-z)
    if e is not None:
        losses_ = losses_ * e
    return losses_


def token_batch(seed):
    rng = np.random.default_rng(seed)
    mc = (np.arange(6)[None] < np.array([[2], [6], [4]])).astype(np.float64)
    mr = (np.arange(4)[None] < np.array([[4], [1], [3]])).astype(np.float64)
    return dict(
        policy_chosen_logps=-rng.uniform(0.1, 3, (3, 6)),
        ref_chosen_logps=-rng.uniform(0.1, 3, (3, 6)),
        chosen_mask=mc,
        policy_rejected_logps=-rng.uniform(0.1, 3, (3, 4)),
        ref_rejected_logps=-rng.uniform(0.1, 3, (3, 4)),
        rejected_mask=mr,
    )


@pytest.mark.parametrize(
    "opts",
    [{}, {"ld_alpha": 0.3}, {"weights": True}, {"example_weights": True, "label_smoothing": 0.1}],
)
def test_token_dpo_matches_reference(opts):
    d = token_batch(6)
    rng = np.random.default_rng(7)
    kw, ref_kw = {}, {}
    if "ld_alpha" in opts:
        kw["ld_alpha"] = ref_kw["alpha"] = opts["ld_alpha"]
    if "weights" in opts:
        kw["chosen_token_weights"] = ref_kw["wc"] = rng.uniform(0, 1, (3, 6))
        kw["rejected_token_weights"] = ref_kw["wr"] = (rng.uniform(0, 1, (3, 4)) > 0.5) * 1.0
    if "example_weights" in opts:
        kw["example_weights"] = ref_kw["e"] = rng.uniform(0, 1, 3)
        kw["label_smoothing"] = ref_kw["ls"] = opts["label_smoothing"]
    loss, m = losses.get("token_dpo")(**d, beta=0.2, **kw)
    want = np_token_dpo(
        d["policy_chosen_logps"],
        d["ref_chosen_logps"],
        d["chosen_mask"],
        d["policy_rejected_logps"],
        d["ref_rejected_logps"],
        d["rejected_mask"],
        0.2,
        **ref_kw,
    )
    np.testing.assert_allclose(m["losses"], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(loss), want.mean(), rtol=1e-5)


def test_token_dpo_with_unit_weights_equals_sequence_dpo():
    d = token_batch(8)
    d["policy_chosen_logps"][d["chosen_mask"] == 0] = -np.inf  # padding garbage is ignored
    tok, _ = losses.get("token_dpo")(**d, beta=0.1)
    summed = lambda k, m: np.where(d[m] != 0, d[k], 0).sum(1)
    dpo, _ = losses.get("dpo")(
        policy_chosen_logps=summed("policy_chosen_logps", "chosen_mask"),
        ref_chosen_logps=summed("ref_chosen_logps", "chosen_mask"),
        policy_rejected_logps=summed("policy_rejected_logps", "rejected_mask"),
        ref_rejected_logps=summed("ref_rejected_logps", "rejected_mask"),
        beta=0.1,
    )
    np.testing.assert_allclose(float(tok), float(dpo), rtol=1e-5)
    # ld_alpha = 1 changes nothing; jit agrees with eager.
    ld1, _ = losses.get("token_dpo")(**d, beta=0.1, ld_alpha=1.0)
    np.testing.assert_allclose(float(ld1), float(tok), rtol=1e-6)
    jd = {k: jnp.asarray(v, jnp.float32) for k, v in d.items()}
    jl, _ = jax.jit(lambda a: losses.get("token_dpo")(**a, beta=0.1))(jd)
    np.testing.assert_allclose(float(jl), float(tok), rtol=1e-5)


def test_wpo_weights():
    d = token_batch(9)
    mc, mr = d["chosen_mask"], d["rejected_mask"]
    w = losses.wpo_weights(
        chosen_logps=d["policy_chosen_logps"],
        chosen_mask=mc,
        rejected_logps=d["policy_rejected_logps"],
        rejected_mask=mr,
    )
    want = np.minimum(
        1.0,
        np.exp(
            (d["policy_chosen_logps"] * mc).sum(1) / mc.sum(1)
            + (d["policy_rejected_logps"] * mr).sum(1) / mr.sum(1)
        ),
    )
    np.testing.assert_allclose(w, want, rtol=1e-5)


def test_token_dpo_bad_input():
    d = token_batch(10)
    with pytest.raises(ValueError, match="token_dpo.*shape mismatch.*chosen_mask"):
        losses.get("token_dpo")(**{**d, "chosen_mask": d["chosen_mask"][:, :3]})
    empty = d["rejected_mask"].copy()
    empty[1] = 0
    with pytest.raises(ValueError, match="rejected_mask row sums.*> 0"):
        losses.get("token_dpo")(**{**d, "rejected_mask": empty})
    with pytest.raises(ValueError, match="ld_alpha"):
        losses.get("token_dpo")(**d, ld_alpha=1.5)


# --- diagnostics -------------------------------------------------------------------------


def test_ranking_accuracies():
    pc, pr = np.array([-5.0, -9.0, -3.0, -4.0]), np.array([-6.0, -8.0, -3.0, -10.0])
    lc, lr = np.array([5.0, 3.0, 1.0, 2.0]), np.array([10.0, 2.0, 1.0, 10.0])
    out = losses.ranking_accuracy(
        policy_chosen_logps=pc, policy_rejected_logps=pr, chosen_lengths=lc, rejected_lengths=lr
    )
    np.testing.assert_allclose(float(out["ranking_accuracy"]), np.mean(pc >= pr))
    np.testing.assert_allclose(
        float(out["ranking_accuracy_normalized"]), np.mean(pc / lc >= pr / lr)
    )
    rc, rr = np.array([-5.0, -5.0, -5.0]), np.array([-4.0, -5.5, -9.0])
    a, beta = 0.8, 0.5
    want = np.mean((rc - rr) + np.log(a / (1 - a)) / beta > 0)
    got = losses.idealized_ranking_accuracy(
        ref_chosen_logps=rc, ref_rejected_logps=rr, beta=beta, rater_agreement=a
    )
    np.testing.assert_allclose(float(got), want)
    # Unanimous raters: the idealised model ranks every pair right.
    assert (
        float(
            losses.idealized_ranking_accuracy(ref_chosen_logps=rc, ref_rejected_logps=rr, beta=beta)
        )
        == 1.0
    )
    with pytest.raises(ValueError, match="rater_agreement"):
        losses.idealized_ranking_accuracy(
            ref_chosen_logps=rc, ref_rejected_logps=rr, beta=beta, rater_agreement=1.0
        )
