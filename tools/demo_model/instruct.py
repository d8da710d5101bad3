#!/usr/bin/python3
"""Diagnosis-guided instruction data (MedDr-style bootstrapping from labels and
boxes) in the MedRegA output formats, English and Chinese.

Boxes are integers on the 0..999 grid relative to the source image
(MedRegA's BBOX_SCALE = 999): pixel = v / 999 * W (or H).

Tasks: grounded report (`<ref>finding</ref><box>[[x1, y1, x2, y2]]</box>: sentence`),
detection ("Please locate <ref>nodule</ref> ..."), region-to-text
("What is <ref>this</ref><box>[[...]]</box> ..."), classification with
candidate labels.
"""
from phantoms import FINDINGS, ZH

MOD_EN = {"chest": "chest x-ray", "derm": "dermoscopy image", "fundus": "fundus photograph",
          "endo": "endoscopy image"}
MOD_ZH = {"chest": "胸部X光片", "derm": "皮肤镜图像", "fundus": "眼底照片", "endo": "内镜图像"}

# The prompts the model answers best (the ones used most in training; the
# accuracy bench uses them).
REPORT_EN = "Please locate and describe the findings in this {mod}."
REPORT_ZH = "请定位并描述这张{mod}中的病灶。"

REPORT_EN_VARIANTS = [REPORT_EN, REPORT_EN, REPORT_EN,
                      "Locate and describe the findings in this {mod}.",
                      "Please locate and describe the findings in this image.",
                      "Describe the abnormal findings in this {mod} with their regions."]
REPORT_ZH_VARIANTS = [REPORT_ZH, REPORT_ZH, REPORT_ZH,
                      "请定位并描述这张图像中的病灶。",
                      "定位并描述这张{mod}中的异常发现。"]

SENT_EN = {
    "nodule": ("a pulmonary nodule.", "two pulmonary nodules."),
    "mass": ("a lung mass.",),
    "pleural effusion": ("pleural effusion blunting the costophrenic angle.",),
    "cardiomegaly": ("enlarged cardiac silhouette.",),
    "nevus": ("a round lesion of uniform colour, a benign nevus.",),
    "melanoma": ("an irregular multicoloured lesion, suspicious for melanoma.",),
    "haemorrhage": ("a retinal haemorrhage.", "retinal haemorrhages."),
    "exudate": ("hard exudates.",),
    "polyp": ("a polyp.",),
}
SENT_ZH = {
    "nodule": ("肺结节。", "两个肺结节。"),
    "mass": ("肺部肿块。",),
    "pleural effusion": ("胸腔积液，肋膈角变钝。",),
    "cardiomegaly": ("心影增大。",),
    "nevus": ("圆形病灶，颜色均匀，良性色素痣。",),
    "melanoma": ("不规则多色病灶，怀疑黑色素瘤。",),
    "haemorrhage": ("视网膜出血。", "多处视网膜出血。"),
    "exudate": ("硬性渗出。",),
    "polyp": ("息肉。",),
}
NORMAL_EN = {"chest": "No abnormality. The lungs are clear and the heart size is normal.",
             "derm": "No lesion. Normal skin.",
             "fundus": "No abnormality. Normal optic disc and vessels.",
             "endo": "No polyp. Normal mucosa."}
NORMAL_ZH = {"chest": "未见异常。双肺清晰，心影大小正常。",
             "derm": "未见病灶。皮肤正常。",
             "fundus": "未见异常。视盘及血管正常。",
             "endo": "未见息肉。黏膜正常。"}
NORMAL_LABEL = {"en": "normal", "zh": "正常"}


def fmt_boxes(boxes):
    return "<box>[" + ", ".join("[%d, %d, %d, %d]" % tuple(b) for b in boxes) + "]</box>"


def label_of(label, lang):
    return label if lang == "en" else ZH[label]


