"""loss.png from trainer_log.jsonl (training loss per step, eval loss where measured)."""

from __future__ import annotations

from pathlib import Path

from camelid.core.io import atomic_write, read_jsonl


def plot_losses(log_path: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for _, r in read_jsonl(log_path)] if Path(log_path).is_file() else []
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1.2)
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (per trained token)")
    ax.grid(alpha=0.3)
    if train or evals:
        ax.legend()
    with atomic_write(png, "wb") as f:
        fig.savefig(f, format="png", bbox_inches="tight")
    plt.close(fig)
