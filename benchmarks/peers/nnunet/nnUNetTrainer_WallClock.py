"""nnU-Net v2's default trainer, stopped by wall clock (emseg peer benchmark).

install.sh copies this file into the venv's nnunetv2/training/nnUNetTrainer/ package: nnU-Net
looks trainer classes up by name (`nnUNetv2_train ... -tr nnUNetTrainer_WallClock`, and again in
nnUNetv2_predict from the checkpoint's `trainer_name`) only inside that package.

Everything of nnUNetTrainer's recipe is kept (plans, network, loss, deep supervision, SGD +
poly LR over the nominal 1000 epochs, 250 training + 50 validation iterations per epoch, data
augmentation, foreground oversampling). What changes:

* run_training checks the clock after every training and every validation iteration and ends
  the run (saving checkpoint_final.pth as usual) once BUDGET_S seconds (default 7200) have
  passed since run_training started. The clock includes nnU-Net's own start-up inside
  run_training (data loaders, unpacking the preprocessed data), not the Python import / plan
  loading before it, nor any prediction.
* Snapshot checkpoints checkpoint_snap_<S>s.pth are written the first time the clock passes each
  S of SNAPSHOTS_S (comma-separated seconds; those >= BUDGET_S are left to checkpoint_final).
* wallclock.json in the fold folder records the budget, the snapshots (with the training
  seconds and iterations at which each was written) and per-iteration seconds.
* perform_actual_validation (nnU-Net's sliding-window prediction of the validation cases after
  training) is skipped unless NNUNET_FINAL_VALIDATION=1: with fold `all` the validation case is
  the training volume itself, so it would only cost time and tell nothing about the test set.
"""

import json
import os
import time as _time

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import join
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


def _seconds_list(text: str) -> list:
    return sorted({float(s) for s in text.replace(" ", "").split(",") if s})


