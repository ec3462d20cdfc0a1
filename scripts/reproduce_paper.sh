#!/usr/bin/env bash
# The paper's whole grid on a machine that has the data (run it on a GPU: see BUILD_NOTES.md,
# "Reproducing the paper", for the measured cost):
#   bash scripts/reproduce_paper.sh CORE50_DIR CIFAR_DIR [OUT_DIR] [GOOGLENET_CHECKPOINT]
# CORE50_DIR: the official CORe50 files (python -m cljax.data download core50 --data_dir=CORE50_DIR);
# CIFAR_DIR: cifar-10-python.tar.gz and cifar-100-python.tar.gz (or tfds-prepared data);
# GOOGLENET_CHECKPOINT: ImageNet GoogLeNet weights imported with python -m cljax.models.import_torch
# (the paper starts CORe50 models from ImageNet; without it GoogLeNet starts from random weights).
# Every command resumes where it stopped if the script is run again.
set -euo pipefail
core50=${1:?usage: reproduce_paper.sh CORE50_DIR CIFAR_DIR [OUT_DIR] [GOOGLENET_CHECKPOINT]}
cifar=${2:?usage: reproduce_paper.sh CORE50_DIR CIFAR_DIR [OUT_DIR] [GOOGLENET_CHECKPOINT]}
out=${3:-runs/paper}
googlenet_ckpt=${4:-}

# CORe50 SIT-NC, 10 official runs, all eight strategies (Fig. 7, Table 4).
python3 -m cljax.main --config=configs/core50_nc.py:all,caffenet --config.data_dir="$core50" \
  --workdir="$out/core50_nc_caffenet"
googlenet_init=()
[ -n "$googlenet_ckpt" ] && googlenet_init=(--config.init_checkpoint="$googlenet_ckpt" --config.lrn=False)
python3 -m cljax.main --config=configs/core50_nc.py:all,googlenet --config.data_dir="$core50" \
  "${googlenet_init[@]}" --workdir="$out/core50_nc_googlenet"

# AR1 against the rehearsal strategies on CORe50 NC, GoogLeNet, 3 runs (sec. 4.4, Fig. 9). Left: REHE,
# GEM and iCaRL with memories of 2,500, 4,500 and 7,500 patterns (a hyper-grid on memory_size in one
# workdir: its report draws final accuracy against memory size). Right: AR1 and iCaRL on 25 batches of
# 2 classes (each official run's class order cut into pairs); BWT in the report's tables.
for panel in left right; do
  python3 -m cljax.main --config=configs/core50_nc.py:fig9_$panel,googlenet --config.data_dir="$core50" \
    "${googlenet_init[@]}" --workdir="$out/core50_fig9_$panel"
done

# iCIFAR-100 with CifarNet pre-trained on CIFAR-10 (sec. 4.3, Fig. 8, Table 5).
[ -d "$out/cifarnet_cifar10" ] || python3 scripts/pretrain.py --data_dir="$cifar" --out="$out/cifarnet_cifar10"
python3 -m cljax.main --config=configs/icifar100.py:all --config.data_dir="$cifar" \
  --config.init_checkpoint="$out/cifarnet_cifar10" --workdir="$out/icifar100"

# CIFAR-10/100 split, first 6 batches, MT against SIT (Fig. 3).
for setting in sit mt; do
  python3 -m cljax.main --config=configs/cifar_split.py:all,$setting --config.data_dir="$cifar" \
    --workdir="$out/cifar_split_$setting"
done
python3 -m cljax.report --workdir="$out/cifar_split_sit" --compare="$out/cifar_split_mt"
