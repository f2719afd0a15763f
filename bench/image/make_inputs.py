"""Deterministic benchmark inputs, the same recipe as shared/reference/gen/images/bench.py
(which takes the photos from python3-skimage; the identical files are in reference/images):
  bench_4000x3000.jpg  astronaut resized to 4000x3000 (BICUBIC) + noise, JPEG quality 90
  bench_3840x2160.png  coffee resized to 3840x2160 + noise, PNG compress_level 6
Usage: python3 make_inputs.py REFERENCE_IMAGES_DIR OUT_DIR"""
import os
import sys

import numpy as np
from PIL import Image


def main(argv):
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    src_dir, out = argv[1], argv[2]
    os.makedirs(out, exist_ok=True)
    specs = [("bench_4000x3000.jpg", "skimage_astronaut.png", (4000, 3000), 21),
             ("bench_3840x2160.png", "skimage_coffee.png", (3840, 2160), 22)]
    for name, src, size, seed in specs:
        p = os.path.join(out, name)
        if os.path.exists(p):
            continue
        base = Image.open(os.path.join(src_dir, src)).convert("RGB").resize(size, Image.Resampling.BICUBIC)
        arr = np.asarray(base).astype(np.int16)
        arr = arr + np.random.default_rng(seed).integers(-3, 4, size=arr.shape, dtype=np.int16)
        im = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        if name.endswith(".jpg"):
            im.save(p, quality=90)
        else:
            im.save(p, compress_level=6)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