class nnUNetTrainer_WallClock(nnUNetTrainer):
    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = torch.device("cuda"),  # noqa: B008 - nnUNetTrainer's signature
    ):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.budget_s = float(os.environ.get("BUDGET_S", "7200"))
        self.snapshots_s = [
            s for s in _seconds_list(os.environ.get("SNAPSHOTS_S", "")) if 0 < s < self.budget_s
        ]
        self._clock_start = None
        self._snapshots_done = []
        self._train_iter_s = []
        self._val_iter_s = []
        self._epochs_completed = 0
        self._stop_reason = None

    # ----------------------------------------------------------------------------- clock
    def _elapsed(self) -> float:
        return _time.perf_counter() - self._clock_start

    def _tick(self) -> bool:
        """Write due snapshots; True when the budget is spent."""
        elapsed = self._elapsed()
        while self.snapshots_s and elapsed >= self.snapshots_s[0]:
            target = self.snapshots_s.pop(0)
            name = f"checkpoint_snap_{int(round(target))}s.pth"
            t = _time.perf_counter()
            self.save_checkpoint(join(self.output_folder, name))
            self._snapshots_done.append(
                {
                    "snapshot_s": target,
                    "train_seconds": round(elapsed, 2),
                    "iterations": len(self._train_iter_s),
                    "val_iterations": len(self._val_iter_s),
                    "epoch": self.current_epoch,
                    "checkpoint": name,
                    "save_seconds": round(_time.perf_counter() - t, 2),
                }
            )
            self.print_to_log_file(f"Wall clock: snapshot {name} at {elapsed:.1f} s")
            self._write_record(final=False)
        return elapsed >= self.budget_s

    def _write_record(self, final: bool) -> None:
        if self.local_rank != 0:
            return
        tr = np.asarray(self._train_iter_s, dtype=float)
        va = np.asarray(self._val_iter_s, dtype=float)
        record = {
            "trainer": self.__class__.__name__,
            "final": final,
            "stop_reason": self._stop_reason,
            "budget_s": self.budget_s,
            # seconds from the start of run_training to the stop (the budget check that fired)
            "train_seconds": getattr(self, "_train_loop_seconds", None)
            or (round(self._elapsed(), 2) if self._clock_start else None),
            # ... and to now (after on_train_end: checkpoint_final written, loaders shut down)
            "seconds_since_clock_start": round(self._elapsed(), 2) if self._clock_start else None,
            "setup_seconds": getattr(self, "_setup_seconds", None),
            "device": str(self.device),
            "torch_threads": torch.get_num_threads(),
            "batch_size": self.batch_size,
            "patch_size": list(self.configuration_manager.patch_size),
            "num_iterations_per_epoch": self.num_iterations_per_epoch,
            "num_val_iterations_per_epoch": self.num_val_iterations_per_epoch,
            "num_epochs_nominal": self.num_epochs,
            "epochs_completed": self._epochs_completed,
            "iterations": int(tr.size),
            "val_iterations": int(va.size),
            "seconds_per_iteration": round(float(tr.mean()), 4) if tr.size else None,
            "seconds_per_iteration_median": round(float(np.median(tr)), 4) if tr.size else None,
            "seconds_per_iteration_excl_first": round(float(tr[1:].mean()), 4)
            if tr.size > 1
            else None,
            "seconds_first_iteration": round(float(tr[0]), 4) if tr.size else None,
            "seconds_in_train_iterations": round(float(tr.sum()), 2),
            "seconds_per_val_iteration": round(float(va.mean()), 4) if va.size else None,
            "seconds_in_val_iterations": round(float(va.sum()), 2),
            "final_lr": float(self.optimizer.param_groups[0]["lr"]) if self.optimizer else None,
            "snapshots": self._snapshots_done,
        }
        with open(join(self.output_folder, "wallclock.json"), "w") as f:
            json.dump(record, f, indent=2)

    # ------------------------------------------------------------------------- training
    def run_training(self):
        self._clock_start = _time.perf_counter()
        self.print_to_log_file(
            f"Wall clock: budget {self.budget_s:.0f} s, snapshots at {self.snapshots_s} s"
        )
        self.on_train_start()
        self._setup_seconds = round(self._elapsed(), 2)
        stop = self._tick()
        if stop:
            self._stop_reason = "budget spent during start-up"

        for epoch in range(self.current_epoch, self.num_epochs):
            if stop:
                break
            self.on_epoch_start()
            self.on_train_epoch_start()
            train_outputs = []
            for batch_id in range(self.num_iterations_per_epoch):
                t = _time.perf_counter()
                train_outputs.append(self.train_step(next(self.dataloader_train)))
                self._train_iter_s.append(_time.perf_counter() - t)
                if self._tick():
                    stop = True
                    self._stop_reason = (
                        f"budget spent in epoch {epoch}, training iteration {batch_id}"
                    )
                    break
            self.on_train_epoch_end(train_outputs)
            if stop:
                # Mid-epoch stop: no validation pass, no epoch-end bookkeeping (it needs the
                # validation results); checkpoint_final is written by on_train_end below.
                break

            with torch.no_grad():
                self.on_validation_epoch_start()
                val_outputs = []
                for batch_id in range(self.num_val_iterations_per_epoch):
                    t = _time.perf_counter()
                    val_outputs.append(self.validation_step(next(self.dataloader_val)))
                    self._val_iter_s.append(_time.perf_counter() - t)
                    if self._tick():
                        stop = True
                        self._stop_reason = (
                            f"budget spent in epoch {epoch}, validation iteration {batch_id}"
                        )
                        break
                self.on_validation_epoch_end(val_outputs)

            self.on_epoch_end()
            self._epochs_completed += 1
            self._write_record(final=False)

        if self._stop_reason is None:
            self._stop_reason = "all nominal epochs done"
        self._train_loop_seconds = round(self._elapsed(), 2)
        self.on_train_end()
        self._write_record(final=True)
        self.print_to_log_file(
            f"Wall clock: stopped after {self._train_loop_seconds} s "
            f"({len(self._train_iter_s)} training iterations): {self._stop_reason}"
        )

    def perform_actual_validation(self, save_probabilities: bool = False):
        if os.environ.get("NNUNET_FINAL_VALIDATION", "0").lower() in ("1", "true", "t"):
            return super().perform_actual_validation(save_probabilities)
        self.print_to_log_file(
            "Wall clock: final validation skipped (fold all: it would predict the training volume)"
        )
