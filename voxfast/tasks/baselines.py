"""Classical baselines on the deep model's own split: CSP + LDA for EEG, logistic regression on pixels for images.

A deep model on a small data set is only worth its cost if it beats what a few lines of classical signal processing
reach on the same examples; so the baseline is fitted on exactly the training indices the task trained on (the same
fold under cross-validation, the same preprocessing: the EEG task's band-pass and training-set standardisation) and
scored with the same metrics on the same validation examples.

CSP is written here in numpy/scipy (no MNE): the spatial filters w maximise the variance of one class against the
other, w' C_a w / w' (C_a + C_b) w, i.e. the generalised eigenproblem C_a w = l (C_a + C_b) w, solved by
scipy.linalg.eigh in float64. Eigenvalues near 1 (or 0) mark directions where class a (or b) has nearly all the
variance, so the filters at both ends are kept; the log-variance of the filtered trials is what LDA sees. With
more than two classes each class is set against the others (one-vs-rest) and the filter sets are stacked.
scikit-learn (the `baseline` extra) provides LDA and logistic regression and is imported only when a baseline runs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.linalg import eigh

from voxfast.errors import VoxfastError
from voxfast.tasks.classification import ClassificationTask, classification_metrics

CSP_PAIRS = 3  # filters kept from each end of a class pair's spectrum (6 per pair, the usual choice)


# ----------------------------------------------------------------------------------------------- CSP


def class_covariances(x: np.ndarray, y: np.ndarray) -> dict[int, np.ndarray]:
    """Mean trace-normalised spatial covariance (channels x channels, float64) of each class's trials.

    Trace normalisation keeps a few loud trials (movement, a loose electrode) from dominating the class mean; each
    trial's own mean is removed first, so channel offsets do not count as variance.
    """
    out = {}
    for c in np.unique(y):
        trials = x[y == c].astype(np.float64)
        trials = trials - trials.mean(axis=-1, keepdims=True)
        covs = np.einsum("nct,ndt->ncd", trials, trials)
        out[int(c)] = (covs / np.trace(covs, axis1=1, axis2=2)[:, None, None]).mean(axis=0)
    return out


def csp_pair(cov_a: np.ndarray, cov_b: np.ndarray, pairs: int = CSP_PAIRS) -> tuple[np.ndarray, np.ndarray]:
    """(filters (2*pairs, channels), eigenvalues (2*pairs,)) of C_a w = l (C_a + C_b) w, largest l first.

    The first `pairs` filters give class a the most variance relative to b, the last `pairs` the least. Filters are
    scaled so that w' (C_a + C_b) w = 1 (eigh's normalisation).
    """
    channels = len(cov_a)
    pairs = min(pairs, channels // 2)
    try:
        values, vectors = eigh(cov_a, cov_a + cov_b)  # ascending
    except np.linalg.LinAlgError as exc:  # C_a + C_b singular: a flat or duplicated channel
        raise VoxfastError(f"CSP: the class covariances are singular ({exc}); drop flat or duplicated "
                           "channels") from exc
    keep = np.r_[np.arange(channels - 1, channels - 1 - pairs, -1), np.arange(pairs - 1, -1, -1)]
    return vectors[:, keep].T, values[keep]


class CSP:
    """Common spatial patterns: per class pair (two classes) or per class against the rest, log-variance features."""

    def __init__(self, pairs: int = CSP_PAIRS) -> None:
        self.pairs = pairs
        self.filters = np.empty((0, 0))

    def fit(self, x: np.ndarray, y: np.ndarray) -> CSP:
        covs = class_covariances(x, y)
        classes = sorted(covs)
        if len(classes) < 2:
            raise VoxfastError(f"CSP needs trials of at least 2 classes, got {len(classes)}")
        counts = {c: int((y == c).sum()) for c in classes}
        targets = classes[:1] if len(classes) == 2 else classes
        sets = []
        for c in targets:
            rest = [d for d in classes if d != c]
            rest_cov = sum(counts[d] * covs[d] for d in rest) / sum(counts[d] for d in rest)
            sets.append(csp_pair(covs[c], rest_cov, self.pairs)[0])
        self.filters = np.concatenate(sets)
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        """(N, filters) log of each filtered trial's variance (float64)."""
        z = np.einsum("fc,nct->nft", self.filters, x.astype(np.float64))
        return np.log(np.maximum(z.var(axis=-1), np.finfo(np.float64).tiny))


def csp_lda(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray) -> np.ndarray:
    """Predicted classes of `x_val` from CSP log-variances and shrinkage LDA fitted on the training trials.

    Ledoit-Wolf shrinkage (lsqr, shrinkage="auto") keeps LDA's covariance well conditioned with a few dozen trials
    per class, the usual case in EEG.
    """
    lda_class = _sklearn().discriminant_analysis.LinearDiscriminantAnalysis
    csp = CSP().fit(x_train, y_train)
    lda = lda_class(solver="lsqr", shrinkage="auto").fit(csp.transform(x_train), y_train)
    return lda.predict(csp.transform(x_val))


def pixel_logistic(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, seed: int = 0) -> np.ndarray:
    """Predicted classes of `x_val` from multinomial logistic regression on standardised raw pixels."""
    sk = _sklearn()
    model = sk.pipeline.make_pipeline(sk.preprocessing.StandardScaler(),
                                      sk.linear_model.LogisticRegression(max_iter=300, random_state=seed))
    flat = [np.asarray(a, dtype=np.float32).reshape(len(a), -1) for a in (x_train, x_val)]
    return model.fit(flat[0], y_train).predict(flat[1])


def _sklearn() -> Any:
    try:
        import sklearn.discriminant_analysis
        import sklearn.linear_model
        import sklearn.pipeline
        import sklearn.preprocessing
    except ImportError as exc:
        raise VoxfastError("train.baseline needs scikit-learn: pip install 'voxfast[baseline]'") from exc
    return sklearn


# ----------------------------------------------------------------------------------------------- on a task


def baseline_arrays(task: ClassificationTask) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_val, y_val) of a built task, as the deep model sees them before augmentation.

    EEG: band-passed (eeg.bandpass) and standardised with training statistics; images: raw pixels.
    """
    if task.name == "eeg":
        x, y = task.x.numpy(), task.y.numpy()
        return x[task.train_rows], y[task.train_rows], x[task.val_rows], y[task.val_rows]
    if task.name == "image":
        return task.train_x.numpy(), task.train_y.numpy(), task.val_x.numpy(), np.asarray(task.val_labels)
    raise VoxfastError(f"train.baseline: no classical baseline for the {task.name} task (eeg and image have one)")


def run_baseline(task: ClassificationTask) -> dict[str, Any]:
    """The baseline's figures on the task's validation set, with the keys of the task's own evaluate()."""
    x_train, y_train, x_val, y_val = baseline_arrays(task)
    if len(y_val) == 0:
        return {"n_val": 0}
    if task.name == "eeg":
        predicted = csp_lda(x_train, y_train, x_val)
        method = "csp_lda"
    else:
        predicted = pixel_logistic(x_train, y_train, x_val, task.seed)
        method = "pixel_logistic"
    return {"method": method, **classification_metrics(np.asarray(y_val), np.asarray(predicted), task.classes)}
