"""Comparing two table rows: seeds as the unit (Welch), seeds then images (hierarchical bootstrap),
and images of the trained networks at hand (paired). Inputs are lists of per-seed test-metric
DataFrames (columns image, dice, ...), the same test images in each."""
import numpy as np
import pandas as pd
from scipy import stats as sps


def per_seed_means(runs, metric="dice"):
    """Each seed's mean per-image metric."""
    return np.array([t[metric].mean() for t in runs])


def welch(a, b, metric="dice"):
    """Difference of seed means b - a, its 95 % CI and two-sided p from Welch's t test (seeds as the unit)."""
    ma, mb = per_seed_means(a, metric), per_seed_means(b, metric)
    va, vb = ma.var(ddof=1) / len(ma), mb.var(ddof=1) / len(mb)
    diff, se = mb.mean() - ma.mean(), np.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(ma) - 1) + vb**2 / (len(mb) - 1)) if se > 0 else np.inf
    half = sps.t.ppf(0.975, df) * se
    p = 2 * sps.t.sf(abs(diff) / se, df) if se > 0 else float(diff == 0)
    return {"diff": float(diff), "ci95": (float(diff - half), float(diff + half)), "p": float(p), "df": float(df)}


def _matrix(runs, metric):
    """(seeds x images) per-image metric, images aligned on the first run's order."""
    order = runs[0]["image"]
    return np.stack([t.set_index("image")[metric].reindex(order).to_numpy() for t in runs])


def hierarchical_bootstrap(a, b, metric="dice", n_boot=10_000, seed=0):
    """b - a, resampling seeds (within each row) and then test images (shared by both rows, as they
    are the same photos): the 95 % percentile CI and a two-sided bootstrap p."""
    A, B = _matrix(a, metric), _matrix(b, metric)
    rng = np.random.default_rng(seed)
    n_img = A.shape[1]
    w = rng.multinomial(n_img, np.full(n_img, 1 / n_img), size=n_boot) / n_img  # image weights, one draw a row
    wa, wb = A @ w.T, B @ w.T  # (seeds, n_boot): each seed's mean over the drawn images
    sa = rng.integers(0, len(A), (n_boot, len(A)))
    sb = rng.integers(0, len(B), (n_boot, len(B)))
    cols = np.arange(n_boot)[:, None]
    d = wb[sb, cols].mean(axis=1) - wa[sa, cols].mean(axis=1)
    p = 2 * min((d <= 0).mean(), (d >= 0).mean())
    return {"diff": float(B.mean() - A.mean()), "ci95": (float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))),
            "p": float(min(1.0, max(p, 1 / n_boot)))}


def per_image_dice_diff(a, b, metric="dice"):
    """Per test image, the metric of b minus that of a, each averaged over seeds."""
    da = pd.concat([t.set_index("image")[metric] for t in a], axis=1).mean(axis=1)
    db = pd.concat([t.set_index("image")[metric] for t in b], axis=1).mean(axis=1)
    return (db - da.reindex(db.index)).rename(f"{metric}_diff")


def paired_images(a, b, metric="dice", n_boot=10_000, seed=0):
    """Per image (averaged over seeds): mean b - a, bootstrap 95 % CI over images, sign-flip p.

    This treats the trained networks as fixed: it says whether *these* networks differ,
    not whether the architectures or losses do (that is welch and hierarchical_bootstrap).
    """
    d = per_image_dice_diff(a, b, metric).to_numpy()
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(0, len(d), (n_boot, len(d)))].mean(axis=1)
    null = np.abs((rng.choice([-1.0, 1.0], (n_boot, len(d))) * d).mean(axis=1))
    return {"diff": float(d.mean()), "ci95": (float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))),
            "p": float((1 + (null >= abs(d.mean())).sum()) / (n_boot + 1)),
            "images_better": int((d > 0).sum()), "images_worse": int((d < 0).sum()), "n_images": len(d)}


EQUIVALENCE_MARGIN = 0.005  # +-0.5 Dice points, fixed in docs/protocol.md before the converged runs


