#!/usr/bin/python3
"""Alternates llama.cpp's llama-bench and firstread's bench_engine on the same
decoder weights (GGUF written by tools/gguf/write_gguf.py), and prints
prefill (300 tokens) and decode (64 tokens at depth 300) tokens/s with the
ratio firstread / llama.cpp within each pair, plus the load average before
every measurement. Called by bench/llama_cpp/run.sh."""
import argparse
import json
import os
import subprocess
import sys

ENGINE_FORMAT = {"bf16": "auto", "f16": "f16", "q8_0": "int8", "q4_0": "int4"}


def load():
    return os.getloadavg()[0]


def llama(a, gguf):
    out = {}
    for args in (["-p", "300", "-n", "0"], ["-p", "0", "-n", "64", "-d", "300"]):
        # llama.cpp looks for its CPU backend (libggml-cpu-*.so) beside the
        # executable or in the working directory: run it from the libraries'.
        r = subprocess.run([a.llama_bench, "-m", gguf, "-t", str(a.threads), "-r", "1", "-o", "json"] + args,
                           cwd=a.libs, capture_output=True, text=True, check=True)
        for row in json.loads(r.stdout):
            out["prefill" if row["n_prompt"] else "decode"] = row["avg_ts"]
    return out


def engine(a, fmt):
    r = subprocess.run([a.bench_engine, "--child", ENGINE_FORMAT[fmt], "--model", a.model, "--threads", str(a.threads),
                        "--decode-tokens", "64", "--no-vision"], capture_output=True, text=True, check=True)
    j = json.loads(r.stdout.strip().splitlines()[-1])
    return {"prefill": 300 * 1000.0 / j["prefill_ms"], "decode": j["decode_tokens_per_second"]}


def amx_step_gflops(a):
    """GFLOP/s of the AMX-BF16 2 x 2 tile step with L1-resident tiles (bench_amx_tiles), or None
    where the CPU has no amx path. On a shared host this step is bimodal (engine/README.md), and
    both sides of a Q8_0 / Q4_0 pair multiply on the same tiles: the figure says which mode a
    pair ran in."""
    if not a.amx_tiles or not os.path.exists(a.amx_tiles):
        return None
    r = subprocess.run([a.amx_tiles, "--repeat", "1"], capture_output=True, text=True, check=True)
    for line in r.stdout.splitlines():
        if line.startswith("| tiles in L1"):
            return float(line.split("|")[3])
    return None


def main(argv):
    ap = argparse.ArgumentParser()
    for k in ("bench-engine", "llama-bench", "libs", "model", "gguf-dir", "writer", "formats"):
        ap.add_argument("--" + k, required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--amx-tiles", default="", help="bench_amx_tiles, run before each pair (AMX mode)")
    a = ap.parse_args(argv[1:])
    formats = a.formats.split(",")
    os.makedirs(a.gguf_dir, exist_ok=True)
    tag = os.path.basename(os.path.abspath(a.model))
    ggufs = {}
    for f in formats:
        path = os.path.join(a.gguf_dir, f"{tag}-{f}.gguf")
        if not os.path.exists(path) or os.path.getmtime(path) < os.path.getmtime(os.path.join(a.model, "config.json")):
            subprocess.run(["/usr/bin/python3", a.writer, a.model, path, "--type", f], check=True)
        ggufs[f] = path
    rows = {f: [] for f in formats}
    for rnd in range(a.rounds):
        for f in formats:
            # Alternate which side goes first so neither always sees the other's after-effects.
            first_llama = rnd % 2 == 0
            amx = amx_step_gflops(a)
            l0 = load()
            if first_llama:
                lc = llama(a, ggufs[f]); fr = engine(a, f)
            else:
                fr = engine(a, f); lc = llama(a, ggufs[f])
            rows[f].append((lc, fr, l0, load(), amx))
            mode = "" if amx is None else f" | AMX L1 step {amx:.0f} GFLOP/s"
            print(f"round {rnd + 1} {f}: llama.cpp prefill {lc['prefill']:.1f} decode {lc['decode']:.1f} | firstread "
                  f"prefill {fr['prefill']:.1f} decode {fr['decode']:.1f} tok/s | load {l0:.1f} -> {load():.1f}{mode}",
                  file=sys.stderr, flush=True)
    print(f"\n{a.threads} threads, prefill 300 tokens, decode 64 at depth 300, {a.rounds} alternated pairs "
          f"(ratio = firstread / llama.cpp within each pair; figures are medians)\n")
    print("| weights | prefill llama.cpp | prefill firstread | ratio | decode llama.cpp | decode firstread | ratio | load avg "
          "| AMX L1 step GFLOP/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    med = lambda v: sorted(v)[len(v) // 2]
    for f in formats:
        r = rows[f]
        pr = [x[1]["prefill"] / x[0]["prefill"] for x in r]
        dr = [x[1]["decode"] / x[0]["decode"] for x in r]
        print(f"| {f} | {med([x[0]['prefill'] for x in r]):.0f} | {med([x[1]['prefill'] for x in r]):.0f} | "
              f"{min(pr):.2f}–{max(pr):.2f} | {med([x[0]['decode'] for x in r]):.1f} | {med([x[1]['decode'] for x in r]):.1f} | "
              f"{min(dr):.2f}–{max(dr):.2f} | {min(x[2] for x in r):.1f}–{max(x[3] for x in r):.1f} | "
              f"{amx_range([x[4] for x in r])} |")
    return 0


def amx_range(values):
    known = [v for v in values if v is not None]
    return "—" if not known else f"{min(known):.0f}–{max(known):.0f}"


if __name__ == "__main__":
    sys.exit(main(sys.argv))
