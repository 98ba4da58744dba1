"""report.md and plots for an evaluation: the table people read and the pictures they look at."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

GRID_METHODS = ("base", "nearest", "lincomb", "ridge", "kernel", "diffusion", "trained")
COLUMNS = (
    ("id_sim_mean", "ID sim", "{:.3f}"),
    ("normalised_fidelity", "norm. fidelity", "{:.2f}"),
    ("top1", "top-1 /100", "{:.2f}"),
    ("attr_error", "attr. error", "{:.3f}"),
    ("prompt_fidelity", "prompt fid.", "{:.2f}"),
    ("frechet", "Frechet", "{:.3f}"),
    ("time_to_lora_ms", "time-to-LoRA ms", "{:,.1f}"),
    ("bytes_per_subject", "bytes/subject", "{:,.0f}"),
)


def _cell(row: dict, key: str, fmt: str) -> str:
    value = row.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    text = fmt.format(value)
    ci = row.get(f"{key}_ci95")
    return f"{text} ± {ci:.3f}" if ci else text


ROW_ORDER = ("base", "nearest", "lincomb", "ridge", "kernel", "optimize", "diffusion")


def _row_rank(name: str) -> tuple:
    """base, the baselines, the default prior, its variants, then the upper bound and the rest."""
    if name in ROW_ORDER:
        return (ROW_ORDER.index(name), "")
    if name.startswith("diffusion-"):
        return (len(ROW_ORDER), name)
    return (len(ROW_ORDER) + (1 if name == "trained" else 2), name)


def table(rows: dict) -> str:
    """The methods in one order everywhere (results.json is written with sorted keys)."""
    head = "| method | " + " | ".join(c[1] for c in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 1)]
    for name, row in sorted(rows.items(), key=lambda item: _row_rank(item[0])):
        if row is None or row.get("absent"):
            lines.append(
                f"| {name} | " + " | ".join(["absent"] + ["-"] * (len(COLUMNS) - 1)) + " |"
            )
            continue
        lines.append(f"| {name} | " + " | ".join(_cell(row, c[0], c[2]) for c in COLUMNS) + " |")
    return "\n".join(lines)


def write_report(out: Path, results: dict, ev) -> Path:
    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    cfg = results["config"]
    judge = cfg["embedder_eval"].split("/")[0]
    made = [
        fidelity_vs_time(
            results["methods"],
            plots / "fidelity-vs-time.png",
            judge,
            ablation_methods(results["ablations"]),
        ),
        image_grid(ev, plots / "grid.png"),
        ablation_plot(results["ablations"], plots / "ablations.png", judge),
    ]
    parts = [
        f"# lorasynth evaluation (mini-world, {cfg.get('domain', 'faces')})",
        "",
        summary(results),
        "",
        *main_tables(results),
    ]
    shuffled = results["ablations"].get("shuffled_identity")
    if shuffled and not shuffled.get("absent"):
        parts += [
            "",
            "## Sanity check: a shuffled-identity LoRA (someone else's trained LoRA)",
            "",
            table({"shuffled": shuffled}),
            "",
            "It must score near `base`; if it did not, the metric would not measure identity.",
        ]
    for key, label in (("prior_steps", "sampling steps"), ("prior_guidance", "guidance scale")):
        sweep = results["ablations"].get(key)
        if sweep:
            parts += [
                "",
                f"## Default prior vs {label}",
                "",
                f"| {label} | ID sim | sampling ms |",
                "|---|---|---|",
            ]
            parts += [
                f"| {k} | {v['id_sim_mean']:.3f} ± {v['id_sim_ci95']:.3f} | {v['sample_ms']:.1f} |"
                for k, v in sweep.items()
            ]
    parts += curve_tables(results["ablations"])
    for note in results["ablations"].get("not_built", []):
        parts.append(f"\n- not in this report: {note}")
    for note in results["ablations"].get("other_base", []):
        parts.append(f"\n- caution: {note}")
    parts += ["", *[f"![{p.stem}](plots/{p.name})" for p in made if p is not None], ""]
    path = out / "report.md"
    path.write_text("\n".join(parts))
    return path


CURVES = (
    ("representation", "What the prior models (VAE latent vs PCA coefficients vs raw vectors)"),
    ("latent_size", "Latent size: directions the prior diffuses over (VAE latent or basis)"),
    ("bank_size", "Bank size: subjects the prior was trained on (scaling curve)"),
    ("target", "Prediction target (eps vs x0 vs v)"),
    ("anchor", "Anchor: the prior alone (none) vs around lincomb's LoRA (lincomb)"),
)


def curve_tables(ablations: dict) -> list[str]:
    """One small table per ablation curve (the default prior is one of its points)."""
    parts = []
    for key, title in CURVES:
        curve = ablations.get(key)
        if not curve:
            continue
        parts += ["", f"## {title}", "", "| value | method | ID sim | norm. fidelity | top-1 |"]
        parts.append("|---|---|---|---|---|")
        for value, row in curve.items():
            parts.append(
                f"| {value} | {row['method']} | {_cell(row, 'id_sim_mean', '{:.3f}')} | "
                f"{_cell(row, 'normalised_fidelity', '{:.2f}')} | {_cell(row, 'top1', '{:.2f}')} |"
            )
    return parts


def ablation_plot(ablations: dict, path: Path, judge: str = "mini-eval") -> Path | None:
    """ID similarity (± 95% interval) along each ablation curve; numeric curves on log2 axes."""
    curves = [(key, title) for key, title in CURVES if ablations.get(key)]
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3.4), dpi=120, squeeze=False)
    for ax, (key, title) in zip(axes[0], curves, strict=True):
        curve = ablations[key]
        values = list(curve)
        sims = [curve[v]["id_sim_mean"] for v in values]
        cis = [curve[v].get("id_sim_ci95") or 0.0 for v in values]
        numeric = all(v.isdigit() for v in values)
        xs = [int(v) for v in values] if numeric else list(range(len(values)))
        ax.errorbar(xs, sims, yerr=cis, marker="o", capsize=3)
        if numeric:
            ax.set_xscale("log", base=2)
        ax.set_xticks(xs, values)
        ax.set_title(title.split(" (")[0].split(":")[0], fontsize=9)
        ax.set_ylabel(f"ID similarity ({judge})", fontsize=8)
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def summary(results: dict) -> str:
    """The paragraph under a report's title: who, which prompts and embedders, how long."""
    cfg = results["config"]
    return (
        f"{results['n_identities']} held-out identities, prompts: {', '.join(repr(p) for p in cfg['prompts'])}; "
        f"conditioning embedder `{cfg['embedder_condition']}`, judged by `{cfg['embedder_eval']}` against "
        f"{cfg['references']} reference renders per identity that condition nothing. Mean ± 95% interval. "
        f"Took {results.get('seconds', 0):,.0f} s."
    )


