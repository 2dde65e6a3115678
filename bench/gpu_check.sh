#!/usr/bin/env bash
# The GPU checks, on a lent accelerator machine whose python3 has torch but not
# Celery, Flask or SQLAlchemy (the ML core needs none of them): the ML core's
# tests, CUDA ones included, and the training-speed bench on CUDA.
#   .whl/      pydantic and its wheels for that python (see bench/README.md)
#   .gpudata/  the MNIST IDX files
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD" LATENTFORGE_DATA_DIR="$PWD/.gpudata" PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/gpu-check}"; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
python3 -m pytest -q -p no:cacheprovider tests/test_train.py tests/test_checkpoint.py tests/test_models.py \
  tests/test_seed_equivalence.py tests/test_model_family.py tests/test_sprites.py tests/test_scorecard_metrics.py \
  tests/test_judge.py tests/test_scorecard_evaluate.py 2>&1 | tee "$OUT/pytest.log" | tail -n 15
python3 bench/train_speed.py --device cuda --epochs 4 --rounds 2 2>&1 | tee "$OUT/train_speed.log" | tail -n 12
python3 bench/train_speed.py --device cuda --epochs 4 --rounds 2 --model vae,beta_vae,aae 2>&1 | tee "$OUT/kinds_speed.log" | tail -n 6
