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


class _HostedRun:
    """trackio and W&B: the same module-level API (`init`, `log`, `finish`)."""

    def __init__(self, module: str, **init):
        import importlib

        try:
            self.api = importlib.import_module(module)
        except ImportError:
            raise UserError(f"report_to {module} needs {module}: pip install {module}") from None
        self.api.init(project="seal-tt", **init)

    def log(self, scalars: dict, step: int) -> None:
        # Both want one increasing step per run, while item and round metrics count on axes of their own: the axis
        # goes in as a value.
        self.api.log({**scalars, "step": step})

    def close(self) -> None:
        self.api.finish()


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
            sinks.append(_HostedRun("trackio", name=name, config=config))
        else:
            sinks.append(_HostedRun("wandb", name=name, config=config, dir=str(run_dir)))
    return Tracker(sinks)
