"""A training run's curves as a PNG: what the Training page shows instead of tables of numbers."""

from __future__ import annotations

import io

CURVES = ("loss", "rewards/margins", "rewards/accuracies", "rewards/chosen", "rewards/rejected")


def curves_png(objective: str, history: list[dict]) -> bytes:
    """Loss (left) and, for preference objectives, the trainer's reward curves (right), against the step."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    rewards = [k for k in CURVES[1:] if any(k in h for h in history)]
    fig = Figure(figsize=(8 if rewards else 4.5, 3), dpi=90)
    axes = fig.subplots(1, 2 if rewards else 1, squeeze=False)[0]
    for ax, keys, title in zip(axes, (["loss"], rewards), ("loss", "rewards")):
        for key in keys:
            points = [(h["step"], h[key]) for h in history if key in h and "step" in h and h[key] is not None]
            if points:
                ax.plot(*zip(*points), marker=".", label=key)
        ax.set_title(f"{objective}: {title}", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        if len(keys) > 1:
            ax.legend(fontsize=7)
    if not history:
        axes[0].text(0.5, 0.5, "no log history", ha="center", va="center", transform=axes[0].transAxes)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png")
    return out.getvalue()
