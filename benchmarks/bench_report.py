"""Markdown tables of bench.py's results (one function per table)."""

from __future__ import annotations


def _f(v, fmt="{:.1f}", none="–"):
    return none if v is None else fmt.format(v)


def _err(r: dict) -> str | None:
    return f"error: {r['error'][:200]!r}" if "error" in r else None


def _table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def machine_md(m: dict) -> list[str]:
    p = m["peak_fp32"]
    return ["## Machine", "",
            f"- CPU: {m['cpu']} (family/model {m['cpu_family_model']}), {m['cores']} cores usable; "
            f"SIMD flags: {', '.join(m['simd'])}",
            f"- Peak FP32 estimate: {p['assumption']}",
            f"- python {m['python']}, jax {m['jax']} (jaxlib {m['jaxlib']}), flax {m['flax']}, "
            f"torch {m['torch']}, torchvision {m['torchvision']}, grain {m['grain']}",
            f"- date {m['date']}; load average at start {m['load_average']}; "
            f"XLA_FLAGS='{m['xla_flags_env']}'",
            f"- command: `{m['command']}`", ""]


def _pct(gflops, peak):
    return _f(100 * gflops / peak if gflops and peak else None, "{:.0f}%")


def recover_md(rows: list[dict], peak: float) -> list[str]:
    out = ["## 1. Recovery step (one Adam iteration on a batch of 100)", "",
           "JAX: `recover.objective.run_iterations` over k iterations in one jit call (ms/iteration = "
           "total/k after a warm-up call). PyTorch: the authors' loop. GFLOP/iteration is XLA's cost "
           "analysis of the stock JAX step (the direct convolution's count; Winograd does fewer "
           "multiplications for the same result, so its GFLOP/s are 'effective'); the other rows "
           "divide the same count by their time. 'JAX (sre2l_jax)' is what the package runs on CPU: "
           "Winograd F(4×4, 3×3) for stride-1 3×3 convolutions, the canonical input gradient for the "
           "others (sre2l_jax/conv.py, SRE2L_CONV=winograd); 'JAX, canonical conv' is the previous "
           "default (SRE2L_CONV=canonical); 'JAX, stock conv grad' is XLA's own conv gradient "
           "(SRE2L_CONV=stock), the naive version.", ""]
    table = []
    for r in rows:
        jx, pt = r["jax"], r["torch"]
        flops = jx.get("flops_per_iter")
        impls = [("JAX, stock conv grad", jx), ("PyTorch", pt)]
        if "jax_winograd" in r:
            impls.append(("JAX, canonical conv", r["jax_canonical_conv"]))
            impls.append(("JAX (sre2l_jax)", r["jax_winograd"]))
        elif "jax_canonical_conv" in r:  # results written before the Winograd path
            impls.append(("JAX (sre2l_jax)", r["jax_canonical_conv"]))
        for impl, res in impls:
            if _err(res):
                table.append([r["case"], impl, _err(res), "", "", "", "", ""])
                continue
            gfs = flops / res["ms_per_iter"] * 1e3 / 1e9 if flops else None
            speed = pt["ms_per_iter"] / res["ms_per_iter"] if "ms_per_iter" in pt else None
            table.append([r["case"], impl, _f(res["ms_per_iter"], "{:.0f}"),
                          _f(res["images_iters_per_s"]), _f(flops and flops / 1e9),
                          _f(gfs), _pct(gfs, peak),
                          f"k={r['iters_timed']}" if impl == "PyTorch" else _f(speed, "{:.2f}×")])
    out += _table(["case", "impl", "ms/iter", "images·iter/s", "GFLOP/iter", "GFLOP/s", "% peak",
                   "JAX speed (PyTorch ms / JAX ms)"], table)
    return [*out, ""]


def scaling_md(s: dict) -> list[str]:
    out = ["## Scaling of the JAX low-res step (ResNet-18 width 64, the package default: Winograd)", "",
           "ratio to linear = measured ms / (reference ms × size / reference size); reference = the "
           "largest batch (by batch) or 32² (by pixels). > 1: the smaller case is less efficient.", ""]
    sweeps = (("by_batch", "batch (32²)", lambda r: r["batch"], lambda r: r["batch"] == 100),
              ("by_pixels", f"pixels (batch {s['by_pixels'][0]['batch']})", lambda r: r["res"] ** 2,
               lambda r: r["res"] == 32))
    for key, label, size, is_ref in sweeps:
        rows = s[key]
        ref = next((r for r in rows if is_ref(r) and "ms_per_iter" in r), None)
        table = []
        for r in rows:
            if _err(r):
                table.append([f"{r['batch']} @ {r['res']}²", _err(r), "", ""])
                continue
            lin = (r["ms_per_iter"] / (ref["ms_per_iter"] * size(r) / size(ref))) if ref else None
            table.append([f"{r['batch']} @ {r['res']}²", _f(r["ms_per_iter"], "{:.0f}"),
                          _f(r["ms_per_iter"] / r["batch"], "{:.2f}"), _f(lin, "{:.2f}")])
        out += [f"By {label}:", "", *_table(["batch @ res", "ms/iter", "ms/(image·iter)",
                                              "ratio to linear"], table), ""]
    return out


