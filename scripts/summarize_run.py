"""
Summarise a training run from its TensorBoard logs: write the learning curve as a PNG and print one line with the best
validation Dice, where the best model is, and how to open the logs.

Usage::

    python scripts/summarize_run.py --run_dir runs/demo --ckpt_dir runs/demo/models
"""

from __future__ import annotations

from pathlib import Path

import fire
import matplotlib
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CURVES = (("train_loss", "training loss (per iteration)"), ("train_mean_dice", "training Dice"))
VALIDATION = "val_mean_dice"


def read_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in the TensorBoard event files under ``log_dir``, as ``(step, value)`` pairs."""
    if not any(log_dir.glob("events.out.tfevents.*")):
        raise SystemExit(f"error: {log_dir}: no TensorBoard event files; is this a training run's output folder?")
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def plot_learning_curve(scalars: dict[str, list[tuple[int, float]]], out: Path) -> None:
    """Plot the training loss, and the training and validation Dice by epoch, side by side."""
    figure, (loss_axis, dice_axis) = plt.subplots(1, 2, figsize=(10, 3.6))
    steps, values = zip(*scalars.get("train_loss", [(0, float("nan"))]))
    loss_axis.plot(steps, values, linewidth=0.8)
    loss_axis.set(xlabel="iteration", ylabel="loss (Dice + cross-entropy)", title="training loss")
    for tag, label in ((CURVES[1][0], "training"), (VALIDATION, "validation")):
        if scalars.get(tag):
            epochs, dice = zip(*scalars[tag])
            dice_axis.plot(epochs, dice, marker="o", markersize=3, label=label)
    dice_axis.set(xlabel="epoch", ylabel="mean Dice", ylim=(0, 1), title="Dice")
    dice_axis.legend(loc="lower right")
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100)
    plt.close(figure)


def main(run_dir: str = "runs/demo", ckpt_dir: str | None = None, png: str | None = None) -> None:
    """
    Args:
        run_dir: the training run's ``--output_dir`` (its TensorBoard logs are in ``<run_dir>/tensorboard``).
        ckpt_dir: the run's ``--ckpt_dir``, where ``model.pt`` is (default ``<run_dir>/models``).
        png: where to write the learning curve (default ``<run_dir>/learning_curve.png``).
    """
    run, log_dir = Path(run_dir), Path(run_dir) / "tensorboard"
    model = Path(ckpt_dir or run / "models") / "model.pt"
    out = Path(png) if png else run / "learning_curve.png"
    scalars = read_scalars(log_dir)
    plot_learning_curve(scalars, out)
    validation = scalars.get(VALIDATION, [])
    if validation:
        best_epoch, best = max(validation, key=lambda step_value: step_value[1])
        result = f"best validation Dice {best:.3f} at epoch {best_epoch} of {len(validation)} validated"
    else:
        result = "no validation (the final model was saved)"
    print(f"summary: {result}; model: {model}; learning curve: {out}; logs: tensorboard --logdir {log_dir}")


if __name__ == "__main__":
    fire.Fire(main)
