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
from sre2l_jax.data import sources
from sre2l_jax.data.transforms import resize_image
from sre2l_jax.formats import images as image_files
from sre2l_jax.metrics import read_jsonl
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
    fig, axes = plt.subplots(len(classes), cols, figsize=(cols * 0.9, len(classes) * 0.9 + 0.4),
                             squeeze=False)
    for r, c in enumerate(classes):
        row = images[labels == c][:cols]
        for j in range(cols):
            ax = axes[r][j]
            ax.axis("off")
            if j < len(row):
                img = row[j]
                ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=255)
        axes[r][0].set_title(names[c], fontsize=6, loc="left")
    if title:
        fig.suptitle(title, fontsize=9)
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
    real_src = sources.build_source(config.data, config.data.eval_split)
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


def results_rows(workdir: str) -> list[tuple[str, str]]:
    """(what, top-1) rows from the stage summaries that exist."""
    rows = []
    squeeze = read_json(os.path.join(workdir, "squeeze", "summary.json"))
    if squeeze and squeeze.get("top1") is not None:
        rows.append(("teacher (squeezed model), real test set", f"{squeeze['top1']:.2f}"))
    recover = read_json(os.path.join(workdir, "recover", "manifest.json"))
    if recover:
        rows.append(("teacher on its recovered images", f"{recover['summary']['teacher_accuracy']:.1f}"))
    val = read_json(os.path.join(workdir, "validate", "summary.json"))
    if val:
        std = val.get("top1_std")
        rows.append((f"SRe²L student ({val.get('student')}, IPC {val.get('ipc')}, soft labels)",
                     f"{val['top1']:.2f}" + (f" ± {std:.2f}" if std is not None else "")))
        for name in val.get("baselines") or ():
            entry = val[name]
            rows.append((f"baseline {name}", f"{entry['top1']:.2f} ± {entry.get('top1_std', 0):.2f}"))
    return rows


def results_table(workdir: str) -> str:
    rows = results_rows(workdir)
    width = max([len(r[0]) for r in rows] + [10])
    lines = [f"{'result':<{width}}  top-1 %", "-" * (width + 10)]
    lines += [f"{what:<{width}}  {value}" for what, value in rows]
    return "\n".join(lines)


def _variants_section(workdir: str) -> str:
    """The table of `python -m sre2l_jax.experiments.variants` (same teacher, same student recipe),
    if it ran."""
    results = read_json(os.path.join(workdir, "variants", "results.json"))
    if not results:
        return ""
    rows = "".join(
        f"<tr><td>{html.escape(r['name'])}</td><td>{r['top1']:.2f} ± {r['top1_std']:.2f}</td>"
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
    tsne_plot(config, workdir, images, labels, names, os.path.join(out, "tsne.png"))
    loss_curves(workdir, os.path.join(out, "curves.png"))
    rows = "".join(f"<tr><td>{html.escape(a)}</td><td>{html.escape(b)}</td></tr>"
                   for a, b in results_rows(workdir))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>SRe²L report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}img{{max-width:100%}}
td,th{{padding:4px 12px;border-bottom:1px solid #ddd}}</style></head><body>
<h1>SRe²L on {html.escape(config.data.name)}</h1>
<h2>Results</h2><table><tr><th>result</th><th>top-1 %</th></tr>{rows}</table>
<h2>Synthetic images (one row per class)</h2><img src="grid.png" alt="grid">
<h2>t-SNE of teacher features</h2><img src="tsne.png" alt="t-SNE">
<h2>Loss curves</h2><img src="curves.png" alt="curves">
{_variants_section(workdir)}
</body></html>"""
    path = os.path.join(out, "index.html")
    write_text_atomic(path, page)
    return path
