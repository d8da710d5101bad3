#!/usr/bin/python3
"""Renders a grayscale presentation state onto its image as a PNG, to look at:
DCMTK's dcmp2pgm applies the GSPS's grey pipeline (modality LUT, softcopy VOI,
presentation LUT); the graphic and text objects of the GSPS's layer are then
drawn from the file's own coordinates (pydicom + PIL; dcmp2pgm leaves them out).

Usage: /usr/bin/python3 tools/sr_check/render_ps.py GSPS.dcm IMAGE.dcm OUT.png [SCALE]
"""
import subprocess
import sys
import tempfile

import pydicom
from PIL import Image, ImageDraw, ImageFont

FONTS = ["/usr/share/fonts/truetype/wqy/wqy-microhei.ttc", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"]


def main():
    if len(sys.argv) not in (4, 5):
        print(__doc__, file=sys.stderr)
        return 2
    ps_path, image_path, out_path = sys.argv[1:4]
    scale = int(sys.argv[4]) if len(sys.argv) == 5 else 1
    with tempfile.NamedTemporaryFile(suffix=".pgm") as pgm:
        subprocess.run(["dcmp2pgm", "-p", ps_path, image_path, pgm.name], check=True)
        grey = Image.open(pgm.name).convert("RGB")
    image = grey.resize((grey.width * scale, grey.height * scale), Image.NEAREST)
    draw = ImageDraw.Draw(image)
    ps = pydicom.dcmread(ps_path)
    font = None
    for path in FONTS:
        try:
            font = ImageFont.truetype(path, max(10, image.height // 30))
            break
        except OSError:
            continue
    for annotation in ps.get("GraphicAnnotationSequence", []):
        for graphic in annotation.get("GraphicObjectSequence", []):
            data = [float(v) * scale for v in graphic.GraphicData]
            draw.line(list(zip(data[0::2], data[1::2])), fill=(255, 221, 0), width=max(1, scale))
        for text in annotation.get("TextObjectSequence", []):
            x, y = (float(v) * scale for v in text.BoundingBoxTopLeftHandCorner)
            draw.text((x, y), text.UnformattedTextValue, fill=(255, 221, 0), font=font)
    image.save(out_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
