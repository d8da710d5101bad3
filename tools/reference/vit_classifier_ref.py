#!/usr/bin/python3
"""Independent PyTorch reference for firstread's specialist classifiers
(engine/vit_classifier): Hugging Face `ViTForImageClassification` directories.

Written from the published layout (transformers' modeling_vit.py and
image_processing_vit.py as documented: config.json keys, the state-dict names,
ViTImageProcessor's resize / rescale / normalise), with plain torch ops and
PIL, sharing nothing with the C++ engine.

  vit_classifier_ref.py make OUT_DIR [--hidden D] [--layers L] [--heads H] [--intermediate I]
                        [--image S] [--patch P] [--labels a,b,c] [--problem single|multi]
                        [--dtype F32|BF16|F16] [--resample 2|3] [--seed N]
      writes a random model in the HF layout (config.json, model.safetensors,
      preprocessor_config.json), a test image, and what the model computes for it.
  vit_classifier_ref.py run MODEL_DIR IMAGE OUT_DIR
      the same outputs for any model directory and image (PNG/PPM/PGM, or an 8-bit DICOM).

Outputs in OUT_DIR: pixel_values.f32 (3 x S x S after the processor),
logits.f32, probs.f32, feature.f32 (the CLS row after vit.layernorm, not
normalised) and reference.json (the same numbers plus the labels).
"""
import argparse
import json
import math
import os
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from internvl_ref import make_test_image, write_safetensors  # noqa: E402  (the shared file writers)

torch.set_grad_enabled(False)

# ----------------------------------------------------------------- reading a model


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        raw = data[a:b]
        if info["dtype"] == "F32":
            t = torch.from_numpy(np.frombuffer(raw, dtype=np.float32).copy())
        elif info["dtype"] == "F16":
            t = torch.from_numpy(np.frombuffer(raw, dtype=np.float16).astype(np.float32))
        elif info["dtype"] == "BF16":
            u = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16
            t = torch.from_numpy(u.view(np.float32).copy())
        else:
            raise SystemExit(f"{path}: dtype {info['dtype']} of {name} not handled by the reference")
        out[name] = t.view(info["shape"])
    return out


def load_model(model_dir):
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    pre_path = os.path.join(model_dir, "preprocessor_config.json")
    pre = json.load(open(pre_path)) if os.path.exists(pre_path) else {}
    w = read_safetensors(os.path.join(model_dir, "model.safetensors"))
    return cfg, pre, w


# ----------------------------------------------------------------- ViTImageProcessor


def preprocess(img, cfg, pre):
    """ViTImageProcessor: RGB -> resize (PIL, resample) -> * rescale_factor -> (x - mean) / std -> CHW."""
    img = img.convert("RGB")
    size = pre.get("size", {"height": cfg["image_size"], "width": cfg["image_size"]})
    if isinstance(size, int):
        size = {"height": size, "width": size}
    if pre.get("do_resize", True):
        img = img.resize((size["width"], size["height"]), resample=pre.get("resample", 2))
    x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).float()
    if pre.get("do_rescale", True):
        x = x * pre.get("rescale_factor", 1 / 255)
    if pre.get("do_normalize", True):
        mean = torch.tensor(pre.get("image_mean", [0.5, 0.5, 0.5]))
        std = torch.tensor(pre.get("image_std", [0.5, 0.5, 0.5]))
        x = (x - mean) / std
    return x.permute(2, 0, 1).contiguous()


# ----------------------------------------------------------------- ViTForImageClassification


