"""Time the reference pipeline (Pillow 9.4 + torchvision, one thread) on given files, as
shared/reference/gen/images/bench.py does: load_image end to end (open + convert('RGB'),
dynamic tiling, ToTensor/Normalize, stack). Prints one line per file with the median wall
and process CPU time in ms, in a form run.sh parses.
Usage: python3 bench_pillow.py REFERENCE_GEN_IMAGES_DIR RUNS MAX_NUM FILE..."""
import statistics
import sys
import time


def main(argv):
    if len(argv) < 5:
        print(__doc__, file=sys.stderr)
        return 2
    sys.path.insert(0, argv[1])
    import nvlm_preprocess as npre
    import torch
    torch.set_num_threads(1)
    runs, max_num = int(argv[2]), int(argv[3])
    for path in argv[4:]:
        def once():
            c0, t0 = time.process_time(), time.perf_counter()
            img = npre.load_rgb(path)
            grid, tiles = npre.make_tiles(img, max_num)
            pv = npre.to_pixel_values(tiles)
            assert pv.dtype == torch.float32
            return time.perf_counter() - t0, time.process_time() - c0, grid, tuple(pv.shape)
        once()
        r = [once() for _ in range(runs)]
        wall = statistics.median(x[0] for x in r) * 1e3
        cpu = statistics.median(x[1] for x in r) * 1e3
        print("pillow %s grid %s tensor %s wall_ms %.1f cpu_ms %.1f" % (path, r[0][2], r[0][3], wall, cpu))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