def student_md(s: dict, peak: float) -> list[str]:
    out = ["## 2. Student step (ResNet-18 low-res width 64, 32², batch 100, SGD, KD τ=20)", "",
           "`student.steps.online_step` (teacher forward + student forward/backward, soft=True) vs "
           "`student.steps.stored_step` (stored plan and logits, student only); `teacher_only` is "
           "`student.steps.label_batch` (what relabel runs per batch).", ""]
    if _err(s):
        return [*out, _err(s), ""]
    table = [[name, _f(s[name]["ms_per_step"], "{:.0f}"), _f(s[name]["images_per_s"]),
              _f(s[name]["flops_per_step"] and s[name]["flops_per_step"] / 1e9),
              _f(s[name]["gflops_per_s"]), _pct(s[name]["gflops_per_s"], peak)]
             for name in ("online", "stored", "teacher_only")]
    ratio = s["online"]["ms_per_step"] / s["stored"]["ms_per_step"]
    out += _table(["step", "ms/step", "images/s", "GFLOP/step", "GFLOP/s", "% peak"], table)
    return [*out, "", f"online / stored time: {ratio:.2f}×", ""]


def pipeline_md(p: dict) -> list[str]:
    out = ["## 3. Grain input pipeline vs squeeze step (Fashion-MNIST, `get_config('squeeze')`)", ""]
    if _err(p):
        return [*out, _err(p), ""]
    out += [f"batch {p['batch_size']}, {p['image_size']}², augment={p['augment']}, ResNet-18 "
            f"low-res width {p['width']}.", ""]
    out += _table(["measure", "images/s"], [
        ["`pipeline.train_iterator` alone", _f(p["pipeline_images_per_s"], "{:.0f}")],
        ["squeeze `train_step` on a device-resident batch", _f(p["step_images_per_s"], "{:.0f}")],
        ["squeeze `train_step` fed by the iterator (as squeeze.py runs)",
         _f(p["fed_step_images_per_s"], "{:.0f}")]])
    head = p["pipeline_images_per_s"] / p["step_images_per_s"]
    return [*out, "", f"pipeline / step throughput: {head:.1f}× "
            f"({'the pipeline is not the limit' if head > 1 else 'the PIPELINE IS THE LIMIT'})", ""]


def memory_md(rows: list[dict]) -> list[str]:
    out = ["## 4. Peak memory of a recovery step (batch 100; one process per case)", "",
           "Host RSS = `ru_maxrss`; 'before' is the high-water mark after model and batch set-up, "
           "before compiling/running the step.", ""]
    table = []
    for r in rows:
        for impl in ("jax", "torch"):
            res = r[impl]
            if _err(res):
                table.append([r["case"], impl, _err(res), "", ""])
                continue
            dev = res.get("device_memory")
            dev_s = _f(dev and dev.get("peak_bytes_in_use") and dev["peak_bytes_in_use"] / 2**20,
                       "{:.0f} MiB", "– (CPU)")
            table.append([r["case"], "JAX" if impl == "jax" else "PyTorch",
                          _f(res["rss_setup_mib"], "{:.0f}"), _f(res["rss_peak_mib"], "{:.0f}"), dev_s])
    return [*out, *_table(["case", "impl", "RSS before (MiB)", "peak RSS (MiB)", "device peak"], table), ""]


