"""Run outputs for people: the progress plot and the summary table."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def plot_metrics(metrics_path: Path, out: Path) -> None:
    """PNG with held-out accuracy and mean response length over iterations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [json.loads(l) for l in Path(metrics_path).read_text().splitlines() if l.strip()]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ev = [r for r in recs if "eval/accuracy" in r]
    keys = sorted({k for r in ev for k in r if k.startswith("eval/accuracy/")}, key=difficulty_key)
    for k in keys:
        ax1.plot([r["iteration"] for r in ev if k in r], [r[k] for r in ev if k in r], marker="o", label=k.split("/")[-1])
    ax1.plot([r["iteration"] for r in ev], [r["eval/accuracy"] for r in ev], "k-", lw=2, label="all")
    ax1.set(xlabel="iteration", ylabel="held-out pass@1", title="accuracy", ylim=(0, 1.02))
    ax1.legend(fontsize=7)
    tr = [r for r in recs if "response/mean_length" in r]
    ax2.plot([r["iteration"] for r in tr], [r["response/mean_length"] for r in tr], "k-", label="train rollouts")
    lkeys = sorted({k for r in ev for k in r if k.startswith("eval/mean_length/")}, key=difficulty_key)
    for k in lkeys:
        ax2.plot([r["iteration"] for r in ev if k in r], [r[k] for r in ev if k in r], marker=".", label=k.split("/")[-1])
    ax2.set(xlabel="iteration", ylabel="tokens", title="mean response length")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def difficulty_key(k: str):
    """Sort key of a per-difficulty metric key (``eval/accuracy/d3``): numeric difficulties in
    order, then any other label."""
    d = k.rsplit("/d", 1)[-1]
    return (0, int(d)) if d.lstrip("-").isdigit() else (1, d)


def summary_table(summary: dict[str, Any]) -> str:
    """Accuracy and mean length per difficulty, before and after RL (and after distillation)."""
    cols = [("before", summary.get("initial_eval") or {}), ("after RL", summary.get("final_eval") or {})]
    if summary.get("distilled_eval"):
        cols.append(("distilled", summary["distilled_eval"]))
    levels = sorted({k.split("/")[-1] for _, c in cols for k in c if k.startswith("eval/accuracy/")},
                    key=lambda d: difficulty_key("/" + d))
    head = f"{'difficulty':>10} | " + " | ".join(f"{n + ' acc':>14} {n + ' len':>14}" for n, _ in cols)
    lines = [head, "-" * len(head)]
    for lv in levels + ["all"]:
        acc_k = "eval/accuracy" if lv == "all" else f"eval/accuracy/{lv}"
        len_k = "eval/mean_length" if lv == "all" else f"eval/mean_length/{lv}"
        cells = []
        for _, c in cols:
            a, n = c.get(acc_k), c.get(len_k)
            cells.append(f"{(f'{a:.3f}' if a is not None else '-'):>14} {(f'{n:.1f}' if n is not None else '-'):>14}")
        lines.append(f"{lv:>10} | " + " | ".join(cells))
    return "\n".join(lines)
