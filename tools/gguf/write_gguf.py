#!/usr/bin/python3
"""Writes the decoder of an InternVL-Chat model directory as a GGUF file that
llama.cpp loads (general.architecture "llama"), so bench/llama_cpp can run
llama.cpp on exactly the weights firstread runs.

    /usr/bin/python3 tools/gguf/write_gguf.py MODEL_DIR OUT.gguf --type bf16|f16|q8_0|q4_0

What it writes (GGUF v3, written from the format's published description):
- llama.* hyper-parameters from config.json's llm_config (LLaMA or Qwen2
  layout; Qwen2's q/k/v biases go in as the optional llama bias tensors);
- Q and K rows (and their biases) permuted from the Hugging Face rotate-half
  order to llama.cpp's interleaved pairs, as llama.cpp's own converter does
  (reshape(n_head, 2, head_dim/2, ...).swapaxes(1, 2));
- matrices in the requested type (Q8_0 / Q4_0 with llama.cpp's reference
  rounding: Q8_0 d = amax/127; Q4_0 d = max/-8 with the signed largest value,
  weight j in the low nibble and j + 16 in the high one), norms in F32;
- a vocabulary of the right size (SentencePiece-style: <unk>, <s>, </s>, the
  256 byte tokens, then placeholder pieces): llama-bench feeds random ids, so
  the text of a token never matters, only that the model loads.
Tied embeddings write no output.weight (llama.cpp then uses token_embd).
Nothing but numpy (Debian's python3-numpy).
"""
import argparse
import json
import os
import struct
import sys

import numpy as np

GGUF_MAGIC = b"GGUF"
GGUF_VERSION = 3
ALIGN = 32
# gguf value types
T_UINT32, T_INT32, T_FLOAT32, T_BOOL, T_STRING, T_ARRAY, T_UINT64 = 4, 5, 6, 7, 8, 9, 10
# ggml tensor types
GGML = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 8, "bf16": 30}
# llama_ftype (general.file_type)
FTYPE = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 7, "bf16": 32}


# ---------------------------------------------------------------- safetensors

class Safetensors:
    """Minimal reader: one file or a model.safetensors.index.json."""

    def __init__(self, model_dir):
        index = os.path.join(model_dir, "model.safetensors.index.json")
        if os.path.exists(index):
            files = sorted(set(json.load(open(index))["weight_map"].values()))
        else:
            files = ["model.safetensors"]
        self.tensors = {}
        for f in files:
            path = os.path.join(model_dir, f)
            with open(path, "rb") as fh:
                n = struct.unpack("<Q", fh.read(8))[0]
                header = json.loads(fh.read(n))
            mm = np.memmap(path, dtype=np.uint8, mode="r")
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                a, b = info["data_offsets"]
                self.tensors[name] = (mm, 8 + n + a, 8 + n + b, info["dtype"], info["shape"])

    def has(self, name):
        return name in self.tensors

    def f32(self, name):
        mm, a, b, dt, shape = self.tensors[name]
        raw = mm[a:b]
        if dt == "F32":
            v = raw.view(np.float32)
        elif dt == "F16":
            v = raw.view(np.float16).astype(np.float32)
        elif dt == "BF16":
            v = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            raise SystemExit(f"{name}: unsupported dtype {dt}")
        return v.reshape(shape)


# ---------------------------------------------------------------- quantisation

def to_bf16(x):
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16  # round to nearest even, like torch
    return rounded.astype(np.uint16)


