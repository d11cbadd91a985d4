"""Verdicts: can a result be trusted? One plain-words judgement per trained model or prediction.

Every function here is pure (plain dicts and arrays in, a :class:`Verdict` out) so the app pages,
the CLI and the job worker show the same judgement with the same words:

- :func:`tap_verdict`: TAP validation accuracy against chance (0.5), with the binomial standard
  error ``sqrt(0.25 / n)`` of ``n`` validation pairs: *learned*, *barely above chance*, *at chance*.
- :func:`head_verdict`: an event head's test confusion matrix: *collapsed* (one class for every
  window), an event class never predicted, or event precision no better than the base rate
  (the share of test windows that are events, again with its binomial standard error).
- :func:`calibration_verdict`: a ``calibration.json`` whose temperature hit its upper bound
  (:data:`tapcore.calibration.MAX_TEMPERATURE`), whose fit was rejected (T kept at 1), whose bias
  is extreme, or whose probabilities are still far off (ECE after calibration).
- :func:`movie_statistics` / :func:`data_shift_verdict`: cheap intensity, structure-size and
  motion statistics of a movie, recorded in a bundle's ``manifest.json`` (``data_stats``) at
  training time and compared with the movie a model is applied to.
- :func:`bundle_verdicts`, :func:`job_verdicts`, :func:`worst`: the verdicts of a bundle folder or
  a finished job's run folder, and the most severe of several.

Levels: ``"ok"`` (green), ``"warn"`` (amber: usable with care), ``"bad"`` (red: do not trust).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np

LEVELS = ("ok", "warn", "bad")
#: Standard errors a result must lie above chance / the base rate to count as real.
Z_SIGNIFICANT = 2.0
#: TAP: below this validation accuracy a significant result is still "barely above chance".
TAP_USEFUL_ACC = 0.6
#: Event heads: precision must be at least this many times the base rate to count as useful.
HEAD_USEFUL_LIFT = 1.5
#: Event heads: a class that receives this share of all test predictions means the head collapsed.
COLLAPSE_SHARE = 0.99
#: Calibration: ECE (top label) after calibration above this is still poorly calibrated.
ECE_POOR = 0.1
#: Calibration: |bias| above this moves the event odds by more than e**8 (~3000x).
BIAS_EXTREME = 8.0
#: Data shift: structures this many times larger or smaller than in training.
SCALE_RATIO = 1.5
#: Data shift: frame-to-frame change this many times larger or smaller than in training.
CHANGE_RATIO = 2.5
#: Data shift: raw intensity range this many times wider or narrower than in training.
RANGE_RATIO = 10.0
#: Data shift: a skewness difference this large means bright-on-dark vs dark-on-bright images.
SKEW_DIFF = 1.5
STATS_VERSION = 1


@dataclass(frozen=True)
class Verdict:
    """A judgement of one result.

    Attributes:
        level: ``"ok"``, ``"warn"`` or ``"bad"``.
        title: a few words (``"at chance"``, ``"collapsed"``).
        explanation: one sentence with the numbers behind the judgement.
        next_step: what to do about it (empty when nothing needs doing).
        subject: what was judged (``"TAP features"``, ``"event head"``, ``"calibration"``, ``"data"``).
    """

    level: str
    title: str
    explanation: str
    next_step: str = ""
    subject: str = ""

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"verdict level must be one of {', '.join(LEVELS)}, got {self.level!r}")

    @property
    def ok(self) -> bool:
        return self.level == "ok"

    def line(self) -> str:
        """One printable line: ``[WARN] event head: barely above the base rate. ... Next: ...``."""
        tag = {"ok": "OK", "warn": "WARN", "bad": "BAD"}[self.level]
        who = f"{self.subject}: " if self.subject else ""
        nxt = f" Next: {self.next_step}" if self.next_step else ""
        return f"[{tag}] {who}{self.title}. {self.explanation}{nxt}"

    def text(self) -> str:
        """Markdown for the app: bold title, explanation, next step."""
        who = f"{self.subject[:1].upper() + self.subject[1:]}: " if self.subject else ""
        nxt = f" **What to do:** {self.next_step}" if self.next_step else ""
        return f"**{who}{self.title}.** {self.explanation}{nxt}"

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Verdict":
        return cls(**{k: str(data.get(k) or "") for k in ("level", "title", "explanation", "next_step", "subject")})


def worst(verdicts: Iterable[Optional[Verdict]]) -> Optional[Verdict]:
    """The most severe verdict (the first of equal ones); None when there is none."""
    best: Optional[Verdict] = None
    for v in verdicts:
        if v is not None and (best is None or LEVELS.index(v.level) > LEVELS.index(best.level)):
            best = v
    return best


# -- TAP ------------------------------------------------------------------------------------------
def tap_verdict(val_acc: Optional[float], n_val: Optional[int], val_loss: Optional[float] = None) -> Verdict:
    """TAP validation accuracy against chance (0.5) with its binomial standard error.

    Args:
        val_acc: final validation accuracy (share of pairs whose order was told right).
        n_val: number of validation pairs it was measured on.
        val_loss: final validation loss (shown next to ln 2 = 0.693, the loss of guessing).
    """
    subject = "TAP features"
    if val_acc is None or n_val is None or not math.isfinite(float(val_acc)) or int(n_val) < 1:
        return Verdict("warn", "not measured", "This TAP model has no validation accuracy, so whether it learned "
                       "anything is unknown.", "Pretrain again with validation pairs (the default).", subject)
    acc, n = float(val_acc), int(n_val)
    se = math.sqrt(0.25 / n)  # standard error of an accuracy around 0.5 on n pairs
    z = (acc - 0.5) / se
    loss = f", loss {float(val_loss):.3f} (guessing: 0.693)" if val_loss is not None and math.isfinite(float(val_loss)) else ""
    numbers = f"validation accuracy {acc:.3f} ± {se:.3f} on {n} pairs{loss}"
    if z < Z_SIGNIFICANT:
        return Verdict("bad", "at chance",
                       f"The features cannot tell forward from backward time: {numbers} is what coin-flipping "
                       "gives (0.5), so event heads on them learn nothing.",
                       "Train longer (more epochs, more frame pairs per epoch), on more of your movies, or with "
                       "the paper settings on a GPU.", subject)
    if acc < TAP_USEFUL_ACC:
        return Verdict("warn", "barely above chance",
                       f"The features learned a little about the arrow of time: {numbers} is above chance "
                       f"(0.5) by {z:.1f} standard errors, but far from what good features reach.",
                       "Train longer or with the paper settings on a GPU before relying on the event head.",
                       subject)
    return Verdict("ok", "learned", f"The features tell forward from backward time: {numbers} "
                   f"(chance: 0.5).", "", subject)


def tap_verdict_from_bundle(metrics: dict[str, Any], config: dict[str, Any]) -> Verdict:
    """:func:`tap_verdict` from a TAP bundle's ``metrics.json`` and ``config.json`` contents."""
    final = (metrics or {}).get("final") or {}
    n = (metrics or {}).get("val_pairs") or ((config or {}).get("pretrain") or {}).get("val_samples")
    return tap_verdict(final.get("val_acc"), n, final.get("val_loss"))


