"""The search's two pictures: fitness by generation, and which teacher layers the population uses."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def fitness_by_generation(logbook: list[dict], path: str | Path) -> Path:
    gens = [r["gen"] for r in logbook]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    for key, style in (("best", "-o"), ("mean", "-s"), ("min", ":")):
        ys = [r.get(key) for r in logbook]
        ax.plot(gens, [np.nan if y is None else y for y in ys], style, label=key)
    mean = np.array([np.nan if r.get("mean") is None else r["mean"] for r in logbook])
    std = np.array([np.nan if r.get("std") is None else r["std"] for r in logbook])
    ax.fill_between(gens, mean - std, mean + std, alpha=0.2, label="mean ± std")
    ax.set_xlabel("generation")
    ax.set_ylabel("proxy fitness")
    ax.set_xticks(gens)
    ax.set_title("Fitness by generation")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def layer_usage(populations: list[list[list[int]]], num_teacher_layers: int,
                path: str | Path) -> Path:
    """Share of genes pointing at each teacher layer (0 = none), per generation."""
    usage = np.zeros((num_teacher_layers + 1, len(populations)))
    for g, pop in enumerate(populations):
        genes = np.array([x for ind in pop for x in ind])
        for layer in range(num_teacher_layers + 1):
            usage[layer, g] = (genes == layer).mean() if genes.size else 0
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    im = ax.imshow(usage, aspect="auto", origin="lower", cmap="viridis", vmin=0)
    ax.set_xlabel("generation")
    ax.set_ylabel("teacher layer")
    ax.set_yticks(range(num_teacher_layers + 1))
    ax.set_xticks(range(len(populations)))
    ax.set_title("Teacher layers used by the population")
    fig.colorbar(im, ax=ax, label="share of genes")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