def options_md(o: dict) -> list[str]:
    out = [f"## 5. Options (JAX low-res recovery step, batch {o.get('batch', 100)})", "",
           "Each row against the default measured in this block (not section 1's run).", ""]
    base = {}
    for r in o["precision"]:
        if r["dtype"] == "float32" and "ms_per_iter" in r:
            base[r["res"]] = r["ms_per_iter"]

    def row(name, setting, r, ref):
        if _err(r):
            return [name, setting, _err(r), ""]
        ms = r["ms_per_batch_iter"]
        return [name, setting, _f(ms, "{:.0f}"), _f(ref / ms if ref else None, "{:.2f}×")]

    xla = o["xla_flags"]
    ref = next((r.get("ms_per_iter") for r in xla if r["option"] == "default"), None)
    table = [row(f"XLA: {r['option']}", f"`{r['xla_flags'] or '(none)'}`", r, ref) for r in xla]
    table += [row(f"dtype {r['dtype']}", f"{r['res']}²", r, base.get(r["res"])) for r in o["precision"]]
    ref1 = next((r.get("ms_per_batch_iter") for r in o["batches_per_call"] if r["nbatch"] == 1), None)
    table += [row("batches per call", f"{r['nbatch']} (vmap)", r, ref1) for r in o["batches_per_call"]]
    for r in o.get("canonical_conv", []):
        wino = r.get("patch") == "winograd"
        name = "Winograd F(4×4, 3×3) + canonical conv (package default)" if wino else \
            "canonical input-grad conv"
        table.append(row(name, f"{r['res']}² (SRE2L_CONV={'winograd' if wino else 'canonical'})",
                         r, base.get(r["res"])))
    tt = o.get("torch_threads", [])
    ref_t = next((r.get("ms_per_iter") for r in tt if r is tt[0]), None)
    for r in tt:
        r.setdefault("ms_per_batch_iter", r.get("ms_per_iter"))
        table.append(row("PyTorch reference: threads", str(r["threads"]), r, ref_t))
    out += _table(["option", "setting", "ms per batch-iteration", "speed-up vs default"], table)
    out += ["", "Defaults: no XLA_FLAGS, float32, 1 batch per call, stock model; PyTorch: "
            "torch.set_num_threads(os.cpu_count()) (first PyTorch row)."]
    end = o.get("default_at_end", {})
    if ref and "ms_per_iter" in end:
        out.append(f"Default re-measured at the end of the block: {end['ms_per_iter']:.0f} ms "
                   f"({end['ms_per_iter'] / ref:.2f}× the start; far from 1 = the machine's load "
                   "changed during the block, distrust the ratios).")
    return [*out, ""]


def train_md(t: dict) -> list[str]:
    out = ["## Training steps: squeeze and student, JAX vs PyTorch (ms/step, same run)", "",
           "squeeze: SGD step of the low-res ResNet-18 in training mode (CE, momentum, weight "
           "decay); student (the default recipe): frozen teacher's logits + MSE + 0.025·CE + AdamW + "
           "EMA 0.99 of the parameters, JAX with crops/flip/CutMix "
           "inside the step, PyTorch on a pre-cropped batch with CutMix (its DataLoader crops). "
           "JAX runs as the package does on CPU (config.cpu_devices = 2): the squeeze batch split "
           "over two simulated devices, students two at a time, one per device (ms per student "
           "step); 'JAX, 1 device' is one device doing everything. "
           "Speed = PyTorch ms / JAX ms (> 1: JAX faster).", ""]
    rows = []
    for r in t["steps"]:
        for step in ("squeeze", "student"):
            pt = r[step]["torch"]
            cells = []
            for key in ("jax", "jax_1dev"):
                jx = r[step].get(key, {"error": "not run"})
                bad = _err(jx) or _err(pt)
                cells += [bad or _f(jx["ms_per_step"]),
                          "" if bad else _f(pt["ms_per_step"] / jx["ms_per_step"], "{:.2f}×")]
            rows.append([r["case"], step, r[step]["batch"], _err(pt) or _f(pt["ms_per_step"]), *cells])
    out += _table(["case", "step", "batch", "PyTorch ms", "JAX ms", "JAX speed", "JAX, 1 device ms",
                   "JAX, 1 device speed"], rows)
    loops = t.get("loops", {})
    if loops and not _err(loops):
        default = t["steps"][0]
        bare_sq = 1000 / default["squeeze"]["jax"]["ms_per_step"]
        bare_st = 1000 / default["student"]["jax"]["ms_per_step"]
        student = f"validate (SRe²L student, batch {default['student']['batch']})"
        squeeze_loop = f"squeeze (batch {default['squeeze']['batch']})"
        out += ["", "The real loops at the default sizes (data pipeline, logging, checkpoints; "
                "steps/s from metrics.jsonl) against the bare step above:", "",
                *_table(["loop", "loop steps/s", "bare step steps/s", "loop / bare"],
                        [[squeeze_loop, _f(loops["squeeze_steps_per_s"], "{:.2f}"),
                          _f(bare_sq, "{:.2f}"), _f(loops["squeeze_steps_per_s"] / bare_sq, "{:.2f}")],
                         [student, _f(loops["validate_steps_per_s"], "{:.2f}"),
                          _f(bare_st, "{:.2f}"), _f(loops["validate_steps_per_s"] / bare_st, "{:.2f}")]])]
    return [*out, ""]


def markdown(machine: dict, results: dict) -> str:
    peak = machine["peak_fp32"]["gflops"]
    lines = [f"# sre2l_jax benchmarks ({results['mode']} mode)", "", *machine_md(machine)]
    if "train" in results:
        lines += train_md(results["train"])
    if "recover" in results:
        lines += recover_md(results["recover"], peak)
    if "scaling" in results:
        lines += scaling_md(results["scaling"])
    if "student" in results:
        lines += student_md(results["student"], peak)
    if "pipeline" in results:
        lines += pipeline_md(results["pipeline"])
    if "memory" in results:
        lines += memory_md(results["memory"])
    if "options" in results:
        lines += options_md(results["options"])
    return "\n".join(lines)