# -- event heads ----------------------------------------------------------------------------------
def head_verdict(test: dict[str, Any]) -> Verdict:
    """An event head's test confusion matrix: collapsed, event precision at the base rate, or fine.

    Args:
        test: ``metrics.json["test"]`` of an event-head bundle: ``confusion_matrix`` (rows: true
            class, columns: predicted class; class 0 = no event) and ``class_names``.
    """
    subject = "event head"
    cm = np.asarray((test or {}).get("confusion_matrix") or [], dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] < 2 or cm.shape[0] != cm.shape[1] or cm.sum() == 0:
        return Verdict("warn", "not measured", "This event head has no test results, so its quality is unknown.",
                       "Train it again (the test windows are set aside automatically).", subject)
    k = cm.shape[0]
    names = [str(n) for n in ((test or {}).get("class_names") or [])]
    if len(names) != k:
        names = ["none"] + (["event"] if k == 2 else [f"class {i}" for i in range(1, k)])
    n = cm.sum()
    predicted = cm.sum(axis=0)
    support = cm.sum(axis=1)
    top = int(np.argmax(predicted))
    if predicted[top] >= COLLAPSE_SHARE * n:
        share = predicted[top] / n
        return Verdict("bad", "collapsed",
                       f"The head calls {share:.0%} of the {int(n)} test windows '{names[top]}': it answers the "
                       "same whatever it sees, so its events (or its silence) mean nothing.",
                       "Check that the masks mark the events, train more epochs or with the ResNet head (A1), "
                       "on TAP features that are above chance.", subject)
    problems: list[tuple[str, str, str]] = []  # (level, title, sentence)
    good: list[str] = []
    for c in range(1, k):
        name = names[c]
        if support[c] == 0:
            continue
        base = support[c] / n
        if predicted[c] == 0:
            problems.append(("bad", f"never predicts {name}",
                             f"none of the {int(support[c])} test windows with a {name} was called one"))
            continue
        precision = cm[c, c] / predicted[c]
        recall = cm[c, c] / support[c]
        se = math.sqrt(base * (1 - base) / predicted[c])
        numbers = (f"{name} precision {precision:.2f} vs base rate {base:.2f} (± {se:.2f}), "
                   f"recall {recall:.2f}")
        if precision - base < Z_SIGNIFICANT * se:
            problems.append(("bad", "precision at the base rate",
                             f"{numbers}: windows it calls '{name}' are no more often real than windows picked "
                             "at random"))
        elif precision < HEAD_USEFUL_LIFT * base:
            problems.append(("warn", "barely above the base rate",
                             f"{numbers}: better than random picking, but most of its '{name}' calls are wrong"))
        else:
            good.append(numbers)
    if not problems and not good:
        return Verdict("warn", "no events to judge on", f"The {int(n)} test windows hold no events, so whether the "
                       "head finds any is unknown.", "Use a movie with more annotated events.", subject)
    if problems:
        level = "bad" if any(p[0] == "bad" for p in problems) else "warn"
        title = next(p[1] for p in problems if p[0] == level)
        sentence = "; ".join(p[2] for p in problems) + "."
        nxt = ("Train more epochs, use the ResNet head (A1), more windows per frame pair, or better TAP "
               "features; check the masks.")
        return Verdict(level, title, sentence[0].upper() + sentence[1:], nxt, subject)
    return Verdict("ok", "learned", "; ".join(good).capitalize() + " on the test windows.", "", subject)