def q8_0(x):
    rows, cols = x.shape
    b = x.reshape(rows, cols // 32, 32).astype(np.float32)
    amax = np.abs(b).max(axis=2, keepdims=True)
    d = amax / 127.0
    inv = np.where(d > 0, 1.0 / np.where(d > 0, d, 1), 0)
    v = b * inv
    q = (np.sign(v) * np.floor(np.abs(v) + 0.5)).astype(np.int8)  # roundf: halves away from zero
    out = np.empty((rows, cols // 32), dtype=[("d", "<f2"), ("q", "i1", 32)])
    out["d"] = d[..., 0].astype(np.float16)
    out["q"] = q
    return out.tobytes()


def q4_0(x):
    rows, cols = x.shape
    b = x.reshape(rows, cols // 32, 32).astype(np.float32)
    idx = np.abs(b).argmax(axis=2)
    mx = np.take_along_axis(b, idx[..., None], axis=2)
    d = mx / -8.0
    inv = np.where(d != 0, 1.0 / np.where(d != 0, d, 1), 0)
    q = np.minimum(15, (b * inv + 8.5).astype(np.int32)).astype(np.uint8)  # truncation as in C
    packed = q[..., :16] | (q[..., 16:] << 4)
    out = np.empty((rows, cols // 32), dtype=[("d", "<f2"), ("qs", "u1", 16)])
    out["d"] = d[..., 0].astype(np.float16)
    out["qs"] = packed
    return out.tobytes()


def encode(x, ty):
    """Bytes of tensor x (2-D matrices may be quantised) and the ggml type used."""
    if x.ndim == 1 or ty == "f32":
        return np.ascontiguousarray(x, dtype=np.float32).tobytes(), GGML["f32"]
    if ty in ("q8_0", "q4_0") and x.shape[1] % 32 != 0:
        ty = "f16"  # a width the blocks cannot tile stays 16-bit
    if ty == "f16":
        return x.astype(np.float16).tobytes(), GGML["f16"]
    if ty == "bf16":
        return to_bf16(x).tobytes(), GGML["bf16"]
    if ty == "q8_0":
        return q8_0(x), GGML["q8_0"]
    return q4_0(x), GGML["q4_0"]


def permute(w, n_head):
    """HF rotate-half rows -> llama.cpp interleaved pairs (llama.cpp's converter)."""
    shape = w.shape
    return w.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


# ---------------------------------------------------------------- GGUF writer

class Writer:
    def __init__(self):
        self.kv = []
        self.tensors = []  # (name, shape as numpy [rows, cols], ggml type, bytes)

    @staticmethod
    def _str(s):
        b = s.encode("utf-8")
        return struct.pack("<Q", len(b)) + b

    def add(self, key, vtype, value):
        self.kv.append((key, vtype, value))

    def _value(self, vtype, value):
        if vtype == T_STRING:
            return self._str(value)
        if vtype == T_UINT32:
            return struct.pack("<I", value)
        if vtype == T_INT32:
            return struct.pack("<i", value)
        if vtype == T_FLOAT32:
            return struct.pack("<f", value)
        if vtype == T_BOOL:
            return struct.pack("<B", 1 if value else 0)
        if vtype == T_UINT64:
            return struct.pack("<Q", value)
        raise ValueError(vtype)

    def add_array(self, key, elem_type, values):
        self.kv.append((key, T_ARRAY, (elem_type, values)))

    def tensor(self, name, data, ggml_type, shape):
        self.tensors.append((name, shape, ggml_type, data))

    def write(self, path):
        with open(path, "wb") as f:
            f.write(GGUF_MAGIC + struct.pack("<IQQ", GGUF_VERSION, len(self.tensors), len(self.kv)))
            for key, vtype, value in self.kv:
                f.write(self._str(key) + struct.pack("<I", vtype))
                if vtype == T_ARRAY:
                    et, vals = value
                    f.write(struct.pack("<IQ", et, len(vals)))
                    if et == T_STRING:
                        f.write(b"".join(self._str(v) for v in vals))
                    elif et == T_FLOAT32:
                        f.write(np.asarray(vals, dtype="<f4").tobytes())
                    elif et == T_INT32:
                        f.write(np.asarray(vals, dtype="<i4").tobytes())
                    else:
                        raise ValueError(et)
                else:
                    f.write(self._value(vtype, value))
            offset = 0
            offsets = []
            for name, shape, gt, data in self.tensors:
                offsets.append(offset)
                dims = list(reversed(shape))  # ggml: ne[0] is the innermost (columns)
                f.write(self._str(name) + struct.pack("<I", len(dims)))
                f.write(b"".join(struct.pack("<Q", d) for d in dims))
                f.write(struct.pack("<IQ", gt, offset))
                offset += (len(data) + ALIGN - 1) // ALIGN * ALIGN
            pad = (-f.tell()) % ALIGN
            f.write(b"\0" * pad)
            for (name, shape, gt, data), off in zip(self.tensors, offsets):
                f.write(data)
                f.write(b"\0" * ((-len(data)) % ALIGN))


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir")
    ap.add_argument("out")
    ap.add_argument("--type", choices=["bf16", "f16", "q8_0", "q4_0", "f32"], default="bf16")
    a = ap.parse_args(argv[1:])

    cfg = json.load(open(os.path.join(a.model_dir, "config.json")))
    lc = cfg.get("llm_config", cfg)
    arch = (lc.get("architectures") or ["LlamaForCausalLM"])[0]
    if arch not in ("LlamaForCausalLM", "Qwen2ForCausalLM"):
        raise SystemExit(f"{arch}: only LLaMA and Qwen2 decoders are written (InternLM2's fused wqkv is not)")
    d = lc["hidden_size"]
    n_layers = lc["num_hidden_layers"]
    n_head = lc["num_attention_heads"]
    n_kv = lc.get("num_key_value_heads", n_head)
    vocab = lc["vocab_size"]
    st = Safetensors(a.model_dir)
    pre = "language_model.model."
    if not st.has(pre + "embed_tokens.weight"):
        pre = "model."
    head = "language_model.lm_head.weight" if pre.startswith("language_model") else "lm_head.weight"

    w = Writer()
    w.add("general.architecture", T_STRING, "llama")
    w.add("general.name", T_STRING, os.path.basename(os.path.abspath(a.model_dir)) + "-decoder")
    w.add("general.alignment", T_UINT32, ALIGN)
    w.add("general.file_type", T_UINT32, FTYPE[a.type])
    w.add("llama.context_length", T_UINT32, int(lc.get("max_position_embeddings", 4096)))
    w.add("llama.embedding_length", T_UINT32, d)
    w.add("llama.block_count", T_UINT32, n_layers)
    w.add("llama.feed_forward_length", T_UINT32, lc["intermediate_size"])
    w.add("llama.attention.head_count", T_UINT32, n_head)
    w.add("llama.attention.head_count_kv", T_UINT32, n_kv)
    w.add("llama.rope.dimension_count", T_UINT32, d // n_head)
    w.add("llama.rope.freq_base", T_FLOAT32, float(lc.get("rope_theta", 10000.0)))
    w.add("llama.attention.layer_norm_rms_epsilon", T_FLOAT32, float(lc.get("rms_norm_eps", 1e-6)))
    w.add("llama.vocab_size", T_UINT32, vocab)
    # Vocabulary: SentencePiece-style, the size of the embedding table.
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    types = [2, 3, 3] + [6] * 256  # unknown, control, control, byte
    tokens += [f"\u2581t{i}" for i in range(vocab - len(tokens))]
    types += [1] * (vocab - len(types))
    w.add("tokenizer.ggml.model", T_STRING, "llama")
    w.add_array("tokenizer.ggml.tokens", T_STRING, tokens)
    w.add_array("tokenizer.ggml.scores", T_FLOAT32, [0.0] * vocab)
    w.add_array("tokenizer.ggml.token_type", T_INT32, types)
    w.add("tokenizer.ggml.bos_token_id", T_UINT32, 1)
    w.add("tokenizer.ggml.eos_token_id", T_UINT32, 2)
    w.add("tokenizer.ggml.unknown_token_id", T_UINT32, 0)
    w.add("tokenizer.ggml.add_bos_token", T_BOOL, False)

    def put(name, x):
        data, gt = encode(x, a.type)
        w.tensor(name, data, gt, list(x.shape))

    put("token_embd.weight", st.f32(pre + "embed_tokens.weight"))
    put("output_norm.weight", st.f32(pre + "norm.weight"))
    if st.has(head) and not lc.get("tie_word_embeddings", False):
        put("output.weight", st.f32(head))
    for i in range(n_layers):
        l = f"{pre}layers.{i}."
        b = f"blk.{i}."
        put(b + "attn_norm.weight", st.f32(l + "input_layernorm.weight"))
        put(b + "ffn_norm.weight", st.f32(l + "post_attention_layernorm.weight"))
        put(b + "attn_q.weight", permute(st.f32(l + "self_attn.q_proj.weight"), n_head))
        put(b + "attn_k.weight", permute(st.f32(l + "self_attn.k_proj.weight"), n_kv))
        put(b + "attn_v.weight", st.f32(l + "self_attn.v_proj.weight"))
        for proj, nh in (("q", n_head), ("k", n_kv), ("v", 0)):
            bias = l + f"self_attn.{proj}_proj.bias"
            if st.has(bias):
                v = st.f32(bias)
                put(b + f"attn_{proj}.bias", permute(v, nh) if nh else v)
        put(b + "attn_output.weight", st.f32(l + "self_attn.o_proj.weight"))
        put(b + "ffn_gate.weight", st.f32(l + "mlp.gate_proj.weight"))
        put(b + "ffn_up.weight", st.f32(l + "mlp.up_proj.weight"))
        put(b + "ffn_down.weight", st.f32(l + "mlp.down_proj.weight"))
    w.write(a.out)
    print(f"wrote {a.out}: {len(w.tensors)} tensors, type {a.type}, vocab {vocab}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
