"""Task data and metrics for the PP-OCR models, made offline with Pillow's embedded font.

* recognizer: text lines of random strings (an alphabet without look-alike glyphs),
  resized to height 48 (width ≤ 320, zero padded after normalisation, as RapidOCR does),
  greedy CTC decoding with the model's own character list → exact-match rate;
* detector: pages of text lines, probability map → boxes (threshold, connected
  components, DB-style unclip) → recall of the ground-truth line boxes at IoU ≥ 0.5;
* classifier: text lines at 48×192, half of them rotated by 180° → accuracy.

Held-out style for the recognizer (``shifted_set``): the same kind of random strings
rendered in the DejaVu TrueType fonts (ExtraLight skipped: hair-thin strokes), with a
random contrast / brightness change and Gaussian pixel noise — a style the calibration
lines (Pillow's embedded font, clean) never show.
"""
from __future__ import annotations

import glob
import importlib.util
import os

import numpy as np

ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnpqrstuvwxyz23456789"
MODELS = os.path.join(os.path.dirname(importlib.util.find_spec("rapidocr_onnxruntime").origin), "models") \
    if importlib.util.find_spec("rapidocr_onnxruntime") else None
REC = "ch_PP-OCRv4_rec_infer.onnx"
DET = "ch_PP-OCRv4_det_infer.onnx"
CLS = "ch_ppocr_mobile_v2.0_cls_infer.onnx"
FONT_DIR = "/usr/share/fonts/truetype/dejavu"


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def random_text(rng, lo=5, hi=12) -> str:
    return "".join(rng.choice(list(ALPHABET), int(rng.integers(lo, hi + 1))))


def shifted_fonts() -> list[str]:
    """The TrueType fonts of the shifted set (fonts-dejavu-core / -extra), ExtraLight skipped."""
    return sorted(f for f in glob.glob(os.path.join(FONT_DIR, "*.ttf")) if "ExtraLight" not in f)


def render_line(text: str, size: int, font=None):
    from PIL import Image, ImageDraw

    font = font or _font(size)
    size = int(getattr(font, "size", size))
    probe = ImageDraw.Draw(Image.new("L", (8, 8)))
    x0, y0, x1, y1 = probe.textbbox((0, 0), text, font=font)
    pad = max(2, size // 6)
    img = Image.new("RGB", (x1 - x0 + 2 * pad, y1 - y0 + 2 * pad), "white")
    ImageDraw.Draw(img).text((pad - x0, pad - y0), text, font=font, fill="black")
    return img


def line_tensor(img, h: int = 48, max_w: int = 320, fixed_w: int | None = None) -> np.ndarray:
    from PIL import Image

    w = int(np.ceil(h * img.width / img.height))
    w = min(max_w, w) if fixed_w is None else fixed_w
    a = np.asarray(img.resize((w, h), Image.BILINEAR), np.float32) / 255.0
    a = ((a - 0.5) / 0.5).transpose(2, 0, 1)
    out = np.zeros((3, h, max_w), np.float32)
    out[:, :, :w] = a
    return out


def rec_set(n: int, seed: int):
    rng = np.random.default_rng(seed)
    texts = [random_text(rng) for _ in range(n)]
    x = np.stack([line_tensor(render_line(t, int(rng.integers(26, 40)))) for t in texts])
    return x, texts


def shifted_set(n: int, seed: int):
    """`n` lines in another style than `rec_set`: a random DejaVu font (24-39 px), contrast
    ×0.6-1.0 and brightness ±30 grey levels around mid-grey, Gaussian noise σ = 8 grey levels."""
    from PIL import Image, ImageFont

    fonts = shifted_fonts()
    if not fonts:
        raise SystemExit(f"no DejaVu fonts in {FONT_DIR} (apt-get install fonts-dejavu-core fonts-dejavu-extra)")
    rng = np.random.default_rng(seed)
    texts = [random_text(rng) for _ in range(n)]
    xs = []
    for t in texts:
        font = ImageFont.truetype(fonts[int(rng.integers(len(fonts)))], int(rng.integers(24, 40)))
        a = np.asarray(render_line(t, font.size, font), np.float32)
        contrast, brightness = rng.uniform(0.6, 1.0), rng.uniform(-30, 30)
        a = (a - 128.0) * contrast + 128.0 + brightness + rng.normal(0.0, 8.0, a.shape)
        xs.append(line_tensor(Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))))
    return np.stack(xs), texts