# -- calibration ----------------------------------------------------------------------------------
def calibration_verdict(calib: Optional[dict[str, Any]]) -> Verdict:
    """A ``calibration.json``: temperature at its bound, rejected fit, extreme bias, poor ECE, or fine."""
    from tapcore.calibration import MAX_TEMPERATURE

    subject = "calibration"
    if not calib:
        return Verdict("warn", "not calibrated", "The probabilities are the raw scores of the head, which are "
                       "usually over-confident.", "Calibrate the model (tick 'Calibrate probabilities' or run "
                       "`tapcore calibrate`).", subject)
    t = float(calib.get("temperature", 1.0))
    bias = calib.get("bias", 0.0)
    b = max((abs(float(v)) for v in bias), default=0.0) if isinstance(bias, list) else abs(float(bias or 0.0))
    ece_before = (calib.get("ece_before") or {}).get("top")
    ece_after = (calib.get("ece_after") or {}).get("top")
    ece_txt = (f" ECE {ece_before:.3f} → {ece_after:.3f}." if ece_before is not None and ece_after is not None else "")
    if t >= MAX_TEMPERATURE * (1 - 1e-6):
        return Verdict("warn", "hit its bound",
                       f"The temperature T reached its upper limit {MAX_TEMPERATURE:g}: the model's scores carry "
                       "almost no information on the validation windows, so every probability is squeezed "
                       f"towards the same value.{ece_txt}",
                       "Train a better head first (more epochs, A1, better TAP features); then calibrate again.",
                       subject)
    if b > BIAS_EXTREME:
        return Verdict("warn", "extreme bias",
                       f"The event bias b = {b:.1f} multiplies the event odds by about {math.exp(b):.2g}: "
                       f"the fit had to fight the head's scores.{ece_txt}",
                       "Check the masks and the head's precision; recalibrate on a movie with more events.", subject)
    if t == 1.0 and b == 0.0 and calib.get("nll_after") is not None:
        return Verdict("warn", "fit rejected",
                       "Temperature scaling did not lower the validation loss, so the raw scores are kept (T = 1)."
                       + ece_txt, "Recalibrate on more validation windows (a movie with more events).", subject)
    if ece_after is not None and float(ece_after) > ECE_POOR:
        return Verdict("warn", "still off",
                       f"After calibration the probabilities are still off by {float(ece_after):.2f} on average "
                       f"(ECE).{ece_txt}", "Recalibrate on more validation windows.", subject)
    return Verdict("ok", "calibrated", f"Probabilities can be read as frequencies (T = {t:.2f}"
                   + (f", b = {float(bias):.2f}" if not isinstance(bias, list) and bias else "") + f").{ece_txt}",
                   "", subject)


