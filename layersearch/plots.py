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


def verdict(winner: dict[str, float], uniform: dict[str, float], diff: tuple[float, float, float],
            word: str, winner_label: str, path: str | Path, role: str = "Winner") -> Path:
    """The search's answer as a picture: each unit's fitness for the winner and for uniform,
    paired by a line (same slice, seed and dev examples), and beside it the paired difference
    with its 95% interval against the zero line. ``diff`` is (mean, low, high). ``role`` names
    the mapping in the title ("Runner-up" where uniform itself won)."""
    units = [u for u in uniform if u in winner]
    fig, (left, right) = plt.subplots(1, 2, figsize=(7.2, 3.6), dpi=120, gridspec_kw={"width_ratios": [2, 1]})
    for u in units:
        left.plot([0, 1], [uniform[u], winner[u]], "-o", color="0.55", markersize=4, linewidth=1)
    left.plot([0, 1], [np.mean([uniform[u] for u in units]), np.mean([winner[u] for u in units])], "-D",
              color="C0", linewidth=2.5, markersize=7, label="mean over units")
    left.set_xticks([0, 1])
    left.set_xticklabels(["uniform", winner_label])
    left.set_xlim(-0.4, 1.4)
    left.set_ylabel("proxy fitness per unit")
    left.set_title(f"{len(units)} paired units (slice x seed)")
    left.legend(loc="best", fontsize=8)
    mean, low, high = diff
    colour = {"better": "C2", "worse": "C3"}.get(word, "C7")
    right.axhline(0.0, color="black", linewidth=1)
    right.errorbar([0], [mean], yerr=[[mean - low], [high - mean]], fmt="o", color=colour, capsize=8,
                   markersize=8, linewidth=2)
    right.set_xticks([0])
    right.set_xticklabels([f"{winner_label}\nminus uniform"])
    right.set_xlim(-1, 1)
    span = max(abs(low), abs(high), 1e-3) * 1.3
    right.set_ylim(-span, span)
    right.set_ylabel("difference, 95% interval")
    right.set_title(word)
    fig.suptitle(f"{role} {winner_label} against uniform: {mean:+.4f} [{low:+.4f}, {high:+.4f}]", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
