"""Live metrics in the trackers users already watch: `report_to`, named as TRL and transformers name it.

One tracker run per command: ReST-EM opens it, logs every E-step item (reward, items/s) and every round (reward
mean, fraction positive, failures, the M-step's loss curve, held-out score), and closes it; the M-step's own TRL
trainer reports to nothing, so no second run appears. Off by default (`report_to: []`).

- `tensorboard`: event files under `<run>/tensorboard/` (`pip install 'seal-tt[trackers]'` or `tensorboard`);
  view with `tensorboard --logdir <run>/tensorboard`.
- `trackio`: a local, account-free dashboard (`pip install trackio`; it brings gradio-client and a web server, so it
  is not a dependency); view with `trackio show`.
- `wandb`: Weights & Biases when installed and logged in (or `WANDB_MODE=offline`).
"""

from __future__ import annotations

from pathlib import Path

from core.errors import UserError

KNOWN = ("tensorboard", "trackio", "wandb")


class Tracker:
    """Fan-out to the chosen trackers; a no-op when none is chosen."""

    def __init__(self, sinks: list):
        self.sinks = sinks

    def log(self, metrics: dict, step: int) -> None:
        scalars = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and v == v}
        if scalars:
            for sink in self.sinks:
                sink.log(scalars, step)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
        self.sinks = []


class _TensorBoard:
    def __init__(self, run_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("report_to tensorboard needs the tensorboard package: pip install tensorboard") from None
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def log(self, scalars: dict, step: int) -> None:
        for k, v in scalars.items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _Trackio:
    def __init__(self, run_dir: Path, name: str, config: dict):
        try:
            import trackio
        except ImportError:
            raise UserError("report_to trackio needs trackio: pip install trackio") from None
        self.trackio = trackio
        self.run = trackio.init(project="seal-tt", name=name, config=config)

    def log(self, scalars: dict, step: int) -> None:
        # Item and round metrics count steps on different axes; the axis goes in as a value of its own.
        self.trackio.log({**scalars, "step": step})

    def close(self) -> None:
        self.trackio.finish()


class _WandB:
    def __init__(self, run_dir: Path, name: str, config: dict):
        try:
            import wandb
        except ImportError:
            raise UserError("report_to wandb needs wandb: pip install wandb") from None
        self.run = wandb.init(project="seal-tt", name=name, config=config, dir=str(run_dir))

    def log(self, scalars: dict, step: int) -> None:
        # W&B wants one increasing step for the whole run; item and round metrics have their own axes.
        self.run.log({**scalars, "step": step})

    def close(self) -> None:
        self.run.finish()


def open_tracker(report_to: list[str], run_dir: str | Path, config: dict) -> Tracker:
    names = [n.lower() for n in report_to if n.lower() not in ("none", "")]
    unknown = [n for n in names if n not in KNOWN]
    if unknown:
        raise UserError(f"report_to: unknown tracker {unknown[0]!r}; choose from {', '.join(KNOWN)} (or none)")
    run_dir = Path(run_dir)
    name = run_dir.resolve().name
    sinks = []
    for n in dict.fromkeys(names):
        if n == "tensorboard":
            sinks.append(_TensorBoard(run_dir))
        elif n == "trackio":
            sinks.append(_Trackio(run_dir, name, config))
        else:
            sinks.append(_WandB(run_dir, name, config))
    return Tracker(sinks)
