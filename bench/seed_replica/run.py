#!/usr/bin/python3
"""MedRegA at its real widths, per layer, beside PyTorch, and projected to the real model.

  bench/seed_replica/run.py BUILD_DIR [--model DIR] [--threads 1,2] [--formats auto,int8,int4]
                            [--vision-formats auto] [--decode-tokens 32] [--repeat 1]

The seed replica (tools/reference/internvl_ref.py --configs seed: InternViT-6B-448px-V1-2 +
Yi-34B widths, 2 + 2 layers, BF16, 448 px; the one engine_seed_replica_test generates under
BUILD_DIR/engine_fixtures-seed/seed) runs through `firstread_engine_cli infer --json` for each
weight format and thread count, alternating with PyTorch 1.13 (tools/reference/bench_ref.py run:
float32 compute, KV cache for decode) on the same weights in the same run. Per-layer times are the
replica's phase time divided by its layer count; the projection multiplies by the work ratio of
`firstread model plan` for tests/data/medrega against the replica (vision GFLOP per tile, prefill
GFLOP per token, decode bytes per token), i.e. it assumes the per-layer cost of the cut model.
The MedRegA study is 1 tile + a 300-token prompt + a 300-token report. Prints a Markdown table.
Not a CTest test (minutes); check `uptime` first: the figures are only as quiet as the machine.
"""
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
REF = os.path.join(ROOT, "tools", "reference")


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


def plan(cli, d, weights="auto", vision="auto"):
    return json.loads(sh([cli, "model", "plan", d, "--weights", weights, "--vision-weights", vision, "--json"]))


def engine_run(cli, d, question, threads, weights, vision, n_new):
    cmd = [cli, "infer", "--model", d, "--image", os.path.join(d, "test_image.png"), "--prompt", question,
           "--max-new-tokens", str(n_new), "--threads", str(threads), "--weights", weights, "--json"]
    if vision != "auto":
        cmd += ["--vision-weights", vision]
    t0 = time.time()
    j = json.loads(sh(cmd))
    j["wall_s"] = time.time() - t0
    return j


def main(argv):
    if len(argv) < 2:
        print(__doc__)
        return 2
    build = argv[1]
    opts = {"--model": os.path.join(build, "engine_fixtures-seed", "seed"), "--threads": "1,2",
            "--formats": "auto,int8,int4", "--vision-formats": "auto", "--decode-tokens": "32", "--repeat": "1"}
    i = 2
    while i < len(argv):
        opts[argv[i]] = argv[i + 1]
        i += 2
    d = opts["--model"]
    cli = os.path.join(build, "engine", "firstread_engine_cli")
    if not os.path.exists(os.path.join(d, "config.json")):
        print("generating the seed replica in", d, file=sys.stderr)
        out = os.path.dirname(d)
        sh(["/usr/bin/python3", os.path.join(REF, "internvl_ref.py"), out, "--configs", "seed", "--dtype", "bf16",
            "--new-tokens", "8"])
        sh(["/usr/bin/python3", os.path.join(REF, "shard.py"), d, "5"])
    ref = json.load(open(os.path.join(d, "reference.json")))
    question = ref["question"]
    threads = [int(t) for t in opts["--threads"].split(",")]
    n_new = int(opts["--decode-tokens"])
    cfg = json.load(open(os.path.join(d, "config.json")))
    vl, dl = cfg["vision_config"]["num_hidden_layers"], cfg["llm_config"]["num_hidden_layers"]
    real = os.path.join(ROOT, "tests", "data", "medrega")
    load = open("/proc/loadavg").read().split()[:3]
    print("load average before: %s; replica %s (%d ViT + %d decoder layers)" % (" ".join(load), d, vl, dl))

    rows = []
    prompt_tokens = None
    for fmt in opts["--formats"].split(","):
        for vfmt in opts["--vision-formats"].split(","):
            p_rep, p_real = plan(cli, d, fmt, vfmt), plan(cli, real, fmt, vfmt)
            for t in threads:
                best = None
                for _ in range(int(opts["--repeat"])):
                    j = engine_run(cli, d, question, t, fmt, vfmt, n_new)
                    tm = j["timings_ms"]
                    if best is None or tm["vision"] + tm["prefill"] < best["timings_ms"]["vision"] + best["timings_ms"]["prefill"]:
                        best = j
                tm = best["timings_ms"]
                prompt_tokens = len(best["prompt_token_ids"])
                rows.append({"who": "firstread", "weights": fmt, "vision_weights": vfmt, "threads": t,
                             "vision_ms": tm["vision"], "prefill_ms": tm["prefill"],
                             "tok_s": tm["tokens_per_second"], "p_rep": p_rep, "p_real": p_real})
                print("  engine %s/%s %d thr: vision %.0f ms, prefill %.0f ms (%d tokens), decode %.2f tok/s" % (
                    fmt, vfmt, t, tm["vision"], tm["prefill"], prompt_tokens, tm["tokens_per_second"]),
                    file=sys.stderr)
        # PyTorch after each format, so both see the same stretch of machine load.
        pt = json.loads(sh(["/usr/bin/python3", os.path.join(REF, "bench_ref.py"), "run", d, "--threads",
                            ",".join(map(str, threads)), "--prefill-tokens", str(prompt_tokens or 300),
                            "--decode-tokens", "8"]))
        p_rep, p_real = plan(cli, d, "f32", "f32"), plan(cli, real, "f32", "f32")
        for t, r in pt["threads"].items():
            rows.append({"who": "PyTorch %s" % pt["torch"], "weights": "f32", "vision_weights": "f32",
                         "threads": int(t), "vision_ms": r["vision_ms"], "prefill_ms": r["prefill_ms"],
                         "tok_s": r["decode_tokens_per_second"], "p_rep": p_rep, "p_real": p_real})

    load = open("/proc/loadavg").read().split()[:3]
    print("load average after: %s\n" % " ".join(load))
    print("| engine | decoder / vision | threads | vision ms / layer | prefill ms / layer (%d tok) | decode ms / token / layer |"
          " MedRegA vision s | prefill 300 tok s | decode tok/s | study s (1 tile + 300 + 300) |" % (prompt_tokens or 0))
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        pr, pl = r["p_rep"], r["p_real"]
        v_real = r["vision_ms"] / 1000 * pl["vision_gflop_per_tile"] / pr["vision_gflop_per_tile"]
        pf_real = r["prefill_ms"] / 1000 * pl["prefill_gflop_per_token"] / pr["prefill_gflop_per_token"] * 300 / prompt_tokens
        dec_s = (1 / r["tok_s"]) * pl["decode_bytes_per_token"] / pr["decode_bytes_per_token"] if r["tok_s"] > 0 else float("inf")
        study = v_real + pf_real + 300 * dec_s
        print("| %s | %s / %s | %d | %.0f | %.0f | %.1f | %.0f | %.0f | %.2f | %.0f |" % (
            r["who"], r["weights"], r["vision_weights"], r["threads"], r["vision_ms"] / vl, r["prefill_ms"] / dl,
            1000 / r["tok_s"] / dl if r["tok_s"] > 0 else 0, v_real, pf_real, 1 / dec_s, study))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