def forward(cfg, w, pixels):
    """pixels: 3 x S x S -> (logits, feature). modeling_vit: ViTEmbeddings (conv patches, CLS first,
    + position table), ViTLayer pre-norm (layernorm_before -> self-attention -> output.dense -> residual;
    layernorm_after -> intermediate.dense -> GELU -> output.dense -> residual), vit.layernorm, classifier on CLS."""
    D, H = cfg["hidden_size"], cfg["num_attention_heads"]
    P, eps = cfg["patch_size"], cfg.get("layer_norm_eps", 1e-12)
    hd = D // H
    x = F.conv2d(pixels.unsqueeze(0), w["vit.embeddings.patch_embeddings.projection.weight"],
                 w["vit.embeddings.patch_embeddings.projection.bias"], stride=P)  # 1 x D x g x g
    x = x.flatten(2).transpose(1, 2)  # 1 x N x D, row-major patches
    x = torch.cat([w["vit.embeddings.cls_token"], x], dim=1) + w["vit.embeddings.position_embeddings"]
    for i in range(cfg["num_hidden_layers"]):
        p = f"vit.encoder.layer.{i}."

        def lin(name, t):
            return F.linear(t, w[p + name + ".weight"], w.get(p + name + ".bias"))

        h = F.layer_norm(x, (D,), w[p + "layernorm_before.weight"], w[p + "layernorm_before.bias"], eps)
        q = lin("attention.attention.query", h).view(1, -1, H, hd).transpose(1, 2)
        k = lin("attention.attention.key", h).view(1, -1, H, hd).transpose(1, 2)
        v = lin("attention.attention.value", h).view(1, -1, H, hd).transpose(1, 2)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), dim=-1)
        ctx = (att @ v).transpose(1, 2).reshape(1, -1, D)
        x = x + lin("attention.output.dense", ctx)
        h = F.layer_norm(x, (D,), w[p + "layernorm_after.weight"], w[p + "layernorm_after.bias"], eps)
        h = F.gelu(lin("intermediate.dense", h))  # hidden_act "gelu": exact erf
        x = x + lin("output.dense", h)
    x = F.layer_norm(x, (D,), w["vit.layernorm.weight"], w["vit.layernorm.bias"], eps)
    feature = x[0, 0]
    logits = F.linear(feature, w["classifier.weight"], w["classifier.bias"])
    return logits, feature


def probabilities(cfg, logits):
    if cfg.get("problem_type") == "multi_label_classification":
        return torch.sigmoid(logits)
    return torch.softmax(logits, dim=-1)


def open_image(path):
    """PNG/PPM/PGM through PIL; an 8-bit DICOM (RGB or MONOCHROME2, no VOI) through pydicom."""
    if not path.lower().endswith(".dcm"):
        return Image.open(path)
    import pydicom
    ds = pydicom.dcmread(path)
    a = ds.pixel_array
    if ds.BitsAllocated != 8 or ds.PhotometricInterpretation not in ("RGB", "MONOCHROME2"):
        raise SystemExit(f"{path}: only 8-bit RGB or MONOCHROME2 DICOM is read by the reference")
    return Image.fromarray(a, "RGB" if a.ndim == 3 else "L")


def write_outputs(model_dir, image_path, out_dir):
    cfg, pre, w = load_model(model_dir)
    pixels = preprocess(open_image(image_path), cfg, pre)
    logits, feature = forward(cfg, w, pixels)
    probs = probabilities(cfg, logits)
    os.makedirs(out_dir, exist_ok=True)
    for name, t in (("pixel_values", pixels), ("logits", logits), ("probs", probs), ("feature", feature)):
        t.to(torch.float32).numpy().tofile(os.path.join(out_dir, name + ".f32"))
    labels = [cfg["id2label"][str(i)] for i in range(len(cfg["id2label"]))]
    json.dump({"labels": labels, "logits": logits.tolist(), "probs": probs.tolist(),
               "feature_norm": float(feature.norm())}, open(os.path.join(out_dir, "reference.json"), "w"), indent=1)


# ----------------------------------------------------------------- random models


