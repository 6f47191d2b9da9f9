"""Where a model's NE sits on the synthetic data: NE ceilings of nested feature sets.

The planted click model (`kunlun_jax.data.synthetic`) is a sum of terms that differ in how hard
they are to learn: the context biases and dense features are a few parameters away, history
lengths and recency-weighted event counts need only the events' times, while the sequence term
(the candidate's similarity to past items) and the affinity term (user taste x candidate) need
embeddings that recover the world's latent item and user geometry from labels. A logistic
regression on each nested set of these quantities gives the NE a model reaches once it has
learned exactly that set: comparing a model's eval NE with these ceilings says which terms it
has learned. The last set is every planted term, whose NE is the Bayes optimum up to sampling.
The ceilings are the click's, whatever `data.tasks` holds.

    kunlun-jax data ceilings --config tiny --out ceilings.json

The features use each history as the data holds it (up to data.synthetic.max_history events),
as the planted model does; a model that keeps fewer events of a stream (a tower's max_len, e.g.
`tiny`'s impression stream: 16 of up to 32) can reach a little less.

Fits are in-sample on the eval split's examples (a few dozen parameters for tens of thousands
of examples), by Newton's method; NE is normalized by those examples' base rate, as `train`'s
eval NE on synthetic data is, so with the default examples the two compare directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

from kunlun_jax.config import Config, DataConfig
from kunlun_jax.data.synthetic import STREAMS, SyntheticSource
from kunlun_jax.metrics import StreamingMetrics, normalized_entropy

# (name, what a model must have learned to reach it), cumulative: each set adds to the last.
FEATURE_SETS: tuple[tuple[str, str], ...] = (
    ("context_dense", "hour / device biases and the dense features"),
    ("history_lengths", "+ log(1 + length) of each history"),
    ("recency_counts", "+ log(1 + 2 Σ r(dt)) of each history: event times, not items"),
    ("sequence", "+ the planted sequence term: the latent similarity of past items"),
    ("affinity", "+ the planted user x candidate affinity: every planted term"),
)


def ceilings(config: Config, num_examples: int | None = None) -> dict:
    """NE of a logistic regression on each nested feature set of FEATURE_SETS, on the first
    `num_examples` eval examples of `config`'s synthetic data (planted model, not teacher mode;
    default data.num_eval: the examples `train` evaluates on), beside the Bayes-optimal NE of
    the same examples."""
    data = config.data
    num_examples = data.num_eval if num_examples is None else num_examples
    _require_planted_model(data, "feature ceilings")
    if num_examples < 100:
        raise ValueError(
            f"the ceilings need >= 100 eval examples (--examples, default data.num_eval), got "
            f"{num_examples}"
        )
    source = SyntheticSource(
        data.synthetic, num_examples=num_examples, seed=data.seed, split="eval"
    )
    batch = source.batch(range(num_examples))
    terms = source.logit_terms(batch)
    label = batch["label"].astype(np.float64)
    recency = source.event_recency(batch)  # [N, S, T]
    lengths = [np.log1p(batch["seqs"][stream]["length"]) for stream in STREAMS]
    counts = [np.log1p(2.0 * recency[:, s].sum(-1)) for s in range(len(STREAMS))]
    dense = [batch["dense"][:, i] for i in range(batch["dense"].shape[1])]
    added = {
        "context_dense": [terms["context"], *dense],
        "history_lengths": lengths,
        "recency_counts": counts,
        "sequence": [terms["sequence"]],
        "affinity": [terms["affinity"]],
    }
    features: list[np.ndarray] = []
    rows = []
    for name, meaning in FEATURE_SETS:
        features += added[name]
        rows.append(dict(features=name, meaning=meaning, ne=_fitted_ne(features, label)))
    oracle = StreamingMetrics()
    oracle.update(label, batch["oracle_p"], batch["oracle_p"])
    oracle = oracle.compute()
    return dict(
        examples=num_examples,
        base_rate=oracle["base_rate"],
        # p_true's NE on these labels (what a fit can reach), and its expectation
        # E[H(p_true)] / H(p̄): the oracle_ne that `train` reports.
        bayes_ne=oracle["ne"],
        oracle_ne=oracle["oracle_ne"],
        ceilings=rows,
    )


def _require_planted_model(data: DataConfig, what: str) -> None:
    if data.source != "synthetic" or data.synthetic.teacher:
        raise ValueError(
            f"{what} need the planted synthetic click model: data.source = 'synthetic' with "
            f"data.synthetic.teacher = false (got source {data.source!r}, teacher = "
            f"{data.synthetic.teacher})"
        )


def item_geometry(item_table: np.ndarray, source: SyntheticSource, top: int = 300) -> float:
    """Correlation, over pairs of the `top` most popular items, between the cosine similarities
    of a learned item table [rows >= num_items + 1, d] (row = item id) and of the world's item
    vectors, on which the planted sequence and affinity terms depend: about 0 for a table that
    has learned none of that geometry, 1 for one that holds it exactly."""
    items = source.world.popularity_table[:top]
    learned = np.asarray(item_table, np.float64)[items]
    learned /= np.maximum(np.linalg.norm(learned, axis=1, keepdims=True), 1e-12)
    true = source.world.item_unit[items].astype(np.float64)
    pairs = np.triu_indices(len(items), 1)
    return float(np.corrcoef((learned @ learned.T)[pairs], (true @ true.T)[pairs])[0, 1])


def check_runs_share_the_world(config: Config, run_dirs: Sequence[Path]) -> None:
    """Raises unless every run was trained in `config`'s world (data.source, data.seed and
    data.synthetic equal; the number of training examples may differ), so that its numbers
    sit beside these ceilings."""
    from kunlun_jax.train.loop import run_config

    def world(data: DataConfig) -> tuple:
        return data.source, data.seed, data.synthetic

    for run_dir in run_dirs:
        if world(run_config(run_dir).data) != world(config.data):
            raise ValueError(
                f"run {run_dir} was trained in another synthetic world (data.source, data.seed "
                f"or data.synthetic) than the ceilings' config: pass its config, --config "
                f"{Path(run_dir) / 'config.json'}"
            )


def run_embeddings(run_dir: Path) -> dict:
    """A trained run's (newest checkpoint) embedding tables: per sparse feature the std of its
    table's rows (the initialization's is 0.05), and `item_geometry` of the item table."""
    from kunlun_jax.train.loop import restore_run, run_config

    config = run_config(run_dir)
    data = config.data
    _require_planted_model(data, f"the embeddings of run {run_dir}")
    exp, state, step = restore_run(run_dir, config)
    tables = jax.device_get(state.params["embedding"])
    source = SyntheticSource(data.synthetic, num_examples=1, seed=data.seed, split="eval")
    return dict(
        run_dir=str(run_dir),
        step=step,
        table_std={
            name: float(np.std(tables[name][:vocab]))  # padding rows are never trained
            for name, vocab in zip(exp.spec.sparse_names, exp.spec.sparse_vocab_sizes, strict=True)
        },
        item_geometry=item_geometry(tables["item_id"], source),
    )


def _fitted_ne(columns: Sequence[np.ndarray], label: np.ndarray, iterations: int = 50) -> float:
    """NE of the logistic regression of label on standardized columns (+ intercept)."""
    x = np.column_stack([np.asarray(c, np.float64) for c in columns])
    x = (x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1.0)
    x = np.column_stack([np.ones(len(label)), x])
    w = np.zeros(x.shape[1])
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-x @ w))
        hessian = (x * (p * (1 - p))[:, None]).T @ x + 1e-6 * np.eye(x.shape[1])
        step = np.linalg.solve(hessian, x.T @ (label - p))
        w += step
        if np.max(np.abs(step)) < 1e-8:
            return normalized_entropy(label, 1.0 / (1.0 + np.exp(-x @ w)))
    raise RuntimeError(
        f"the logistic regression did not converge in {iterations} Newton steps (separable "
        "labels?): use more examples"
    )


def render(report: dict) -> str:
    """The ceilings as aligned text lines."""
    lines = [f"NE ceilings on {report['examples']} eval examples (lower is better):"]
    for row in report["ceilings"]:
        lines.append(f"  {row['ne']:.4f}  {row['features']:16s} {row['meaning']}")
    lines.append(f"  {report['bayes_ne']:.4f}  {'bayes_optimal':16s} the labels' own p_true")
    lines.append(
        f"  {report['oracle_ne']:.4f}  {'oracle_ne':16s} its expectation, as `train` reports"
    )
    for run in report.get("runs", []):
        spread = ", ".join(f"{k} {v:.4f}" for k, v in run["table_std"].items())
        lines.append(
            f"run {run['run_dir']} (step {run['step']}): item geometry "
            f"{run['item_geometry']:+.3f}; embedding std (init 0.05): {spread}"
        )
    return "\n".join(lines)
