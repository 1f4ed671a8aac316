"""Training speed of the model variants (issue 5, Performance).

For each variant (plain/residual/dense U-Net and a transfer-learning U-Net) at the teaching (96) and
paper (512) image sizes: training images/s after warm-up, and the achieved GFLOP/s next to a float32
matmul measured in the same process just before that variant, as a ratio.

FLOPs of one training step = 3 x forward FLOPs (backward ~ 2 x forward) x images, where the forward
FLOPs are counted by `medcnn_nb.models.forward_flops` from the layer shapes (convolutions, transposed
convolutions and dense layers, 2 FLOPs per multiply-accumulate; BatchNorm, activations, pooling and
resizing are left out, so the figure is a slight underestimate).

    python bench/bench_models.py                        # teaching and paper sizes, float32
    python bench/bench_models.py --sizes 96 --precision float32,mixed_bfloat16 --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np


def matmul_gflops(n: int = 2048, seconds: float = 1.0) -> float:
    "Achieved float32 GFLOP/s of an n x n matmul through keras.ops on the active backend."
    import keras
    from keras import ops
    a = keras.random.normal((n, n), dtype="float32", seed=0); b = keras.random.normal((n, n), dtype="float32", seed=1)
    ops.convert_to_numpy(ops.matmul(a, b)[0, 0])  # warm-up
    reps, t0 = 0, time.perf_counter()
    while True:
        c = ops.matmul(a, b); reps += 1
        if reps % 4 == 0:
            ops.convert_to_numpy(c[0, 0])  # synchronise (asynchronous backends)
            if time.perf_counter() - t0 > seconds: break
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


def build(variant: str, size: int, channels: int, base_filters: int, depth: int):
    from medcnn_nb.models import SEGMENTATION_ARCHS, build_model
    if variant in SEGMENTATION_ARCHS:
        return build_model(variant, (size, size, channels), base_filters=base_filters, depth=depth)
    from medcnn_nb.transfer import build_transfer_unet  # a backbone name: fine-tuning the whole network
    return build_transfer_unet(variant, (size, size, channels), freeze_encoder=False)


def bench_variant(variant: str, size: int, batch: int, steps: int, warmup: int, precision: str,
                  channels: int, base_filters: int, depth: int, loss: str) -> dict:
    import keras
    from medcnn_nb.models import forward_flops
    keras.mixed_precision.set_global_policy(precision)
    keras.utils.set_random_seed(0)
    model = build(variant, size, channels, base_filters, depth)
    try:
        from medcnn_nb.losses import get_loss
        loss_fn = get_loss(loss)
    except ImportError:
        loss_fn = "binary_crossentropy"
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss_fn)
    rng = np.random.default_rng(0)
    x = rng.random((batch * steps, size, size, channels), dtype=np.float32)
    y = (rng.random((batch * steps, size, size, 1)) > 0.95).astype("float32")
    t0 = time.perf_counter()
    model.fit(x[: batch * warmup], y[: batch * warmup], batch_size=batch, epochs=1, verbose=0, shuffle=False)
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    model.fit(x, y, batch_size=batch, epochs=1, verbose=0, shuffle=False)
    seconds = time.perf_counter() - t0
    fwd = forward_flops(model)
    images_per_s = batch * steps / seconds
    keras.mixed_precision.set_global_policy("float32")
    return dict(variant=variant, size=size, batch=batch, steps=steps, precision=precision, params=model.count_params(),
                forward_gflop_per_image=fwd / 1e9, warmup_s=warm_s, images_per_s=images_per_s,
                achieved_gflops=3 * fwd * images_per_s / 1e9)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default="unet,resunet,denseunet,vgg16",
                   help="comma list: unet, resunet, denseunet and/or a transfer backbone (vgg16, resnet50, ...)")
    p.add_argument("--sizes", default="96,512", help="image sizes (teaching 96, paper 512)")
    p.add_argument("--batch", default="16,2", help="batch size per image size (same order as --sizes)")
    p.add_argument("--steps", default="12,3", help="timed training steps per image size")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (graph tracing)")
    p.add_argument("--precision", default="float32", help="comma list of Keras dtype policies, e.g. float32,mixed_bfloat16")
    p.add_argument("--channels", type=int, default=1, help="input channels (1 CT, 4 MRI)")
    p.add_argument("--base-filters", type=int, default=16, help="U-Net width (teaching 16, paper 32)")
    p.add_argument("--depth", type=int, default=3, help="U-Net depth (teaching 3, paper 4)")
    p.add_argument("--loss", default="dice", help="loss name for medcnn_nb.losses.get_loss")
    p.add_argument("--matmul-n", type=int, default=2048, help="side of the float32 reference matmul")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    import keras
    from medcnn_nb.config import env_report
    sizes = [int(s) for s in args.sizes.split(",")]
    per_size = lambda text: dict(zip(sizes, [int(v) for v in text.split(",")] + [int(text.split(",")[-1])] * len(sizes)))
    batches, steps = per_size(args.batch), per_size(args.steps)
    print(env_report(), flush=True)
    print(f"U-Net width {args.base_filters}, depth {args.depth}; {args.channels} input channel(s); loss {args.loss}", flush=True)
    header = f"{'variant':>10} {'size':>5} {'batch':>5} {'precision':>15} {'params':>11} {'GFLOP/img':>10} {'img/s':>8} {'GFLOP/s':>8} {'matmul':>8} {'ratio':>6}"
    print(header, flush=True)
    results = []
    for size in sizes:
        for precision in args.precision.split(","):
            for variant in args.variants.split(","):
                # the matmul just before and just after the variant: on a shared machine both see similar load
                before = matmul_gflops(args.matmul_n)
                r = bench_variant(variant, size, batches[size], steps[size], args.warmup, precision, args.channels,
                                  args.base_filters, args.depth, args.loss)
                after = matmul_gflops(args.matmul_n)
                mm = (before + after) / 2
                r.update(matmul_gflops=mm, matmul_before=before, matmul_after=after, ratio=r["achieved_gflops"] / mm)
                results.append(r)
                print(f"{variant:>10} {size:>5} {r['batch']:>5} {precision:>15} {r['params']:>11,} {3 * r['forward_gflop_per_image']:>10.2f} "
                      f"{r['images_per_s']:>8.1f} {r['achieved_gflops']:>8.1f} {mm:>8.1f} {r['ratio']:>6.2f}  (matmul {before:.0f} before, {after:.0f} after)", flush=True)
    print("GFLOP/img is per training image (3 x forward); matmul: float32 GFLOP/s of a "
          f"{args.matmul_n}x{args.matmul_n} keras.ops.matmul, mean of the runs just before and just after each row.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(env=env_report(), machine=platform.machine(), cpus=os.cpu_count(), args=vars(args), results=results), f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
