"""Where every artifact lives.

The folders and files come from ``params.yaml`` (``paths.*``), which ``dvc.yaml`` interpolates too, so
each path is written once. The names of the files inside a folder are the folder's format, fixed here.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.params import Params

# data/prepared
SOURCE_FILE = "source.npz"  # train/val/test of the source task
TARGET_FILE = "target.npz"  # finetune/val/test of the transfer target task
SUMMARY_FILE = "summary.json"
# one folder per trained model
WEIGHTS = "model.safetensors"
META = "model.json"
HISTORY = "history.csv"
LOSS_WEIGHTS = "loss_modules.safetensors"  # trainable parts of the losses (e.g. a FitNets regressor)
# the models each stage writes, by name (the name is also the paths.* key of its folder)
MODELS = ("teacher", "student", "student_alone", "transferred", "scratch")
# the models exported to ONNX, with the prepared file their test images come from
# the models exported to ONNX (the teacher too: its ONNX Runtime latency is the compression baseline)
EXPORTED = {
    "student": SOURCE_FILE,
    "student_alone": SOURCE_FILE,
    "transferred": TARGET_FILE,
    "teacher": SOURCE_FILE,
}
INT8 = "student_int8"
PARITY_FILE = "parity.json"

# The metrics of a trained model, as its history.csv columns and its MLflow metrics: per epoch ...
TRAIN_LOSS = "train_loss"  # the weighted loss, mean over the epoch's training rows
TRAIN_ACCURACY = "train_accuracy"  # over the labelled training rows
VAL_LOSS = "val_loss"  # cross-entropy on the validation split
VAL_ACCURACY = "val_accuracy"
LR = "lr"  # the first parameter group's learning rate at the end of the epoch
LOSS_TERM = "loss_{}"  # each loss plugin's own term, e.g. loss_kd
LOSS_STATE = "{}_{}"  # a reading a loss module reports at the end of an epoch, e.g. ctkd_temperature
# ... and once it is trained
TEST_ACCURACY = "test_accuracy"
TRAIN_SECONDS = "train_seconds"
PARAMETERS = "parameters"
DISTILL_GAIN = "distill_gain"  # distilled student - student alone, test accuracy
TRANSFER_GAIN = "transfer_gain"  # transferred - scratch, test accuracy on the target task


def model_dir(params: Params, name: str) -> Path:
    if name not in MODELS:
        raise KeyError(f"unknown model '{name}'; models: {', '.join(MODELS)}")
    return Path(getattr(params.paths, name))


def prepared(params: Params, file: str) -> Path:
    return Path(params.paths.prepared) / file


def onnx_file(params: Params, name: str) -> Path:
    return Path(params.paths.onnx) / f"{name}.onnx"


def checkpoint(params: Params, name: str) -> Path:
    return Path(params.paths.checkpoints) / f"{name}.pt"