def report_answer(modality, findings, lang):
    if not findings:
        return (NORMAL_EN if lang == "en" else NORMAL_ZH)[modality]
    lines = []
    for f in findings:
        sents = (SENT_EN if lang == "en" else SENT_ZH)[f["label"]]
        s = sents[min(len(f["boxes"]), len(sents)) - 1]
        colon = ": " if lang == "en" else "："
        lines.append("<ref>%s</ref>%s%s%s" % (label_of(f["label"], lang), fmt_boxes(f["boxes"]), colon, s))
    return "\n".join(lines)


def flip_findings(findings, scale=999):
    out = []
    for f in findings:
        bs = sorted([[scale - b[2], b[1], scale - b[0], b[3]] for b in f["boxes"]], key=lambda b: b[0])
        out.append({"label": f["label"], "boxes": bs})
    return out


# task mix: grounded report, detection, classification, region-to-text (the rest)
MIX = [0.55, 0.20, 0.13]


def sample(rng, modality, findings, lang=None):
    """One (question, answer) pair; rng: numpy RandomState."""
    if lang is None:
        lang = "en" if rng.rand() < 0.5 else "zh"
    mod = (MOD_EN if lang == "en" else MOD_ZH)[modality]
    r = rng.rand()
    present = {f["label"]: f for f in findings}
    if r < MIX[0]:
        vs = REPORT_EN_VARIANTS if lang == "en" else REPORT_ZH_VARIANTS
        q = vs[rng.randint(len(vs))].format(mod=mod)
        return q, report_answer(modality, findings, lang)
    if r < MIX[0] + MIX[1]:
        labels = FINDINGS[modality]
        if present and rng.rand() < 0.65:
            lab = list(present)[rng.randint(len(present))]
        else:
            lab = labels[rng.randint(len(labels))]
        L = label_of(lab, lang)
        if lang == "en":
            q = "Please locate <ref>%s</ref> in this %s." % (L, mod)
            a = "<ref>%s</ref>%s" % (L, fmt_boxes(present[lab]["boxes"])) if lab in present else "No %s found." % L
        else:
            q = "请定位这张%s中的<ref>%s</ref>。" % (mod, L)
            a = "<ref>%s</ref>%s" % (L, fmt_boxes(present[lab]["boxes"])) if lab in present else "未发现%s。" % L
        return q, a
    if r < MIX[0] + MIX[1] + MIX[2] or not findings:
        opts = [NORMAL_LABEL[lang]] + [label_of(x, lang) for x in FINDINGS[modality]]
        ans = [label_of(f["label"], lang) for f in findings] or [NORMAL_LABEL[lang]]
        if lang == "en":
            q = "Which findings are present in this %s? Options: %s." % (mod, ", ".join(opts))
            return q, ", ".join(ans) + "."
        q = "这张%s中有哪些发现？选项：%s。" % (mod, "、".join(opts))
        return q, "、".join(ans) + "。"
    f = findings[rng.randint(len(findings))]
    b = f["boxes"][rng.randint(len(f["boxes"]))]
    if lang == "en":
        return "What is <ref>this</ref>%s in this %s?" % (fmt_boxes([b]), mod), f["label"] + "."
    return "这张%s中<ref>此处</ref>%s是什么？" % (mod, fmt_boxes([b])), ZH[f["label"]] + "。"


def corpus_lines(metas, rng, n_per=3):
    lines = []
    for m in metas:
        for _ in range(n_per):
            q, a = sample(rng, m["modality"], m["findings"])
            lines += [q, a]
    for mod in MOD_EN:
        for lang in ("en", "zh"):
            for v in (REPORT_EN_VARIANTS if lang == "en" else REPORT_ZH_VARIANTS):
                lines.append(v.format(mod=(MOD_EN if lang == "en" else MOD_ZH)[mod]))
            lines.append(report_answer(mod, [], lang))
    lines.append(" ".join(str(i) for i in range(1000)))
    lines.append("Answer the questions.")
    return lines
