# Table III on the paper profile: AttU (gates 1+2) and U-Net, seeds 0-2, all six at once on one GPU.
# Here: python benchmarks/paper_gpu/prep_data.py (writes .devdata/, git-ignored via .git/info/exclude);
# there (device tool, carry .devdata): LIMIT=185 EXTRA="--epochs 30 --step-size 10" bash benchmarks/paper_gpu/run.sh
# Back here: tar xzf paper-runs.tgz -C DIR; python benchmarks/paper_gpu/compare.py DIR
set -u
export OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 PYTHONPATH=$PWD/lib CI=true METERSEG_CACHE=/dev/shm/cache PYTHONUNBUFFERED=1
R=/dev/shm/runs; mkdir -p $R
nvidia-smi -L; python3 -c "import torch; print(torch.__version__)"
python3 -c "from meterseg.config import make_config; from meterseg.dataset import prepare_data; prepare_data(make_config('paper', data='.devdata/water-meters'))" || exit 1
(for i in $(seq 100); do nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader >> $R/gpu_util.txt; sleep 5; done) &
MON=$!; PIDS=""
for s in 0 1 2; do for m in attunet unet; do
  timeout -s INT ${LIMIT:-450} python3 -m meterseg train --profile paper --data .devdata/water-meters --model $m --seed $s ${EXTRA:-} --out $R/$m-s$s > $R/$m-s$s.log 2>&1 &
  PIDS="$PIDS $!"
done; done
wait $PIDS; kill $MON
python3 benchmarks/paper_gpu/finish.py $R/attunet-s* $R/unet-s*
for f in $R/*.log; do tail -2 $f; done
cd $R && tar czf $OUT/paper-runs.tgz --exclude='*.pt' --exclude='*.tmp' --exclude='*.log' . && ls -la $OUT
