#!/usr/bin/python3
"""PyTorch side of bench/engine, on the same weights as the engine.

  bench_ref.py make DIR      writes a real-size random model: InternViT-300M-shaped
                             encoder (24 x 1024, 448 px) + Qwen2-0.5B-shaped decoder,
                             BF16 weights, with the small test BPE tokenizer.
  bench_ref.py serve DIR      line protocol used by bench_engine (see serve()).
  bench_ref.py run DIR [--threads 1,2] [--decode-tokens N] [--prefill-tokens N]
                             times vision (one 448 tile), prefill and decode in
                             PyTorch (float32 compute, the fast CPU path in torch 1.13)
                             at each thread count and prints one JSON line.
"""
import json
import math
import os
import resource
import struct
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import internvl_ref as ref  # noqa: E402

torch.set_grad_enabled(False)


def bench_config(vocab):
    vc = ref.vision_cfg(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=24,
                        image_size=448, qkv_bias=True, qk_normalization=False, norm_type="layer_norm")
    lc = ref.llm_cfg("Qwen2ForCausalLM", vocab, hidden_size=896, intermediate_size=4864, num_attention_heads=14,
                     num_key_value_heads=2, num_hidden_layers=24, rms_norm_eps=1e-6, rope_theta=1000000.0,
                     tie_word_embeddings=True, max_position_embeddings=32768)
    return {"architectures": ["InternVLChatModel"], "model_type": "internvl_chat", "vision_config": vc,
            "llm_config": lc, "downsample_ratio": 0.5, "select_layer": -1, "template": "Hermes-2",
            "force_image_size": 448, "ps_version": "v2", "dynamic_image_size": False, "use_thumbnail": False}


