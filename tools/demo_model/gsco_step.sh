#!/bin/sh
# The GSCo step of the demo recipe (TRAINING.md), after the generalist's own
# training: specialists, case library, MoED / RAD annotations, the generalist
# fine-tuned on GSCo prompts. Every step is time-budgeted and runs with one
# torch thread under nice (the machine is shared); the step times are printed.
#
# usage: tools/demo_model/gsco_step.sh WORK_DIR [GENERALIST_DIR]
#   GENERALIST_DIR: the generalist to fine-tune (default models/demo)
# env: SPEC_MINUTES (each chest run; the others get less), GSCO_MINUTES, NICE (default 10)
# The shipped weights come from runs continued over five sessions (TRAINING.md);
# this script runs the same steps from scratch in one go.
# Writes WORK_DIR/specialists/<modality>/ (HF ViTForImageClassification),
# WORK_DIR/library/<modality>/{*.png,labels.csv} (the case library),
# WORK_DIR/annotations-{query,held}.json, WORK_DIR/generalist/ (the GSCo model).
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=$1
GEN=${2:-$HERE/../../models/demo}
SPEC_MINUTES=${SPEC_MINUTES:-8}  # each of the four chest runs
GSCO_MINUTES=${GSCO_MINUTES:-25}  # each of the three generalist runs
NICE=${NICE:-10}
PY="nice -n $NICE /usr/bin/python3"
S="$HERE/specialists.py"
mkdir -p "$WORK"
cd "$WORK"
t0=$(date +%s)
stamp() { echo "[gsco_step] $(( $(date +%s) - t0 )) s: $*"; }

# 1. phantoms (two processes): specialist training seeds + their library PNGs,
#    calibration seeds, held-out seeds, and the generalist's GSCo seeds (224 px too)
stamp render
$PY "$S" render train-chest --seeds 0:2000 --modalities chest --png library > render-a.log &
A=$!
{ $PY "$S" render val --seeds 900000:900150 &&
  $PY "$S" render held --seeds 5000000:5000200 --sizes 112,224 &&
  $PY "$S" render train-other --seeds 0:800 --modalities derm,fundus,endo --png library &&
  $PY "$S" render train-fundus --seeds 800:3200 --modalities fundus &&
  $PY "$S" render train-chest2 --seeds 2300:4800 --modalities chest --png library2 &&
  $PY "$S" render train-chest3 --seeds 4800:8800 --modalities chest --png library3 &&
  # the generalist's GSCo images: seeds neither the generalist (0-2399) nor a specialist was trained on,
  # so its own reading of them is as wrong as on new images and the prompt is worth following
  $PY "$S" render query --seeds 10000:11000 --modalities chest --sizes 112,224 &&
  $PY "$S" render query --seeds 10000:10300 --modalities derm,fundus,endo --sizes 112,224 &&
  $PY "$S" render query2 --seeds 11000:13000 --modalities chest --sizes 112,224; } > render-b.log
wait $A
stamp rendered

# 2. specialists (chest, derm, endo; fundus at patch 8, session 9: at patch 14 it learnt nothing in the
#    time, see TRAINING.md), then per-label temperatures on the calibration seeds
T="$PY $S train --size 112 --patch 14"
$T specialists/chest-a --modality chest --data train-chest --minutes "$SPEC_MINUTES"
$T specialists/chest-b --modality chest --data train-chest,train-chest2,train-chest3 --minutes "$SPEC_MINUTES" \
  --init specialists/chest-a --lr 1e-3 --warmup 20
$T specialists/chest-c --modality chest --data train-chest,train-chest2,train-chest3 --minutes "$SPEC_MINUTES" \
  --init specialists/chest-b --lr 7e-4 --warmup 20
$T specialists/derm --modality derm --data train-other --minutes 2
$T specialists/endo-a --modality endo --data train-other --minutes 2
$T specialists/endo --modality endo --data train-other --minutes 3 --init specialists/endo-a --warmup 5
$T specialists/fundus --modality fundus --data train-other,train-fundus --minutes 14 --patch 8
for m in derm fundus endo; do
  $PY "$S" calibrate specialists/$m --val val --held held > calibrate-$m.log
done
# the specialists that annotate the generalist's GSCo seeds: chest-c has not seen them
rm -rf annotators && mkdir annotators && cp -r specialists/chest-c annotators/chest &&
  cp -r specialists/derm specialists/endo annotators/
$PY "$S" calibrate annotators/chest --val val --held held > calibrate-annotator-chest.log
stamp specialists