def rec_model() -> tuple[str, list[str]]:
    """(path of the PP-OCRv4 recognizer, its characters), or exit saying what to install."""
    if MODELS is None:
        raise SystemExit("pip install --no-deps rapidocr-onnxruntime==1.4.4 (the PP-OCR ONNX models)")
    src = os.path.join(MODELS, REC)
    return src, characters(src)


def characters(model_path: str) -> list[str]:
    import onnx

    m = onnx.load(model_path, load_external_data=False)
    chars = {p.key: p.value for p in m.metadata_props}["character"].splitlines()
    return ["<blank>"] + chars + [" "]


def ctc_greedy(probs: np.ndarray, chars: list[str]) -> list[str]:
    out = []
    for seq in probs.argmax(-1):
        s, prev = [], 0
        for k in seq:
            if k != prev and k != 0:
                s.append(chars[k])
            prev = k
        out.append("".join(s))
    return out


def exact_match(pred: list[str], truth: list[str]) -> float:
    return float(np.mean([p.strip() == t for p, t in zip(pred, truth, strict=True)]))


# ---- detection -------------------------------------------------------------------------
def render_page(rng, size: int = 480, lines: int = 8):
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)
    boxes = []
    y = int(rng.integers(8, 24))
    for _ in range(lines):
        fs = int(rng.integers(18, 30))
        text = random_text(rng, 4, 14)
        font = _font(fs)
        x = int(rng.integers(8, size // 3))
        x0, y0, x1, y1 = draw.textbbox((x, y), text, font=font)
        if y1 > size - 8 or x1 > size - 8:
            break
        draw.text((x, y), text, font=font, fill="black")
        boxes.append((x0, y0, x1, y1))
        y = y1 + int(rng.integers(10, 30))
    return img, boxes


def det_tensor(img) -> np.ndarray:
    a = np.asarray(img, np.float32) / 255.0
    a = (a - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    return a.transpose(2, 0, 1)[None].astype(np.float32)


def det_set(n: int, seed: int):
    rng = np.random.default_rng(seed)
    pages = [render_page(rng) for _ in range(n)]
    return [det_tensor(p) for p, _ in pages], [b for _, b in pages]


def boxes_from_map(prob: np.ndarray, thresh: float = 0.3, box_thresh: float = 0.5, unclip: float = 1.6):
    from scipy import ndimage

    p = prob.reshape(prob.shape[-2:])
    lab, n = ndimage.label(p > thresh)
    out = []
    for k, sl in enumerate(ndimage.find_objects(lab), 1):
        if sl is None:
            continue
        ys, xs = sl
        h, w = ys.stop - ys.start, xs.stop - xs.start
        if min(h, w) < 3 or p[sl][lab[sl] == k].mean() < box_thresh:
            continue
        d = h * w * unclip / (2 * (h + w))
        out.append((xs.start - d, ys.start - d, xs.stop + d, ys.stop + d))
    return out


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    ua = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / ua if ua > 0 else 0.0


def det_recall(preds: list[list], truths: list[list], thr: float = 0.5) -> tuple[float, float]:
    """(recall, precision) of line boxes at IoU >= thr (one-to-one, greedy)."""
    hit = tot = npred = used_pred = 0
    for pb, tb in zip(preds, truths, strict=True):
        used = set()
        for t in tb:
            best, bi = 0.0, None
            for i, p in enumerate(pb):
                if i not in used:
                    v = iou(t, p)
                    if v > best:
                        best, bi = v, i
            if best >= thr:
                used.add(bi)
                hit += 1
        tot += len(tb)
        npred += len(pb)
        used_pred += len(used)
    return hit / max(tot, 1), used_pred / max(npred, 1)


# ---- classification ----------------------------------------------------------------------
def cls_set(n: int, seed: int):
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for k in range(n):
        img = render_line(random_text(rng), int(rng.integers(26, 40)))
        flip = k % 2 == 1
        if flip:
            img = img.rotate(180)
        xs.append(line_tensor(img, 48, 192))
        ys.append(int(flip))
    return np.stack(xs), np.array(ys)