def main_tables(results: dict, level: str = "##") -> list[str]:
    """The one-photo table and the several-photo tables, as report lines."""
    parts = [f"{level} One photo", "", table(results["methods"])]
    for key, rows in results["ablations"].items():
        if key.startswith("photos_") and isinstance(rows, dict):
            parts += [
                "",
                f"{level} {key.split('_')[1]} photos (embeddings averaged)",
                "",
                table(rows),
            ]
    return parts


def write_combined_report(out: Path, outcome: dict[str, dict | str]) -> Path:
    """OUT/report.md: each domain's tables (from OUT/<domain>/), or why a domain is missing."""
    parts = [
        "# lorasynth evaluation (mini-world, every domain)",
        "",
        "The same methods, metrics and settings in each domain; each domain is judged by its own "
        "evaluation embedder, so ID similarities compare methods within a domain, not across "
        "domains. Full reports, plots and results.json: one folder per domain.",
    ]
    for name, results in outcome.items():
        parts += ["", f"## {name}", ""]
        if isinstance(results, str):
            parts.append(f"Not evaluated: {results}.")
            continue
        parts += [
            summary(results),
            f"Full report: [{name}/report.md]({name}/report.md).",
            "",
            *main_tables(results, "###"),
        ]
        if (out / name / "plots" / "grid.png").is_file():
            parts += ["", f"![{name} grid]({name}/plots/grid.png)"]
    path = out / "report.md"
    path.write_text("\n".join(parts) + "\n")
    return path


