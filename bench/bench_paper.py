"""Time `medcnn-paper` end to end (phantom generation included) and summarise Tables 1-2.

    .venv/bin/python bench/bench_paper.py --profile teaching          # the `make paper` budget: <= 10 min (issue 13)
    .venv/bin/python bench/bench_paper.py --profile smoke              # the smoke budget: <= 3 min

It starts from an empty output folder and an empty phantom folder (so generation and the slice cache are
timed too), reports wall time, the CPU time of the whole process tree and the machine's load average
(other processes on a shared machine slow the run down), and, from the CSV tables, whether the optimised
variant beats the unoptimised one on Dice and sensitivity for each dataset. From the folds' manifests it
reports the time per fold (total, fitting, evaluating) and the training throughput (images/s while fitting),
per dataset and variant and over all folds.
"""
import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def fold_timings(runs: Path) -> dict:
    "Per dataset/variant and over all folds: folds, seconds per fold (mean, min, max), fit seconds and training images/s."
    rows = []
    for m in sorted(runs.glob("*/*/fold*/manifest.json")):
        man = json.loads(m.read_text())
        t = man.get("timings_s", {})
        images = man.get("train_images_per_epoch", 0) * max(man.get("epochs_run", 0) - (man.get("resumed_from_epoch") or 0), 0)
        rows.append(dict(group=f"{man['dataset']}/{man['variant']['name']}", total=t.get("total", 0.0), fit=t.get("fit", 0.0),
                         evaluate=t.get("evaluate", 0.0), images=images, epochs=man.get("epochs_run", 0)))
    if not rows: return {}
    df = pd.DataFrame(rows)
    def summary(g):
        return dict(folds=len(g), fold_s_mean=round(g.total.mean(), 1), fold_s_min=round(g.total.min(), 1),
                    fold_s_max=round(g.total.max(), 1), fit_s=round(g.fit.sum(), 1), evaluate_s=round(g.evaluate.sum(), 1),
                    epochs_mean=round(g.epochs.mean(), 1), train_images=int(g.images.sum()),
                    train_images_per_s=round(g.images.sum() / g.fit.sum(), 1) if g.fit.sum() > 0 else None)
    return {"all": summary(df), **{k: summary(g) for k, g in df.groupby("group")}}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", default="teaching")
    p.add_argument("--work", type=Path, help="scratch folder (default: a new temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder")
    p.add_argument("extra", nargs="*", help="more medcnn-paper flags, after --")
    args = p.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_paper_"))
    shutil.rmtree(work / "outputs", ignore_errors=True); shutil.rmtree(work / "phantoms", ignore_errors=True)
    cmd = [sys.executable, "-c", "import sys; from medcnn_nb.paper import main; sys.exit(main(sys.argv[1:]))",
           "--profile", args.profile, "--out", str(work / "outputs"), "--phantoms", str(work / "phantoms"), "--quiet",
           *args.extra]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(run.stdout[-4000:])
    if run.returncode:
        print(run.stderr[-4000:]); return run.returncode
    root = work / "outputs" / args.profile
    manifest = json.loads((root / "manifest.json").read_text())
    result = dict(profile=args.profile, wall_s=round(wall, 1), cpu_user_s=round(usage.ru_utime, 1),
                  cpu_sys_s=round(usage.ru_stime, 1), load_avg_before=load_before, load_avg_after=os.getloadavg(),
                  cores=os.cpu_count(), hardware=manifest["hardware"], timings_s=manifest["timings_s"],
                  folds=fold_timings(root / "runs"))
    headline = {"lidc": ("slice_sensitivity", "dice_case"), "brats": ("voxel_sensitivity", "dice_wt")}
    for dataset, table in (("lidc", "table1_lidc"), ("brats", "table2_brats")):
        t = pd.read_csv(root / "tables" / f"{table}.csv").set_index("key")
        rows = {}
        for key in t.index:
            rows[key] = {v: (round(t.loc[key, f"{v}_mean"], 4), round(t.loc[key, f"{v}_sd"], 4)) for v in ("unoptimised", "optimised")}
        result[dataset] = rows
        result[f"{dataset}_optimised_beats_baseline"] = {
            k: bool(t.loc[k, "optimised_mean"] > t.loc[k, "unoptimised_mean"]) for k in headline[dataset]}
    print(json.dumps(result, indent=1))
    for table in ("table1_lidc", "table2_brats", "table3_ablation"):
        print((root / "tables" / f"{table}.md").read_text())
    if not args.keep and args.work is None: shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
