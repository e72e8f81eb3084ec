"""Scaling laws: the forms of shared/spec/scaling.md, least-squares fits with R^2, standard errors and bootstrap
intervals, refusal of ill-posed fits, inversion (what x reaches a target) and the holdout check.

Forms (x > 0 is the axis: parameters, history length, impressions, FLOPs):
- ceiling:         y = E - A * x^(-alpha)          (SUAN's AUC(L), AUC(D); SparseCTR's AUC(FLOPs))
- ceiling_offset:  y = E - A * (x - B)^(-alpha)    (SUAN's AUC(C); B = what does not scale, e.g. the head)
- power:           y = a * x^b, a line in log-log  (EST's GAUC(X); FAT's AUC gain over a baseline)
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import optimize, stats


@dataclass(frozen=True)
class Form:
    name: str
    params: tuple[str, ...]
    formula: str

    def __call__(self, x, p):
        x = np.asarray(x, float)
        if self.name == "ceiling":
            e, a, alpha = p
            return e - a * x ** -alpha
        if self.name == "ceiling_offset":
            e, a, b, alpha = p
            return e - a * np.maximum(x - b, 1e-300) ** -alpha
        a, b = p
        return a * x ** b

    def inverse(self, y: float, p) -> float:
        """The x at which the law reaches y (inf when it never does)."""
        if self.name == "power":
            a, b = p
            return float((y / a) ** (1 / b)) if y / a > 0 and b != 0 else float("inf")
        e, a = p[0], p[1]
        if y >= e:
            return float("inf")
        x = (a / (e - y)) ** (1 / p[-1])
        return float(x + (p[2] if self.name == "ceiling_offset" else 0.0))


FORMS = {f.name: f for f in (
    Form("ceiling", ("E", "A", "alpha"), "y = E - A x^-alpha"),
    Form("ceiling_offset", ("E", "A", "B", "alpha"), "y = E - A (x - B)^-alpha"),
    Form("power", ("a", "b"), "y = a x^b"),
)}


class IllPosed(ValueError):
    """A fit that would print numbers without meaning; the message says why."""


@dataclass
class Fit:
    form: str
    params: dict[str, float]
    stderr: dict[str, float]
    interval: dict[str, list[float]]      # bootstrap 2.5 / 97.5 percentiles
    r2: float
    n_points: int                          # rows (seeds count separately)
    n_x: int                               # distinct x values
    boot: list[list[float]] = field(default_factory=list)   # bootstrap parameter draws (for bands, inversion)
    notes: list[str] = field(default_factory=list)          # caveats the numbers need (a parameter on its bound)

    @property
    def law(self) -> Form:
        return FORMS[self.form]

    def predict(self, x) -> np.ndarray:
        return self.law(x, [self.params[k] for k in self.law.params])

    def band(self, x, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        """Pointwise bootstrap interval of the fitted curve at x."""
        draws = np.stack([self.law(x, b) for b in self.boot]) if self.boot else np.stack([self.predict(x)])
        q = (1 - level) / 2
        return np.nanquantile(draws, q, 0), np.nanquantile(draws, 1 - q, 0)

    def to_dict(self) -> dict:
        return {**asdict(self), "formula": self.law.formula}

    @classmethod
    def from_dict(cls, d: dict) -> "Fit":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def _least_squares(form: Form, x: np.ndarray, y: np.ndarray, p0=None, y_max: float | None = None):
    """(params, covariance) of one least-squares fit; RuntimeError when it does not converge. `y_max` bounds the
    ceiling E (1 for AUC: a law whose ceiling lies above a perfect ranking means nothing)."""
    if form.name == "power":
        lx, ly = np.log(x), np.log(y)
        (b, log_a), cov = np.polyfit(lx, ly, 1, cov="unscaled" if len(x) < 3 else True)
        a = np.exp(log_a)
        jac = np.diag([a, 1.0])                          # delta method: (log a, b) -> (a, b)
        return np.array([a, b]), jac @ np.array([[cov[1, 1], cov[0, 1]], [cov[0, 1], cov[0, 0]]]) @ jac
    span = max(y.max() - y.min(), 1e-6)
    if p0 is None:
        alpha0 = 0.5
        e0 = y.max() + 0.5 * span
        p0 = [e0, (e0 - y.min()) * x.min() ** alpha0, alpha0]
        if form.name == "ceiling_offset":
            p0.insert(2, 0.0)
    lo = [-np.inf, 0.0, 1e-4]
    hi = [np.inf if y_max is None else y_max, np.inf, 10.0]
    p0 = list(p0)
    p0[0] = min(p0[0], hi[0] - 1e-9)
    if form.name == "ceiling_offset":
        lo.insert(2, -10 * x.max())
        hi.insert(2, x.min() * (1 - 1e-6))
    p, cov = optimize.curve_fit(lambda xx, *p: form(xx, p), x, y, p0=p0, bounds=(lo, hi), maxfev=20000)
    return p, cov


def check_posed(form: Form, x: np.ndarray, y: np.ndarray) -> None:
    """Refuse before fitting: too few distinct x, non-positive values for a log-log fit, a flat curve."""
    xs = np.unique(x)
    need = len(form.params) + 1
    if len(xs) < need:
        raise IllPosed(f"too few points: {len(xs)} distinct x for {len(form.params)} parameters (need >= {need})")
    if np.any(x <= 0):
        raise IllPosed("x must be positive")
    if form.name == "power" and np.any(y <= 0):
        raise IllPosed(f"a log-log fit needs positive y: {int((y <= 0).sum())} of {len(y)} points are <= 0 "
                       f"(a gain over a baseline that is not positive everywhere)")
    groups = [y[x == v] for v in xs]
    if len(y) > len(xs) and any(g.std() > 0 for g in groups):   # seeds repeat some x: is the axis beyond noise?
        p = stats.f_oneway(*groups).pvalue
        if p > 0.05:
            raise IllPosed(f"flat: the metric does not differ across the axis beyond seed noise "
                           f"(one-way ANOVA over the {len(xs)} x values, p = {p:.2g})")
    elif abs(stats.spearmanr(xs, [g.mean() for g in groups]).statistic) < 0.3:
        raise IllPosed("flat: the metric does not move with the axis (|Spearman rho| < 0.3)")


def fit_law(form_name: str, x, y, n_boot: int = 500, seed: int = 0, y_max: float | None = None) -> Fit:
    """Fit `form_name` to the rows (x, y) (seeds as separate rows). Raises IllPosed with the reason."""
    if form_name not in FORMS:
        raise KeyError(f"unknown form {form_name!r}; have {sorted(FORMS)}")
    form = FORMS[form_name]
    x, y = np.asarray(x, float), np.asarray(y, float)
    check_posed(form, x, y)
    try:
        p, cov = _least_squares(form, x, y, y_max=y_max)
    except (RuntimeError, ValueError, np.linalg.LinAlgError) as e:
        raise IllPosed(f"the least-squares fit did not converge: {e}") from e
    if form.name != "power":
        best = max(y[x == v].mean() for v in np.unique(x))
        if p[0] < best:
            raise IllPosed(f"the fitted ceiling E = {p[0]:.4f} lies below the best point ({best:.4f})")
    fitted_space = (np.log(y), np.log(form(x, p))) if form.name == "power" else (y, form(x, p))
    r2 = 1 - ((fitted_space[0] - fitted_space[1]) ** 2).sum() / ((fitted_space[0] - fitted_space[0].mean()) ** 2).sum()
    se = np.sqrt(np.clip(np.diag(cov), 0, None))
    boot = _bootstrap(form, x, y, p, n_boot, seed, y_max)
    lo, hi = (np.nanquantile(boot, q, 0) if len(boot) else np.full(len(p), np.nan) for q in (0.025, 0.975))
    names = form.params
    notes = []
    if y_max is not None and form.name != "power" and p[0] >= y_max - 1e-6:
        notes.append(f"E sits on its bound {y_max:g}: the points do not pin the ceiling (read it as 'at most "
                     f"{y_max:g}'), so A and alpha are conditional on it")
    return Fit(form.name, dict(zip(names, map(float, p))), dict(zip(names, map(float, se))),
               {k: [float(a), float(b)] for k, a, b in zip(names, lo, hi)}, float(r2), len(x), len(np.unique(x)),
               boot.tolist(), notes)


def _bootstrap(form: Form, x, y, p, n_boot: int, seed: int, y_max: float | None = None) -> np.ndarray:
    """Refits on resampled data (draws that do not converge are dropped). With seeds repeating x: rows resampled
    with replacement (draws with too few distinct x dropped). With one row per x (a single seed), a row resample
    keeps all x only when it is a permutation, so every surviving draw would be the fit itself and the band would
    have no width: the residuals are resampled onto the fitted curve instead, widened by sqrt(n / (n - k)) for the
    k parameters they were fitted with."""
    rng = np.random.default_rng(seed)
    fitted = form(x, p)
    one_per_x = len(np.unique(x)) == len(x)
    k = len(form.params)
    if one_per_x:
        if len(x) <= k:
            return np.empty((0, k))
        space = np.log if form.name == "power" else (lambda v: v)  # power laws are fitted in log space
        resid = (space(y) - space(fitted)) * np.sqrt(len(x) / (len(x) - k))
    out = []
    for _ in range(n_boot):
        if one_per_x:
            xs = x
            ys = space(fitted) + rng.choice(resid, len(x))
            ys = np.exp(ys) if form.name == "power" else ys
        else:
            i = rng.integers(0, len(x), len(x))
            xs, ys = x[i], y[i]
            if len(np.unique(xs)) < k + 1:
                continue
        try:
            out.append(_least_squares(form, xs, ys, p0=None if form.name == "power" else p, y_max=y_max)[0])
        except (RuntimeError, ValueError, np.linalg.LinAlgError):
            continue
    return np.array(out).reshape(-1, k)


def required_x(fit: Fit, target: float) -> dict:
    """The axis value the law needs to reach `target`, with its bootstrap interval and the share of bootstrap
    laws that never reach it."""
    point = fit.law.inverse(target, [fit.params[k] for k in fit.law.params])
    draws = np.array([fit.law.inverse(target, b) for b in fit.boot]) if fit.boot else np.array([point])
    finite = draws[np.isfinite(draws)]
    return {"target": target, "x": point, "interval": [float(np.quantile(finite, 0.025)),
                                                       float(np.quantile(finite, 0.975))] if len(finite) else None,
            "unreachable_share": float(1 - len(finite) / len(draws))}


def holdout(form_name: str, x, y, n_boot: int = 500, seed: int = 0, y_max: float | None = None) -> dict:
    """Fit on every point but those at the largest x, predict the largest x, compare with what was measured."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    top = x.max()
    fit = fit_law(form_name, x[x < top], y[x < top], n_boot, seed, y_max)
    pred = float(fit.predict(np.array([top]))[0])
    lo, hi = (float(v[0]) for v in fit.band(np.array([top])))
    observed = float(y[x == top].mean())
    return {"x": float(top), "predicted": pred, "interval": [lo, hi], "observed": observed,
            "error": pred - observed, "inside_interval": bool(lo <= observed <= hi), "fit": fit.to_dict()}