# -- data: statistics and shift -------------------------------------------------------------------
def _autocorr_width(frame: np.ndarray) -> float:
    """Radius (px) where the frame's normalised autocorrelation falls to one half: a structure size."""
    f = frame - frame.mean()
    power = np.abs(np.fft.rfft2(f)) ** 2
    ac = np.fft.irfft2(power, s=f.shape)
    if ac[0, 0] <= 0:
        return float("nan")
    ac = np.fft.fftshift(ac / ac[0, 0])
    cy, cx = f.shape[0] // 2, f.shape[1] // 2
    yy, xx = np.indices(ac.shape)
    r = np.hypot(yy - cy, xx - cx).astype(np.int64)
    rmax = min(cy, cx)
    sel = r < rmax
    profile = np.bincount(r[sel], weights=ac[sel]) / np.maximum(np.bincount(r[sel]), 1)
    below = np.flatnonzero(profile < 0.5)
    if below.size == 0:
        return float(rmax)
    i = int(below[0])
    if i == 0:
        return 0.0
    # linear interpolation between radius i-1 (>= 0.5) and i (< 0.5)
    p0, p1 = profile[i - 1], profile[i]
    return float(i - 1 + (p0 - 0.5) / max(p0 - p1, 1e-12))


def movie_statistics(movie: np.ndarray, max_frames: int = 8, max_side: int = 512) -> dict[str, Any]:
    """Cheap statistics of a raw movie ``(T, Y, X)``, to be compared with another movie's.

    Up to ``max_frames`` evenly spaced frames (and the frame after each) are looked at, each cut to
    its central ``max_side`` square. Takes well under a second for any movie size.

    Returns:
        JSON-able dict: ``frames, height, width, dtype``; ``raw_percentiles`` (p1, p50, p99, p99.8 of the
        raw values); ``structure_px`` (median autocorrelation half-width of the normalised frames: a
        proxy of the nucleus radius); ``frame_change`` (mean absolute change between consecutive
        normalised frames relative to the frames' mean absolute deviation: motion and appearance
        changes per frame); ``skewness`` (of normalised intensities: > 0 bright objects on a dark
        background); ``foreground`` (share of normalised pixels above 0.5).
    """
    from tapcore.io import normalize_movie

    movie = np.asarray(movie)
    if movie.ndim != 3 or movie.shape[0] < 1:
        raise ValueError(f"movie statistics need a (T, Y, X) movie, got shape {movie.shape}")
    t_len, height, width = movie.shape
    idx = np.unique(np.linspace(0, max(t_len - 2, 0), min(max_frames, t_len)).round().astype(int))
    y0, x0 = max(0, (height - max_side) // 2), max(0, (width - max_side) // 2)
    crop = (slice(y0, y0 + max_side), slice(x0, x0 + max_side))
    frames = np.stack([movie[i][crop] for i in idx])
    nxt = np.stack([movie[min(i + 1, t_len - 1)][crop] for i in idx])
    raw = frames.astype(np.float64)
    finite = raw[np.isfinite(raw)]
    pct = np.percentile(finite, [1.0, 50.0, 99.0, 99.8]) if finite.size else np.full(4, np.nan)
    norm = normalize_movie(frames).astype(np.float64)
    norm_next = normalize_movie(nxt).astype(np.float64)
    widths = [_autocorr_width(f) for f in norm]
    spread = np.mean(np.abs(norm - norm.mean(axis=(1, 2), keepdims=True)))
    change = np.mean(np.abs(norm_next - norm)) / max(spread, 1e-12) if t_len > 1 else float("nan")
    centred = norm - norm.mean()
    sd = centred.std()
    skew = float(np.mean(centred ** 3) / sd ** 3) if sd > 0 else 0.0

    def clean(x: float) -> Optional[float]:
        return float(x) if x is not None and math.isfinite(float(x)) else None

    return {
        "version": STATS_VERSION,
        "frames": int(t_len), "height": int(height), "width": int(width), "dtype": str(movie.dtype),
        "raw_percentiles": {k: clean(v) for k, v in zip(("p1", "p50", "p99", "p99.8"), pct)},
        "structure_px": clean(float(np.nanmedian(widths))) if np.isfinite(widths).any() else None,
        "frame_change": clean(change),
        "skewness": clean(skew),
        "foreground": clean(float((norm > 0.5).mean())),
        "frames_sampled": [int(i) for i in idx],
    }


def data_shift_verdict(train: Optional[dict[str, Any]], current: dict[str, Any], *,
                       same_movie: bool = False) -> Verdict:
    """Compare the statistics of the movie a model is applied to with those of its training movie.

    Args:
        train: ``manifest.json["data_stats"]`` of the model (None: not recorded).
        current: :func:`movie_statistics` of the movie at hand.
        same_movie: the movie is the very one the model was trained on (same sha256).
    """
    subject = "data"
    if same_movie:
        return Verdict("ok", "the training movie",
                       "The model was trained on this very movie, so what it finds here is optimistic: expect "
                       "more misses and false alarms on new movies.", "", subject)
    if not train:
        return Verdict("warn", "training movie unknown",
                       "This model does not record what its training movie looked like, so whether your movie "
                       "resembles it cannot be checked.",
                       "Check some detections by eye, or train an event head on your own annotated movie.", subject)
    reasons: list[str] = []
    fixes: list[str] = []
    s_tr, s_cur = train.get("structure_px"), current.get("structure_px")
    if s_tr and s_cur:
        r = s_cur / s_tr
        if r > SCALE_RATIO or r < 1 / SCALE_RATIO:
            bigger = "larger" if r > 1 else "smaller"
            reasons.append(f"structures look {max(r, 1 / r):.1f} times {bigger} ({s_cur:.1f} px vs {s_tr:.1f} px "
                           "in training)")
            fixes.append(f"rescale the movie by about {1 / r:.2f} so cells have their training size")
    c_tr, c_cur = train.get("frame_change"), current.get("frame_change")
    if c_tr and c_cur:
        r = c_cur / c_tr
        if r > CHANGE_RATIO or r < 1 / CHANGE_RATIO:
            more = "more" if r > 1 else "less"
            reasons.append(f"frames change {max(r, 1 / r):.1f} times {more} from one to the next "
                           "(other frame interval or faster motion)")
            fixes.append("use a movie with the training frame interval")
    k_tr, k_cur = train.get("skewness"), current.get("skewness")
    if k_tr is not None and k_cur is not None and abs(k_cur - k_tr) > SKEW_DIFF:
        reasons.append(f"the intensity distribution differs (skewness {k_cur:.1f} vs {k_tr:.1f}: another imaging "
                       "mode or stain)")
    p_tr, p_cur = train.get("raw_percentiles") or {}, current.get("raw_percentiles") or {}
    if all(p_tr.get(k) is not None and p_cur.get(k) is not None for k in ("p1", "p99.8")):
        span_tr, span_cur = p_tr["p99.8"] - p_tr["p1"], p_cur["p99.8"] - p_cur["p1"]
        if span_tr > 0 and span_cur > 0:
            r = span_cur / span_tr
            if r > RANGE_RATIO or r < 1 / RANGE_RATIO:
                reasons.append(f"raw intensities span {r:.3g} times the training range ({span_cur:.4g} vs "
                               f"{span_tr:.4g}; each frame is rescaled, which compensates only in part)")
    if not reasons:
        return Verdict("ok", "like the training movie",
                       "Structure size, frame-to-frame change and intensities resemble the model's training "
                       "movie.", "", subject)
    text = "; ".join(reasons)
    return Verdict("bad" if len(reasons) >= 2 else "warn", "unlike the training movie",
                   f"This movie differs from the one the model learned on: {text}. Its events may be "
                   "artefacts and its misses many.",
                   ("; ".join(fixes) + "; or " if fixes else "") + "train an event head on annotated frames of "
                   "this movie, and check detections by eye.", subject)


def prediction_shift_verdict(manifest: dict[str, Any], movie: np.ndarray, movie_sha256: Optional[str] = None,
                             current: Optional[dict[str, Any]] = None) -> Verdict:
    """:func:`data_shift_verdict` for a model bundle's manifest and a raw movie."""
    if movie_sha256 is None:
        from tapcore.utils import sha256_array

        movie_sha256 = sha256_array(np.asarray(movie))
    same = bool(movie_sha256) and movie_sha256 in (manifest.get("movie_sha256"), manifest.get("data_sha256"))
    return data_shift_verdict(manifest.get("data_stats"), current or movie_statistics(movie), same_movie=same)


# -- bundles and jobs -----------------------------------------------------------------------------
def bundle_verdicts(path: str | Path) -> list[Verdict]:
    """The verdicts of a model bundle folder: TAP accuracy, or head quality and calibration."""
    from tapcore.utils import read_json

    path = Path(path)
    read = lambda name: read_json(path / name) if (path / name).is_file() else {}  # noqa: E731
    config = read("config.json")
    metrics = read("metrics.json")
    if config.get("kind") == "tap":
        return [tap_verdict_from_bundle(metrics, config)]
    if config.get("kind") == "event_head":
        out = [head_verdict(metrics.get("test") or {})]
        calib = read("calibration.json")
        if calib:
            out.append(calibration_verdict(calib))
        return out
    return []


def job_verdicts(kind: str, run_dir: str | Path) -> list[Verdict]:
    """The verdicts of a finished job from what it wrote into ``run_dir``."""
    run_dir = Path(run_dir)
    if kind in ("pretrain", "train_head") and (run_dir / "model" / "config.json").is_file():
        return bundle_verdicts(run_dir / "model")
    if kind == "predict" and (run_dir / "prediction" / "prediction.json").is_file():
        from tapcore.utils import read_json

        record = read_json(run_dir / "prediction" / "prediction.json")
        return [Verdict.from_dict(v) for v in (record.get("verdicts") or [])]
    return []


def stored_job_verdict(run_dir: str | Path) -> Optional[Verdict]:
    """The overall verdict a finished job stored in its ``result.json`` (None when there is none)."""
    from tapcore.utils import read_json

    path = Path(run_dir) / "result.json"
    if not path.is_file():
        return None
    try:
        data = read_json(path).get("verdict")
    except ValueError:
        return None
    return Verdict.from_dict(data) if data else None