def ablation_methods(ablations: dict) -> set[str]:
    """Methods that are only points of an ablation curve (the default prior is not one)."""
    return {
        point["method"]
        for group in ablations.values()
        if isinstance(group, dict)
        for point in group.values()
        if isinstance(point, dict) and point.get("method", "diffusion") != "diffusion"
    }


def fidelity_vs_time(
    rows: dict, path: Path, judge: str = "mini-eval", muted: set[str] = frozenset()
) -> Path | None:
    """Each method's ID similarity against its time-to-LoRA. `muted` methods (the ablation
    priors, a dozen points within a few ms of the default) are drawn small, grey and unnamed,
    so the methods a user chooses between stay readable."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [
        (n, r["time_to_lora_ms"], r["id_sim_mean"])
        for n, r in rows.items()
        if r and not r.get("absent") and r.get("time_to_lora_ms", 0) == r.get("time_to_lora_ms", 0)
    ]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(8, 4), dpi=120)
    # Methods sit within a few ms of each other, so they are named in a legend, not beside
    # their points, and in the legend they run from best to worst.
    for name, ms, sim in sorted(points, key=lambda p: -p[2]):
        if name not in muted:
            ax.scatter(max(ms, 0.1), sim, s=40, zorder=2, label=f"{name} ({sim:.3f})")
    grey = [(max(ms, 0.1), sim) for name, ms, sim in points if name in muted]
    if grey:
        xs, ys = zip(*grey, strict=True)
        ax.scatter(xs, ys, s=14, color="0.65", zorder=1, label="ablation priors (their curves)")
    ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=7, frameon=False)
    ax.set_xscale("log")
    ax.set_xlabel("time-to-LoRA (ms, log scale; base = no LoRA)")
    ax.set_ylabel(f"ID similarity ({judge})")
    ax.set_title("Identity fidelity vs time per method")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def image_grid(ev, path: Path, identities: int = 12, scale: int = 3) -> Path | None:
    """Rows: identities; columns: a reference render, then the first prompt's image per method."""
    n = min(identities, len(ev.seeds))
    p = len(ev.cfg.prompts)
    columns = [
        ev.reference_images.reshape(len(ev.seeds), -1, *ev.reference_images.shape[1:])[:n, 0]
    ]
    names = ["reference"]
    for method in GRID_METHODS:
        cache = ev.cache_path("photos1", method)
        if cache.is_file():
            with np.load(cache, allow_pickle=False) as data:
                columns.append(data["images"][: n * p : p])
            names.append(method)
    if len(columns) < 2:
        return None
    side = max(col.shape[1] for col in columns)
    columns = [np.stack([_resize(im, side) for im in col]) for col in columns]
    grid = np.concatenate([np.concatenate(list(col), axis=0) for col in columns], axis=1)
    image = Image.fromarray(grid).resize(
        (grid.shape[1] * scale, grid.shape[0] * scale), Image.Resampling.NEAREST
    )
    image.save(path)
    (path.with_suffix(".txt")).write_text("columns: " + " | ".join(names) + "\n")
    return path


def _resize(image: np.ndarray, side: int) -> np.ndarray:
    if image.shape[0] == side:
        return image
    return np.asarray(Image.fromarray(image).resize((side, side), Image.Resampling.NEAREST))