def make(d):
    os.makedirs(d, exist_ok=True)
    ref.build_bpe(d)
    cfg = bench_config(151655)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    # Shapes from the module, values generated tensor by tensor (streamed to disk).
    shapes = {}
    with _meta_init():
        model = ref.InternVLChat(cfg)
    for name, p in model.named_parameters():
        shapes[name] = tuple(p.shape)
    header, off = {}, 0
    for name in sorted(shapes):
        n = int(np.prod(shapes[name])) * 2
        header[name] = {"dtype": "BF16", "shape": list(shapes[name]), "data_offsets": [off, off + n]}
        off += n
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    g = torch.Generator().manual_seed(5)
    with open(os.path.join(d, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for name in sorted(shapes):
            shp = shapes[name]
            if name.endswith("bias"):
                t = 0.02 * torch.randn(shp, generator=g)
            elif len(shp) == 1:
                t = 1.0 + 0.1 * torch.randn(shp, generator=g)
            elif name.endswith("ls1") or name.endswith("ls2"):
                t = torch.full(shp, 0.5)
            elif "embed" in name:
                t = 0.05 * torch.randn(shp, generator=g)
            else:
                t = torch.randn(shp, generator=g) / math.sqrt(int(np.prod(shp[1:])))
            f.write(t.to(torch.bfloat16).view(torch.int16).numpy().tobytes())


class _meta_init:
    """Builds modules without allocating real weights (torch 1.13 has no device context)."""

    def __enter__(self):
        self.orig = torch.nn.Module.register_parameter

        def reg(mod, name, param):
            if param is not None:
                param = torch.nn.Parameter(torch.empty(param.shape, device="meta"), requires_grad=False)
            return self.orig(mod, name, param)

        torch.nn.Module.register_parameter = reg

    def __exit__(self, *a):
        torch.nn.Module.register_parameter = self.orig


def load_f32(d):
    """Every tensor of DIR (model.safetensors or the shards its index names) as float32."""
    index = os.path.join(d, "model.safetensors.index.json")
    files = sorted(set(json.load(open(index))["weight_map"].values())) if os.path.exists(index) else ["model.safetensors"]
    out = {}
    for fn in files:
        with open(os.path.join(d, fn), "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(n))
            for name, e in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0] if kv[0] != "__metadata__" else -1):
                if name == "__metadata__":
                    continue
                b, en = e["data_offsets"]
                f.seek(8 + n + b)
                raw = np.frombuffer(f.read(en - b), dtype=np.int16 if e["dtype"] == "BF16" else np.float32)
                t = torch.from_numpy(raw.copy())
                out[name] = (t.view(torch.bfloat16).float() if e["dtype"] == "BF16" else t).reshape(e["shape"])
    return out


class CachedQwen2:
    """Qwen2/LLaMA decoder with a KV cache, written with the same ops as HF."""

    def __init__(self, sd, c):
        self.c, self.sd = c, sd
        self.H, self.KV = c["num_attention_heads"], c["num_key_value_heads"]
        self.hd = c["hidden_size"] // self.H
        self.L = c["num_hidden_layers"]
        cos, sin = ref.rope_cos_sin(self.hd, c["rope_theta"], 4096)
        self.cos, self.sin = cos, sin
        self.emb = sd["language_model.model.embed_tokens.weight"]
        self.head = sd.get("language_model.lm_head.weight", self.emb)  # Qwen2 ties, LLaMA/Yi has a head

    def w(self, i, n):
        return self.sd["language_model.model.layers.%d.%s" % (i, n)]

    def b(self, i, n):  # Qwen2 has q/k/v biases, LLaMA none
        return self.sd.get("language_model.model.layers.%d.%s" % (i, n))

    def rms(self, x, w):
        v = x.pow(2).mean(-1, keepdim=True)
        return w * (x * torch.rsqrt(v + self.c["rms_norm_eps"]))

    def forward(self, x, cache, pos):
        N = x.shape[0]
        cos, sin = self.cos[pos:pos + N], self.sin[pos:pos + N]
        g = self.H // self.KV
        for i in range(self.L):
            h = self.rms(x, self.w(i, "input_layernorm.weight"))
            q = F.linear(h, self.w(i, "self_attn.q_proj.weight"), self.b(i, "self_attn.q_proj.bias")).view(N, self.H, self.hd).transpose(0, 1)
            k = F.linear(h, self.w(i, "self_attn.k_proj.weight"), self.b(i, "self_attn.k_proj.bias")).view(N, self.KV, self.hd).transpose(0, 1)
            v = F.linear(h, self.w(i, "self_attn.v_proj.weight"), self.b(i, "self_attn.v_proj.bias")).view(N, self.KV, self.hd).transpose(0, 1)
            q = q * cos + ref.rotate_half(q) * sin
            k = k * cos + ref.rotate_half(k) * sin
            if cache[i] is not None:
                k = torch.cat([cache[i][0], k], 1)
                v = torch.cat([cache[i][1], v], 1)
            cache[i] = (k, v)
            kk, vv = k.repeat_interleave(g, 0), v.repeat_interleave(g, 0)
            att = q @ kk.transpose(1, 2) / math.sqrt(self.hd)
            if N > 1:
                T = kk.shape[1]
                att = att + torch.full((N, T), float("-inf")).triu(T - N + 1)
            o = (att.softmax(-1) @ vv).transpose(0, 1).reshape(N, -1)
            x = x + F.linear(o, self.w(i, "self_attn.o_proj.weight"))
            h = self.rms(x, self.w(i, "post_attention_layernorm.weight"))
            x = x + F.linear(F.silu(F.linear(h, self.w(i, "mlp.gate_proj.weight"))) * F.linear(h, self.w(i, "mlp.up_proj.weight")),
                             self.w(i, "mlp.down_proj.weight"))
        last = self.rms(x[-1:], self.sd["language_model.model.norm.weight"])
        return F.linear(last, self.head)[0]


def run(d, threads, n_prefill, n_decode, repeat=1):
    cfg = json.load(open(os.path.join(d, "config.json")))
    sd = load_f32(d)
    vis = ref.InternVLChat({**cfg, "llm_config": {**cfg["llm_config"], "num_hidden_layers": 0}})
    vsd = {k: v for k, v in sd.items() if not k.startswith("language_model.")}
    vis.load_state_dict(vsd, strict=False)
    vis.eval()
    llm = CachedQwen2(sd, cfg["llm_config"])
    pix = torch.randn(1, 3, cfg.get("force_image_size", 448), cfg.get("force_image_size", 448))
    ids = torch.randint(0, min(600, cfg["llm_config"]["vocab_size"]), (n_prefill,))
    res = {"threads": {}, "weight_bytes_f32": sum(v.numel() * 4 for v in sd.values())}
    for t in threads:
        torch.set_num_threads(t)
        r = {"vision_ms": 1e300, "prefill_ms": 1e300, "decode_tokens_per_second": 0.0}
        for _ in range(repeat):  # best of `repeat`: the least disturbed run on a shared machine
            t0 = time.time()
            vis.extract_feature(pix)
            r["vision_ms"] = min(r["vision_ms"], (time.time() - t0) * 1000)
            cache = [None] * llm.L
            t0 = time.time()
            logits = llm.forward(llm.emb[ids], cache, 0)
            r["prefill_ms"] = min(r["prefill_ms"], (time.time() - t0) * 1000)
            tok = int(logits.argmax())
            t0 = time.time()
            for s in range(n_decode):
                logits = llm.forward(llm.emb[tok:tok + 1], cache, n_prefill + s)
                tok = int(logits.argmax())
            r["decode_tokens_per_second"] = max(r["decode_tokens_per_second"], n_decode / (time.time() - t0))
        res["threads"][str(t)] = r
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    res["torch"] = torch.__version__
    res["torch_threads_default"] = torch.get_num_threads()
    print(json.dumps(res))


def serve(d):
    """Line protocol for bench_engine, so engine and PyTorch phases alternate under
    the same machine load: 'vision T', 'prefill T N', 'decode T N' -> one JSON line."""
    cfg = json.load(open(os.path.join(d, "config.json")))
    sd = load_f32(d)
    vis = ref.InternVLChat({**cfg, "llm_config": {**cfg["llm_config"], "num_hidden_layers": 0}})
    vis.load_state_dict({k: v for k, v in sd.items() if not k.startswith("language_model.")}, strict=False)
    vis.eval()
    llm = CachedQwen2(sd, cfg["llm_config"])
    pix = torch.randn(1, 3, cfg.get("force_image_size", 448), cfg.get("force_image_size", 448))
    cache, pos, tok = None, 0, 0
    print(json.dumps({"ready": True, "torch": torch.__version__,
                      "weight_bytes_f32": sum(v.numel() * 4 for v in sd.values())}), flush=True)
    for line in sys.stdin:
        parts = line.split()
        if not parts:
            continue
        cmd, t = parts[0], int(parts[1])
        torch.set_num_threads(t)
        t0 = time.time()
        if cmd == "vision":
            vis.extract_feature(pix)
            out = {"ms": (time.time() - t0) * 1000}
        elif cmd == "prefill":
            n = int(parts[2])
            ids = torch.randint(0, min(600, cfg["llm_config"]["vocab_size"]), (n,))
            cache = [None] * llm.L
            t0 = time.time()
            tok = int(llm.forward(llm.emb[ids], cache, 0).argmax())
            pos = n
            out = {"ms": (time.time() - t0) * 1000}
        elif cmd == "decode":
            n = int(parts[2])
            for _ in range(n):
                tok = int(llm.forward(llm.emb[tok:tok + 1], cache, pos).argmax())
                pos += 1
            out = {"tokens_per_second": n / (time.time() - t0)}
        else:
            out = {"error": "unknown command " + cmd}
        out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(out), flush=True)
    return 0


def main(argv):
    if len(argv) < 3:
        print(__doc__)
        return 2
    if argv[1] == "make":
        make(argv[2])
        return 0
    if argv[1] == "serve":
        return serve(argv[2])
    threads, n_prefill, n_decode, repeat = [1, 2], 300, 16, 1
    i = 3
    while i < len(argv):
        if argv[i] == "--threads":
            threads = [int(x) for x in argv[i + 1].split(",")]
        elif argv[i] == "--prefill-tokens":
            n_prefill = int(argv[i + 1])
        elif argv[i] == "--decode-tokens":
            n_decode = int(argv[i + 1])
        elif argv[i] == "--repeat":
            repeat = int(argv[i + 1])
        i += 2
    run(argv[2], threads, n_prefill, n_decode, repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