def tost(a, b, margin=EQUIVALENCE_MARGIN, metric="dice"):
    """Two one-sided Welch tests (seeds as the unit) of -margin < b - a < margin: p is the larger one-sided
    p, so equivalence is shown at 5 % when p < 0.05 (the 90 % CI of b - a lies inside +-margin)."""
    ma, mb = per_seed_means(a, metric), per_seed_means(b, metric)
    va, vb = ma.var(ddof=1) / len(ma), mb.var(ddof=1) / len(mb)
    diff, se = mb.mean() - ma.mean(), np.sqrt(va + vb)
    if se == 0:
        return {"p": float(abs(diff) >= margin), "ci90": (float(diff), float(diff))}
    df = (va + vb) ** 2 / (va**2 / (len(ma) - 1) + vb**2 / (len(mb) - 1))
    p = max(sps.t.sf((diff + margin) / se, df), sps.t.cdf((diff - margin) / se, df))
    half = sps.t.ppf(0.95, df) * se
    return {"p": float(p), "ci90": (float(diff - half), float(diff + half))}


def seeds_needed(a, b, margin=EQUIVALENCE_MARGIN, metric="dice", power=0.8):
    """Seeds per row that would settle the comparison with 80 % power if the observed difference and seed
    SD were the true ones: to show the difference (two-sided 5 %) or, where it is inside the margin,
    equivalence (TOST at 5 %), whichever needs fewer (normal approximation)."""
    ma, mb = per_seed_means(a, metric), per_seed_means(b, metric)
    var = (ma.var(ddof=1) + mb.var(ddof=1))  # of a difference of two seed means, times n
    d = abs(mb.mean() - ma.mean())
    z = sps.norm.ppf
    need = [var * (z(0.975) + z(power)) ** 2 / d**2] if d > 0 else []
    if d < margin:
        need.append(var * (z(0.95) + z(1 - (1 - power) / 2)) ** 2 / (margin - d) ** 2)
    return int(np.ceil(min(need))) if need else None


def verdict(ci, label_a="a", label_b="b", tost_p=None, margin=EQUIVALENCE_MARGIN, needed=None):
    """The three-way verdict: one row beats the other (the 95 % CI of b - a excludes 0), the two are
    equivalent within +-margin (TOST p < 0.05), or undecided, with the seeds per row that would settle it."""
    lo, hi = ci
    m = f"+-{100 * margin:g}"
    better = f"{label_b} beats {label_a}" if lo > 0 else f"{label_a} beats {label_b}" if hi < 0 else None
    equivalent = tost_p is not None and tost_p < 0.05
    if better:
        return better + (f" (by less than {m}: also equivalent)" if equivalent else "")
    if equivalent:
        return f"equivalent within {m} points"
    return "undecided" + (f": ~{needed} seeds per row would be needed" if needed else "")


def compare(label_a, a, label_b, b, metric="dice"):
    """One row of the comparisons table: every statistic above for b - a, in points of the metric (%)."""
    w, h, p = welch(a, b, metric), hierarchical_bootstrap(a, b, metric), paired_images(a, b, metric)
    t, needed = tost(a, b, metric=metric), seeds_needed(a, b, metric=metric)
    per_seed = per_seed_means(b, metric) - per_seed_means(a, metric)  # seed s against seed s (same data order)
    pts = lambda v: round(100 * v, 3)  # noqa: E731
    return {"a": label_a, "b": label_b, "seeds": f"{len(a)}/{len(b)}",
            "mean_a": pts(per_seed_means(a, metric).mean()), "mean_b": pts(per_seed_means(b, metric).mean()),
            "diff_of_seed_means": pts(w["diff"]), "welch_ci95_lo": pts(w["ci95"][0]), "welch_ci95_hi": pts(w["ci95"][1]),
            "welch_p": round(w["p"], 4), "hier_boot_ci95_lo": pts(h["ci95"][0]), "hier_boot_ci95_hi": pts(h["ci95"][1]),
            "hier_boot_p": round(h["p"], 4), "per_seed_diffs": " ".join(f"{100 * x:+.2f}" for x in per_seed),
            "networks_paired_diff": pts(p["diff"]), "networks_ci95_lo": pts(p["ci95"][0]),
            "networks_ci95_hi": pts(p["ci95"][1]), "networks_sign_flip_p": round(p["p"], 4),
            "tost_margin": pts(EQUIVALENCE_MARGIN), "tost_p": round(t["p"], 4), "tost_ci90_lo": pts(t["ci90"][0]),
            "tost_ci90_hi": pts(t["ci90"][1]), "seeds_needed": needed,
            "verdict_seeds": verdict(w["ci95"], label_a, label_b, t["p"], needed=needed)}
