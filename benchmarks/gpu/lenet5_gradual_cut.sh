#!/usr/bin/env bash
# Run on the lent GPU machine from the repo root, with .gpu/ carried: .gpu/mnist (a copy of ../shared/data/mnist) and
# .gpu/whl (torch-pruning and onnx2torch wheels: `pip download --no-deps -d .gpu/whl torch-pruning==1.6.1 onnx2torch==1.5.15`).
# Results come back as $OUT/a-cells.json and $OUT/b-cells.json (merged into one cells.json, then --render).
# LeNet-5 GPU table, 20 epochs, 3 seeds: DWF D3 (gradual cut), DWF D3 first half dense (same budget), GMP; D4 + dense.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
nvidia-smi -L; nproc
python3 -c "import torch, torch_pruning, onnx2torch; print(torch.__version__, torch.cuda.is_available())" || exit 1
common="--full --model lenet5 --epochs 20 --device cuda --data mnist-idx:.gpu/mnist"
( python3 -m benchmarks.mnist_table $common --methods dwf-d3,dwf-d3-half,gmp --crs 50,100,200,500 --seeds 0,1,2 \
    --jobs 12 --out /tmp/a 2>&1 | sed 's/^/A /' ) &
pa=$!
( python3 -m benchmarks.mnist_table $common --methods dwf-d4 --crs 200,500 --seeds 0,1,2 --jobs 4 --out /tmp/b 2>&1 \
    | sed 's/^/B /'; python3 -m benchmarks.mnist_table $common --methods dense --seeds 0,1,2 --jobs 4 --out /tmp/b 2>&1 \
    | sed 's/^/B /' ) &
pb=$!
( while sleep 15; do for x in a b; do [ -f /tmp/$x/cells.json ] && cp /tmp/$x/cells.json $OUT/$x-cells.json; done; done ) &
copier=$!
wait $pa $pb
for x in a b; do [ -f /tmp/$x/cells.json ] && cp /tmp/$x/cells.json $OUT/$x-cells.json; done
kill $copier
echo DONE