# 3. MoED / RAD for the generalist's GSCo seeds (by the annotators) and for the held-out seeds (bench --annotations)
LIB=train-chest,train-chest2,train-chest3,train-other
# (fundus left out here: the generalist runs of step 4 were trained with fundus always gsco off; session 9's
#  fundus specialist came after them, and step 5 (session 10) adds fundus)
$PY "$S" annotate annotations-query.json --models annotators --modalities chest,derm,endo --library $LIB \
  --query query,query2
stamp annotated

# 2b. the shipped chest specialist: chest-c continued with the 1,000 chest GSCo seeds of `query` as more
#     training data (after they were annotated)
$T specialists/chest --modality chest --data train-chest,train-chest2,train-chest3,query --minutes "$SPEC_MINUTES" \
  --init specialists/chest-c --lr 5e-4 --warmup 20
# 2c. session 6: continued again on 6,000 more chest phantoms (query2's seeds and 13000-16999), recalibrated
$PY "$S" render query3 --seeds 13000:17000 --modalities chest > render-c.log
mv specialists/chest specialists/chest-d
$T specialists/chest --modality chest --data train-chest,train-chest2,train-chest3,query,query2,query3 \
  --minutes "$SPEC_MINUTES" --init specialists/chest-d --lr 5e-4 --warmup 20
$PY "$S" calibrate specialists/chest --val val --held held > calibrate-chest.log
$PY "$S" annotate annotations-held.json --models specialists --modalities chest,derm,fundus,endo --library $LIB --query held
stamp "chest specialist"

# 4. the generalist on GSCo prompts (ViT frozen, decoder trained; GSCo dropout), then again at half the rate
$PY "$HERE/train_gsco.py" "$GEN" generalist-a --cache query --annotations annotations-query.json \
  --minutes "$GSCO_MINUTES" --imgs 8 --qa 1 --mix 0.9,0.04,0.03 --modality-weights 1,1,1,1 \
  --modes 0.45,0.15,0.15,0.25 --checkpoint-minutes 6 > train-gsco-a.log
$PY "$HERE/train_gsco.py" generalist-a generalist-b --cache query --annotations annotations-query.json \
  --minutes "$GSCO_MINUTES" --imgs 8 --qa 1 --lr 5e-4 --warmup 10 --seed 1357 --mix 0.9,0.04,0.03 \
  --modality-weights 1,1,1,1 --modes 0.45,0.15,0.15,0.25 --checkpoint-minutes 6 > train-gsco-b.log
# session 5: 2,000 more chest GSCo seeds, more prompts with both sentences, the finding-set tokens weighted 3
$PY "$HERE/train_gsco.py" generalist-b generalist --cache query,query2 --annotations annotations-query.json \
  --minutes "$GSCO_MINUTES" --imgs 8 --qa 1 --lr 5e-4 --warmup 10 --seed 9753 --mix 0.9,0.04,0.03 \
  --modality-weights 1,1,1,1 --modes 0.5,0.15,0.15,0.2 --decision-weight 3 --checkpoint-minutes 6 > train-gsco.log
stamp "generalist fine-tuned"

# 5. session 10: the generalist continued on GSCo prompts of all four modalities, fundus annotated by the
#    fundus specialist (until then fundus was always gsco off), on seeds no model had been trained on: chest
#    17000-18999 (the shipped chest specialist was trained on 0-16999), derm / endo 10000-10299, fundus
#    10000-11299; annotated by the shipped specialists (chest, derm, fundus, endo) with the library LIB
#    (train-other holds fundus 0-799, the gain table's library). Low rate, 4 of 9 image draws fundus.
$PY "$S" render query10c --seeds 17000:19000 --modalities chest --sizes 112,224 > render-d.log
$PY "$S" render query10o --seeds 10000:10300 --modalities derm,endo --sizes 112,224 >> render-d.log
$PY "$S" render query10f --seeds 10000:11300 --modalities fundus --sizes 112,224 >> render-d.log
$PY "$S" annotate annotations-query10.json --models specialists --modalities chest,derm,fundus,endo --library $LIB \
  --query query10c,query10o,query10f
mv generalist generalist-s5
$PY "$HERE/train_gsco.py" generalist-s5 generalist --cache query10c,query10o,query10f \
  --annotations annotations-query10.json --minutes 28 --imgs 8 --qa 1 --lr 3e-4 --warmup 10 --seed 1010 \
  --mix 0.9,0.04,0.03 --modality-weights 1,1.5,1.5,1.5 --modes 0.5,0.15,0.15,0.2 --decision-weight 3 \
  --checkpoint-minutes 7 > train-gsco-10.log
stamp "generalist with fundus GSCo"
