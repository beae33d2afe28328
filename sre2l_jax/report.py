"""`W/report/`: image grid, t-SNE of synthetic vs real features, loss curves, results table, index.html.

The pictures a researcher checks first: do the synthetic images look like their classes (paper
Fig. 3-5), do their teacher features fall inside the real class clusters (Appendix C), did every
stage's loss go down.
"""

from __future__ import annotations

import html
import os

import jax
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from sre2l_jax import teachers
from sre2l_jax.data import mosaics, sources, splits
from sre2l_jax.data.transforms import EvalResize, resize_image
from sre2l_jax.formats import images as image_files
from sre2l_jax.metrics import mean_std_text, read_jsonl
from sre2l_jax.stage_state import read_json, write_text_atomic


def synthetic_arrays(workdir: str):
    """(uint8 images, labels, class folders) of the set recovered in `workdir`."""
    images_dir = os.path.join(workdir, "recover", "images")
    manifest = image_files.read_manifest(images_dir)
    if manifest is None:
        raise FileNotFoundError(f"no recover/manifest.json in {workdir}; run the recover stage first")
    return image_files.read_set(images_dir, manifest["class_folders"],
                                manifest["config"]["data"]["channels"])


def image_grid(images: np.ndarray, labels: np.ndarray, names: list[str], path: str,
               max_per_class: int = 10, title: str = "") -> None:
    """One row per class, up to `max_per_class` images each (the paper's Fig. 3-5 layout)."""
    classes = sorted(set(labels.tolist()))
    cols = min(max_per_class, max(int(np.sum(labels == c)) for c in classes))
    h, w, ch = images.shape[1:]
    gap = max(1, h // 14)
    # One picture drawn once: a subplot per image cost ~2 s per grid (matplotlib axes setup).
    mosaic = np.full((len(classes) * (h + gap), cols * (w + gap), ch), 255, np.uint8)
    for r, c in enumerate(classes):
        for j, img in enumerate(images[labels == c][:cols]):
            mosaic[r * (h + gap):r * (h + gap) + h, j * (w + gap):j * (w + gap) + w] = img
    fig, ax = plt.subplots(figsize=(cols * 0.9 + 1.2, len(classes) * 0.9 + 0.4))
    ax.imshow(mosaic[..., 0] if ch == 1 else mosaic, cmap="gray", vmin=0, vmax=255,
              interpolation="nearest")
    ax.set_yticks([r * (h + gap) + h / 2 for r in range(len(classes))], [names[c] for c in classes],
                  fontsize=6)
    ax.set_xticks([])
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _features(model, variables, images: np.ndarray, mean, std, batch: int = 250) -> np.ndarray:
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False, return_features=True)[1])
    x = (images.astype(np.float32) / 255.0 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.concatenate([np.asarray(apply(variables, x[i:i + batch])) for i in range(0, len(x), batch)])


def tsne_plot(config, workdir: str, images, labels, names, path: str, real_per_class: int = 50) -> None:
    """t-SNE of the teacher's penultimate features: real test images (dots) vs synthetic (stars)."""
    from sklearn.manifold import TSNE

    model = teachers.load(config, workdir)
    meta = model.meta
    real_src = splits.build_source(config.data, config.data.eval_split)
    all_labels = sources.source_labels(real_src)
    rng = np.random.default_rng(0)
    pick = np.concatenate([rng.permutation(np.flatnonzero(all_labels == c))[:real_per_class]
                           for c in range(meta["num_classes"])])
    real = [real_src[int(i)] for i in pick]
    size = images.shape[1]
    real_x = np.stack([r["image"] if r["image"].shape[0] == size else resize_image(r["image"], (size, size))
                       for r in real])
    real_y = np.asarray([r["label"] for r in real])
    feats = _features(model.models[0], model.variables[0], np.concatenate([real_x, images]),
                      meta["mean"], meta["std"])
    emb = TSNE(n_components=2, init="pca", random_state=0,
               perplexity=min(30, max(5, len(feats) // 10))).fit_transform(feats)
    n_real = len(real_x)
    fig, ax = plt.subplots(figsize=(7, 6))
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    for c in range(len(names)):
        color = cmap(c % cmap.N)
        m = real_y == c
        ax.scatter(emb[:n_real][m, 0], emb[:n_real][m, 1], s=6, color=color, alpha=0.35)
        m = labels == c
        ax.scatter(emb[n_real:][m, 0], emb[n_real:][m, 1], s=60, marker="*", color=color,
                   edgecolors="black", linewidths=0.5, label=names[c][:18])
    ax.set_title("t-SNE of teacher features: real test images (dots) vs synthetic (stars)", fontsize=9)
    ax.legend(fontsize=6, markerscale=0.6, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def loss_curves(workdir: str, path: str) -> None:
    stages = [s for s in ("squeeze", "recover", "validate")
              if read_jsonl(os.path.join(workdir, s, "metrics.jsonl"))]
    fig, axes = plt.subplots(1, max(1, len(stages)), figsize=(5 * max(1, len(stages)), 3.5), squeeze=False)
    for ax, stage in zip(axes[0], stages):
        rows = read_jsonl(os.path.join(workdir, stage, "metrics.jsonl"))
        for key in ("loss", "ce", "bn"):
            # validate logs several runs into one file; the curve shown is the first SRe²L student.
            pts = [(r["step"], r[key]) for r in rows
                   if key in r and r.get("run", "sre2l/seed0") == "sre2l/seed0" and "eval_top1" not in r]
            if pts:
                ax.plot(*zip(*pts), label=key, lw=1)
        ax.set_title(stage)
        ax.set_xlabel("step")
        ax.set_yscale("log")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _entry_text(entry: dict, n_seeds: int, key: str = "top1") -> str:
    if key not in entry:
        return "—"
    return mean_std_text(entry[key], entry.get(f"{key}_std", 0.0), n_seeds)


def results_rows(workdir: str) -> list[tuple[str, str, str]]:
    """(what, test top-1, holdout top-1) rows from the stage summaries that exist."""
    rows = []
    squeeze = read_json(os.path.join(workdir, "squeeze", "summary.json"))
    if squeeze and squeeze.get("top1") is not None:
        holdout = squeeze.get("holdout_top1")
        rows.append(("teacher (squeezed model)", f"{squeeze['top1']:.2f}",
                     "—" if holdout is None else f"{holdout:.2f}"))
    recover = read_json(os.path.join(workdir, "recover", "manifest.json"))
    if recover:
        rows.append(("teacher on its recovered images", f"{recover['summary']['teacher_accuracy']:.1f}", "—"))
    val = read_json(os.path.join(workdir, "validate", "summary.json"))
    if val:
        n = len(val.get("seeds") or [0])
        rows.append((f"distilled-set student ({val.get('student')}, IPC {val.get('ipc')}, soft labels)",
                     _entry_text(val, n), _entry_text(val, n, "holdout_top1")))
        for name in val.get("baselines") or ():
            rows.append((f"baseline {name}", _entry_text(val[name], n),
                         _entry_text(val[name], n, "holdout_top1")))
        for key, what in (("ior", "DD-Ranking IOR (distilled − random real, soft labels, points)"),
                          ("hlr", "DD-Ranking HLR (full data − distilled, hard labels, points)"),
                          ("lrs", "DD-Ranking LRS (0-1, higher is better)")):
            value = (val.get("dd_ranking") or {}).get(key)
            if value is not None:
                rows.append((what, f"{value:+.2f}" if key != "lrs" else f"{value:.4f}", "—"))
    return rows


def results_table(workdir: str) -> str:
    rows = results_rows(workdir)
    width = max([len(r[0]) for r in rows] + [10])
    lines = [f"{'result':<{width}}  {'test top-1 %':<16}  holdout top-1 %", "-" * (width + 36)]
    lines += [f"{what:<{width}}  {test:<16}  {holdout}" for what, test, holdout in rows]
    return "\n".join(lines)


def per_class_plot(workdir: str, names: list[str], path: str) -> bool:
    """Per-class test accuracy of the SRe²L student beside the random-real (soft) student."""
    val = read_json(os.path.join(workdir, "validate", "summary.json"))
    if not val or "real_soft" not in val or "per_class_top1" not in val:
        return False
    entries = [("SRe²L", val["per_class_top1"]), ("random real, soft", val["real_soft"]["per_class_top1"])]
    xs = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(names)), 3.5))
    for i, (label, accs) in enumerate(entries):
        ax.bar(xs + (i - 0.5) * 0.4, [a or 0 for a in accs], 0.4, label=label)
    ax.set_xticks(xs, [n[:12] for n in names], rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("test top-1 %")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def real_subset_grid(config, workdir: str, labels: np.ndarray, names: list[str], path: str) -> bool:
    """The random real subset the `real_*` baselines of the first seed train on, as a grid (as
    mosaics or bit-packed images under multi-formation or bit planes, like the synthetic grid)."""
    from sre2l_jax import validate

    if not set(config.validate.baselines) & {"real_soft", "real_hard"}:
        return False
    per_stored = mosaics.images_per_stored(config.student.multi_formation, config.student.bit_depth)
    counts = np.bincount(labels, minlength=config.data.num_classes) * per_stored
    source = splits.build_source(config.data, "train")
    subset = validate.baseline_mosaics(config, source, counts, config.validate.seeds[0])
    fit = EvalResize(config.data.image_size, config.data.image_size)  # as the students see them
    images = np.stack([fit.map(subset[i])["image"] for i in range(len(subset))])
    real_labels = sources.source_labels(subset)
    image_grid(images, real_labels, names, path, title="random real subset (the baselines' images)")
    return True


def _variants_section(workdir: str) -> str:
    """The table of `python -m sre2l_jax.experiments.variants` (same teacher, same student recipe),
    if it ran."""
    results = read_json(os.path.join(workdir, "variants", "results.json"))
    if not results:
        return ""
    rows = "".join(
        f"<tr><td>{html.escape(r['name'])}</td>"
        f"<td>{mean_std_text(r['top1'], r['top1_std'], len(r['per_seed']))}</td>"
        f"<td>{', '.join(f'{t:.2f}' for t in r['per_seed'])}</td></tr>" for r in results)
    names = [r["name"] for r in results
             if os.path.exists(os.path.join(workdir, "variants", f"grid_{r['name']}.png"))]
    grids = "".join(f'<h3>{html.escape(n)}</h3><img src="../variants/grid_{html.escape(n)}.png">'
                    for n in names)
    return (f"<h2>SRe²L and later variants (same teacher, same student recipe)</h2><table><tr>"
            f"<th>method</th><th>top-1 % (mean ± std)</th><th>per seed</th></tr>{rows}</table>{grids}")


def write_report(config, workdir: str) -> str:
    """Write every figure and `index.html`; returns the index path."""
    out = os.path.join(workdir, "report")
    os.makedirs(out, exist_ok=True)
    images, labels, names = synthetic_arrays(workdir)
    image_grid(images, labels, names, os.path.join(out, "grid.png"),
               title=f"SRe²L synthetic images, {config.data.name}")
    real = real_subset_grid(config, workdir, labels, names, os.path.join(out, "real_grid.png"))
    per_class = per_class_plot(workdir, names, os.path.join(out, "per_class.png"))
    tsne_plot(config, workdir, images, labels, names, os.path.join(out, "tsne.png"))
    loss_curves(workdir, os.path.join(out, "curves.png"))
    rows = "".join(f"<tr><td>{html.escape(a)}</td><td>{html.escape(b)}</td><td>{html.escape(c)}</td></tr>"
                   for a, b, c in results_rows(workdir))
    grids = '<img src="grid.png" alt="grid" style="max-width:49%">' + (
        '<img src="real_grid.png" alt="random real subset" style="max-width:49%">' if real else "")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>SRe²L report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}img{{max-width:100%}}
td,th{{padding:4px 12px;border-bottom:1px solid #ddd}}</style></head><body>
<h1>SRe²L on {html.escape(config.data.name)}</h1>
<h2>Results</h2><table><tr><th>result</th><th>test top-1 %</th><th>holdout top-1 %</th></tr>{rows}
</table>
<h2>Synthetic images (left) and the random real subset of the baselines (right)</h2>{grids}
{'<h2>Per-class test accuracy</h2><img src="per_class.png" alt="per class">' if per_class else ""}
<h2>t-SNE of teacher features</h2><img src="tsne.png" alt="t-SNE">
<h2>Loss curves</h2><img src="curves.png" alt="curves">
{_variants_section(workdir)}
</body></html>"""
    path = os.path.join(out, "index.html")
    write_text_atomic(path, page)
    return path
