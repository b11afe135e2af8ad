#!/usr/bin/env bash
# The default teacher taken back three ways (issue 23, README "Distil your own model"): after a full
# default `dvc repro` in FULL (default /tmp/full), import its teacher as KIND and rerun the teacher and
# distill stages in /tmp/demo/KIND; compare models/student/model.safetensors with FULL's (md5.txt).
# usage: benchmarks/import_three_ways.sh KIND  (weights | onnx | mlflow): copy /tmp/full's prepared data and teacher, import it, distil
set -euo pipefail
FULL=${FULL:-/tmp/full}
REPO=$(cd "$(dirname "$0")/.." && pwd)
KIND=$1; D=/tmp/demo/$KIND
rm -rf $D; mkdir -p $D
cd "$FULL"
cp -r "$REPO"/pipeline "$REPO"/plugins params.yaml dvc.yaml pyproject.toml teachers $D/
mkdir -p $D/data $D/models; cp -r data/prepared $D/data/; cp -r models/teacher $D/models/teacher_trained
cd $D
export PATH=$REPO/.venv/bin:$PATH PYTHONPATH=$D MLFLOW_TRACKING_URI=sqlite:///$D/mlflow.db
case $KIND in
  weights) cp models/teacher_trained/model.safetensors teachers/t.safetensors
           SRC='{weights: teachers/t.safetensors, model: {name: lenet5, width: 4, hidden: [256]}}';;
  onnx)    python -c "
import numpy as np, torch
from pathlib import Path
from pipeline.modelio import load_model
from pipeline.onnx_model import export_onnx
from pipeline.data import load_splits
m,_=load_model(Path('models/teacher_trained'))
x=load_splits(Path('data/prepared/source.npz'))['test'].x[:2].astype(np.float32)/255
export_onnx(m, Path('teachers/t.onnx'), torch.from_numpy(x), 18)"
           SRC='{onnx: teachers/t.onnx}';;
  mlflow)  python -c "
import numpy as np, torch, mlflow, onnx
from pathlib import Path
from pipeline.modelio import load_model
from pipeline.onnx_model import export_onnx
from pipeline.data import load_splits
m,_=load_model(Path('models/teacher_trained'))
x=load_splits(Path('data/prepared/source.npz'))['test'].x[:2].astype(np.float32)/255
export_onnx(m, Path('/tmp/demo/mlflow-t.onnx'), torch.from_numpy(x), 18)
with mlflow.start_run(experiment_id=mlflow.create_experiment('teachers')):
    mlflow.onnx.log_model(onnx.load('/tmp/demo/mlflow-t.onnx'), name='teacher', registered_model_name='fashion-teacher')
mlflow.tracking.MlflowClient().set_registered_model_alias('fashion-teacher', 'champion', '1')"
           SRC='{mlflow: "models:/fashion-teacher@champion"}';;
esac
python - "$SRC" <<'PY'
import sys, yaml
p = yaml.safe_load(open('params.yaml')); p['teacher']['source'] = yaml.safe_load(sys.argv[1]); p['runtime']['progress'] = False
yaml.safe_dump(p, open('params.yaml', 'w'), sort_keys=False)
PY
/usr/bin/time -f "teacher stage wall %e s" python -m pipeline.teacher > teacher.log 2>&1 || true
/usr/bin/time -f "distill stage wall %e s" python -m pipeline.distill > distill.log 2>&1 || true
md5sum models/student/model.safetensors models/student_alone/model.safetensors > md5.txt