def make_model(out_dir, a):
    g = torch.Generator().manual_seed(a.seed)
    D, L, I, S, P = a.hidden, a.layers, a.intermediate, a.image, a.patch
    labels = a.labels.split(",")
    n = (S // P) ** 2 + 1

    def rnd(*shape, scale=0.02):
        return torch.randn(*shape, generator=g) * scale

    w = {
        "vit.embeddings.cls_token": rnd(1, 1, D, scale=0.5),
        "vit.embeddings.position_embeddings": rnd(1, n, D, scale=0.5),
        "vit.embeddings.patch_embeddings.projection.weight": rnd(D, 3, P, P, scale=0.1),
        "vit.embeddings.patch_embeddings.projection.bias": rnd(D, scale=0.1),
        "vit.layernorm.weight": 1 + rnd(D, scale=0.1),
        "vit.layernorm.bias": rnd(D, scale=0.1),
        "classifier.weight": rnd(len(labels), D, scale=0.5),
        "classifier.bias": rnd(len(labels), scale=0.5),
    }
    for i in range(L):
        p = f"vit.encoder.layer.{i}."
        for name in ("layernorm_before", "layernorm_after"):
            w[p + name + ".weight"] = 1 + rnd(D, scale=0.1)
            w[p + name + ".bias"] = rnd(D, scale=0.1)
        for name in ("attention.attention.query", "attention.attention.key", "attention.attention.value",
                     "attention.output.dense"):
            w[p + name + ".weight"] = rnd(D, D, scale=1 / math.sqrt(D))
            w[p + name + ".bias"] = rnd(D, scale=0.1)
        w[p + "intermediate.dense.weight"] = rnd(I, D, scale=1 / math.sqrt(D))
        w[p + "intermediate.dense.bias"] = rnd(I, scale=0.1)
        w[p + "output.dense.weight"] = rnd(D, I, scale=1 / math.sqrt(I))
        w[p + "output.dense.bias"] = rnd(D, scale=0.1)
    os.makedirs(out_dir, exist_ok=True)
    if a.dtype != "F32":  # the reference computes with what the file holds
        w = {k: (v.to(torch.bfloat16) if a.dtype == "BF16" else v.to(torch.float16)).float() for k, v in w.items()}
    write_safetensors(os.path.join(out_dir, "model.safetensors"), w, a.dtype)
    cfg = {
        "architectures": ["ViTForImageClassification"], "model_type": "vit",
        "hidden_size": D, "num_hidden_layers": L, "num_attention_heads": a.heads, "intermediate_size": I,
        "hidden_act": "gelu", "layer_norm_eps": 1e-12, "image_size": S, "patch_size": P, "num_channels": 3,
        "qkv_bias": True, "problem_type": "multi_label_classification" if a.problem == "multi" else
        "single_label_classification",
        "id2label": {str(i): l for i, l in enumerate(labels)}, "label2id": {l: i for i, l in enumerate(labels)},
    }
    json.dump(cfg, open(os.path.join(out_dir, "config.json"), "w"), indent=1)
    json.dump({"image_processor_type": "ViTImageProcessor", "do_resize": True, "size": {"height": S, "width": S},
               "resample": a.resample, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
               "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]},
              open(os.path.join(out_dir, "preprocessor_config.json"), "w"), indent=1)
    img_path = os.path.join(out_dir, "test_image.png")
    make_test_image(97, 71, a.seed).save(img_path)
    write_outputs(out_dir, img_path, out_dir)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("out")
    m.add_argument("--hidden", type=int, default=64)
    m.add_argument("--layers", type=int, default=2)
    m.add_argument("--heads", type=int, default=4)
    m.add_argument("--intermediate", type=int, default=128)
    m.add_argument("--image", type=int, default=32)
    m.add_argument("--patch", type=int, default=8)
    m.add_argument("--labels", default="normal,pneumonia,effusion")
    m.add_argument("--problem", choices=["single", "multi"], default="multi")
    m.add_argument("--dtype", choices=["F32", "BF16", "F16"], default="F32")
    m.add_argument("--resample", type=int, choices=[2, 3], default=2)
    m.add_argument("--seed", type=int, default=1)
    r = sub.add_parser("run")
    r.add_argument("model")
    r.add_argument("image")
    r.add_argument("out")
    a = ap.parse_args()
    if a.cmd == "make":
        make_model(a.out, a)
    else:
        write_outputs(a.model, a.image, a.out)


if __name__ == "__main__":
    main()
