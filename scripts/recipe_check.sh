#!/usr/bin/env bash
# `make recipe`: the quick CPU recipe (`fcdtrain cv --preset quick`) judged on fresh seeds, as
# issue 13 asks: a 40-subject default-lesion cohort (5-fold CV: mean sensitivity and specificity
# ≥ 0.8, Grad-CAM hotspot within 10 mm of the lesion for ≥ 60 % of patients), the exported
# package on a second fresh cohort beside the non-learned baseline (`fcdtrain evaluate`), and
# a negative control: the same recipe on "patients" whose lesion is invisible (contrast 0.001,
# ROI still present) must stay at chance (pooled out-of-fold ROC-AUC < 0.75).
# About an hour on two cores. SEED picks the seeds (SEED, SEED+1, SEED+2); never tune on the
# seeds you then judge on.
set -euo pipefail
cd "$(dirname "$0")/.."
SEED=${SEED:-$(date +%s)}
OUT=${OUT:-out/recipe-$SEED}
PY=.tools/venv/bin/python
scripts/setup.sh
cargo build --release -p fcdnode -p fcdnode-trainer
mkdir -p "$OUT"
echo "recipe: seeds $SEED (cv), $((SEED + 1)) (evaluate), $((SEED + 2)) (negative control) under $OUT"
synth() { target/release/fcdnode synth --subjects 40 --voxel-mm 2 --no-preview "$@"; }
synth --out "$OUT/cohort" --seed "$SEED"
synth --out "$OUT/fresh" --seed $((SEED + 1))
synth --out "$OUT/negative" --seed $((SEED + 2)) --lesion-contrast 0.001

start=$(date +%s)
target/release/fcdtrain cv --data "$OUT/cohort" --out "$OUT/run" --preset quick
echo "recipe: cv wall time $(( $(date +%s) - start )) s"
target/release/fcdtrain export --run "$OUT/run" --out "$OUT/model"
target/release/fcdtrain evaluate --model "$OUT/model" --data "$OUT/fresh" --out "$OUT/evaluate"
target/release/fcdtrain cv --data "$OUT/negative" --out "$OUT/negative-run" --preset quick

"$PY" - "$OUT" <<'PY'
import glob, json, sys
out = sys.argv[1]

def experiment(run):
    m = json.load(open(f"{out}/{run}/metrics.json"))
    (exp,) = m["experiments"].values()
    return exp

def pooled_auc(run):
    """Mann-Whitney ROC-AUC of every out-of-fold prediction of the run."""
    preds = [p for f in glob.glob(f"{out}/{run}/*/fold-*/result.json") for p in json.load(open(f))["predictions"]]
    pos = [p["probability"] for p in preds if p["label"]]
    neg = [p["probability"] for p in preds if not p["label"]]
    wins = sum((a > b) + 0.5 * (a == b) for a in pos for b in neg)
    return wins / (len(pos) * len(neg)), len(preds)

cv = experiment("run")["mean"]
print("cv, mean over 5 folds:", {k: round(v, 3) for k, v in cv.items() if v is not None})
print("cv, pooled out-of-fold ROC-AUC %.3f over %d subjects" % pooled_auc("run"))
ev = json.load(open(f"{out}/evaluate/metrics.json"))
print("evaluate (fresh cohort, model and baseline):", json.dumps(ev)[:3000])
neg_auc, n = pooled_auc("negative-run")
print("negative control, pooled out-of-fold ROC-AUC %.3f over %d subjects;" % (neg_auc, n), experiment("negative-run")["mean"])
failures = []
if cv["sensitivity"] < 0.8: failures.append(f"sensitivity {cv['sensitivity']:.3f} < 0.8")
if cv["specificity"] < 0.8: failures.append(f"specificity {cv['specificity']:.3f} < 0.8")
if cv["hit_10mm"] < 0.6: failures.append(f"hotspot within 10 mm {cv['hit_10mm']:.3f} < 0.6")
if neg_auc >= 0.75: failures.append(f"negative control ROC-AUC {neg_auc:.3f} >= 0.75")
if failures:
    sys.exit("recipe: FAILED: " + "; ".join(failures))
print("recipe: ok")
PY
