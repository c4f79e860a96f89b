#!/usr/bin/env bash
# Issue 14 on a lent GPU: does bf16 autocast cost DWF more than GMP? LeNet-5-Caffe, 20 epochs, 3 seeds, the default
# DWF job (depth by target) and GMP at CR 50/100/200/500, once under bf16 autocast (the default on CUDA) and once in
# float32 (--device cuda-fp32), the same budget for every row. Run from the repo root with .gpu/ carried, as
# lenet5_gradual_cut.sh (.gpu/mnist, .gpu/whl). 48 runs + 6 dense references, 12 at a time on the one GPU.
# Results come back as $OUT/bf16-cells.json and $OUT/fp32-cells.json; copy each to its folder
# (benchmarks/results/mnist-table/lenet5-gpu-bf16 / lenet5-gpu-fp32 as cells.json), then --render.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
nvidia-smi -L; nproc
python3 -c "import torch, torch_pruning, onnx2torch; print(torch.__version__, torch.cuda.is_available())" || exit 1
common="--full --model lenet5 --epochs 20 --data mnist-idx:.gpu/mnist --methods dense,dwf,gmp --crs 50,100,200,500"
pids=()
for kind in bf16 fp32; do
  device=cuda; [ $kind = fp32 ] && device=cuda-fp32
  ( python3 -m benchmarks.mnist_table $common --device $device --seeds 0,1,2 --jobs 6 --out /tmp/$kind 2>&1 \
      | sed "s/^/$kind /" ) &
  pids+=($!)
done
( while sleep 15; do for k in bf16 fp32; do [ -f /tmp/$k/cells.json ] && cp /tmp/$k/cells.json $OUT/$k-cells.json; done; done ) &
copier=$!
wait "${pids[@]}"
for k in bf16 fp32; do [ -f /tmp/$k/cells.json ] && cp /tmp/$k/cells.json $OUT/$k-cells.json; done
kill $copier
echo DONE
