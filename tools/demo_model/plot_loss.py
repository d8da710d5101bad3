#!/usr/bin/python3
"""Loss curve PNG from train.py's loss.tsv, drawn with PIL (Debian's python3
here has no matplotlib). Usage: plot_loss.py loss.tsv out.png

loss.tsv rows: phase A  step  A  seconds  objectness-loss  box/digit-loss  lr
               phase B  step  B  seconds  answer-token-loss  ema  lr  aux-loss
Top panel: phase B answer-token cross-entropy (digit tokens weighted x2) per
step and its EMA; bottom panel: the auxiliary dense-detector head's box/digit
loss over both phases (phase A: ViT + mlp1 alone; phase B: whole model)."""
import math
import sys

from PIL import Image, ImageDraw

rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
A = [r for r in rows if r[1] == "A"]
B = [r for r in rows if r[1] == "B"]
W, H = 900, 760
img = Image.new("RGB", (W, H), "white")
d = ImageDraw.Draw(img)
all_steps = [int(r[0]) for r in rows]
all_sec = [float(r[2]) for r in rows]
s_lo, s_hi = all_steps[0], all_steps[-1]


def panel(top, bottom, series, title):
    L, R = 70, 20
    vals = [v for _, ys, _ in series for v in ys]
    lo, hi = math.log10(max(min(vals), 1e-3)), math.log10(max(vals))
    lo, hi = math.floor(lo * 4) / 4, math.ceil(hi * 4) / 4

    def X(s):
        return L + (W - L - R) * (s - s_lo) / max(1, s_hi - s_lo)

    def Y(v):
        return top + (bottom - top) * (hi - math.log10(max(v, 1e-3))) / max(1e-6, hi - lo)

    d.rectangle([L, top, W - R, bottom], outline="black")
    e = lo
    while e <= hi + 1e-9:
        y = Y(10 ** e)
        d.line([L, y, W - R, y], fill=(225, 225, 225))
        d.text((5, y - 6), "%.3g" % 10 ** e, fill="black")
        e += 0.25
    for k in range(6):
        s = s_lo + (s_hi - s_lo) * k / 5
        i = min(range(len(all_steps)), key=lambda j: abs(all_steps[j] - s))
        d.line([X(s), bottom, X(s), bottom + 5], fill="black")
        d.text((X(s) - 20, bottom + 8), "%d" % s, fill="black")
        d.text((X(s) - 20, bottom + 22), "%.0f min" % (all_sec[i] / 60), fill=(90, 90, 90))
    if A and B:
        xb = X(int(B[0][0]))
        d.line([xb, top, xb, bottom], fill=(120, 120, 120))
        d.text((xb + 4, bottom - 16), "phase B starts", fill=(90, 90, 90))
    d.text((L, top - 16), title, fill="black")
    for xs, ys, (col, w) in series:
        if len(xs) > 1:
            d.line([(X(s), Y(v)) for s, v in zip(xs, ys)], fill=col, width=w)


def ema(v, a=0.95):
    out, e = [], None
    for x in v:
        e = x if e is None else a * e + (1 - a) * x
        out.append(e)
    return out


if B:
    bs = [int(r[0]) for r in B]
    bl = [float(r[3]) for r in B]
    panel(40, 360, [(bs, bl, ((150, 180, 230), 1)), (bs, ema(bl), ((200, 30, 30), 2))],
          "phase B: answer-token cross-entropy (digits x2); blue per step, red EMA 0.95; final EMA %.4f, step %d, %.1f min"
          % (ema(bl)[-1], bs[-1], float(B[-1][2]) / 60))
xs = [int(r[0]) for r in A] + [int(r[0]) for r in B]
ys = [5 * float(r[3]) + float(r[4]) for r in A] + [float(r[6]) for r in B]
panel(430, 700, [(xs, ys, ((170, 210, 170), 1)), (xs, ema(ys), ((20, 120, 20), 2))],
      "auxiliary dense-detector head loss on the image tokens 5 x objectness + box/digits, EMA in dark green")
img.save(sys.argv[2])
