"""Run one of nnU-Net v2's console commands, unchanged, from the nnU-Net venv's python:

    python nnunet_cli.py train|predict|plan_and_preprocess [nnU-Net's own arguments...]

the same as nnUNetv2_train / nnUNetv2_predict / nnUNetv2_plan_and_preprocess. The one
addition: with TORCH_THREADS=N set, torch never uses more than N intra-op threads (nnU-Net's
`-device cpu` calls torch.set_num_threads(cpu_count()) itself, ignoring OMP_NUM_THREADS). Left
unset (the benchmark run), nnU-Net picks its threads as it always does; the smoke test sets 1
so that it stays out of the way of other jobs on the machine.
"""

import importlib
import os
import sys

ENTRY_POINTS = {
    "train": "nnunetv2.run.run_training:run_training_entry",
    "predict": "nnunetv2.inference.predict_from_raw_data:predict_entry_point",
    "plan_and_preprocess": "nnunetv2.experiment_planning.plan_and_preprocess_entrypoints:"
    "plan_and_preprocess_entry",
}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in ENTRY_POINTS:
        sys.exit(f"usage: {sys.argv[0]} {'|'.join(ENTRY_POINTS)} [args...]")
    command = sys.argv[1]
    cap = os.environ.get("TORCH_THREADS")
    if cap:
        import torch

        cap = int(cap)
        set_num_threads = torch.set_num_threads
        torch.set_num_threads = lambda n: set_num_threads(max(1, min(int(n), cap)))
        set_num_threads(cap)
    module, function = ENTRY_POINTS[command].split(":")
    sys.argv = [f"nnUNetv2_{command}", *sys.argv[2:]]
    getattr(importlib.import_module(module), function)()


if __name__ == "__main__":
    main()
