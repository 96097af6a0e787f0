"""``tensorboard = true``: TensorBoard event files in ``<out-dir>/tensorboard`` (through
``torch.utils.tensorboard``): the config as text and hyperparameters, every round's metrics as
scalars (step = round), the run's plots as images and the summary as text.

``tensorboard --logdir <out-dir>`` (or a parent of several runs' directories) shows them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedmm.config import RunConfig
from fedmm.tracking import flat_params, require, round_metrics

#: The event files' folder inside the run directory.
TENSORBOARD_DIR = "tensorboard"


class TensorBoardTracker:
    """Writes one run's TensorBoard events.

    Parameters
    ----------
    out_dir:
        The run directory; the events go to ``out_dir/tensorboard``.
    config:
        The resolved config.
    resume_after:
        ``None``: a new run (event files an earlier run left in that folder are removed). A round:
        a resumed run; events of later rounds from before the stop are purged.
    """

    def __init__(self, out_dir: Path, config: RunConfig, *, resume_after: int | None = None) -> None:
        tb = require("torch.utils.tensorboard", "tensorboard")
        self.log_dir = Path(out_dir) / TENSORBOARD_DIR
        if resume_after is None and self.log_dir.is_dir():
            for old in self.log_dir.glob("events.out.tfevents.*"):
                old.unlink()
        purge = None if resume_after is None else resume_after + 1
        self.writer = tb.SummaryWriter(log_dir=str(self.log_dir), purge_step=purge)
        if resume_after is None:
            self.writer.add_text("config", "```toml\n" + config.to_toml() + "```", global_step=0)
            from torch.utils.tensorboard.summary import hparams

            experiment, start, self._end = hparams(flat_params(config), {"test/acc": 0.0})
            for summary in (experiment, start):
                self.writer.file_writer.add_summary(summary)
        else:
            self._end = None
        self.writer.flush()

    def log_round(self, row: Mapping[str, Any], client_rows: Sequence[Mapping[str, Any]] = ()) -> None:
        step = int(row["round"])
        for key, value in round_metrics(row, client_rows).items():
            self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()  # a run that stops keeps every finished round

    def finish(self, summary: Mapping[str, Any], plots: Sequence[Path], out_dir: Path) -> None:
        import matplotlib.image

        step = int(summary.get("rounds", 0))
        for path in plots:
            image = matplotlib.image.imread(str(path))[..., :3]  # RGBA floats in [0, 1] -> RGB
            self.writer.add_image(f"plots/{Path(path).stem}", image, global_step=step, dataformats="HWC")
        text = json.dumps(dict(summary), indent=2, default=float)
        self.writer.add_text("summary", "```json\n" + text + "\n```", global_step=step)
        self._close()

    def close(self, status: str) -> None:
        self.writer.add_text("status", status)
        self._close()

    def _close(self) -> None:
        if self._end is not None:
            self.writer.file_writer.add_summary(self._end)
            self._end = None
        self.writer.close()
