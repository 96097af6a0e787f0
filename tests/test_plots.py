"""The run's figures (fedmm.plots), inspected as matplotlib figures: title, integer round ticks,
the loss and imbalance panels, FedCMI's fill curves, and the selection plot."""

from __future__ import annotations

import pandas as pd
import pytest

import fedmm.plots as plots

CONFIG = {
    "dataset": "synthetic",
    "strategy": "fedcmi",
    "objective": "fedcmi",
    "selection": "random",
    "seed": 3,
    "lr": 0.05,
}


@pytest.fixture
def figures(monkeypatch):
    """The figures the plot functions make, kept open instead of closed."""
    kept = []
    monkeypatch.setattr(plots, "close", kept.append)
    return kept


def rounds(num_rounds=20, fill=True):
    rows = []
    for r in range(num_rounds + 1):
        row = {
            "round": r,
            "test/acc": 0.5 + r / 100,
            "test/acc/a": 0.4 + r / 100,
            "test/acc/b": 0.3,
            "test/loss": 1.0 / (r + 1),
            "test/imbalance": 1.2,
            "train/loss": float("nan") if r == 0 else 0.9,
        }
        if fill:
            row.update({"test/acc-fill/a": 0.45, "test/acc-fill/b": 0.35})
        rows.append(row)
    return pd.DataFrame(rows)


def test_run_title_names_dataset_strategy_objective_selection_and_seed():
    assert plots.run_title(CONFIG) == "synthetic · fedcmi · objective fedcmi · selection random · seed 3"
    assert plots.run_title({"dataset": "hapt"}) == "hapt"


def test_run_figure_has_title_integer_rounds_loss_imbalance_and_fill(tmp_path, figures):
    path = plots.plot_run(rounds(), tmp_path / "accuracy.png", CONFIG)
    assert path.is_file() and path.stat().st_size > 0
    (fig,) = figures
    assert fig._suptitle.get_text() == plots.run_title(CONFIG)
    acc, loss, imbalance = fig.axes
    fig.canvas.draw()
    for ax in fig.axes:  # 20 rounds: every tick is a whole round
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
        assert ax.get_xlabel() == "round"
    labels = [line.get_label() for line in acc.get_lines()]
    assert labels == ["multimodal", "a alone", "a + fill", "b alone", "b + fill"]
    fill = acc.get_lines()[2]
    assert fill.get_linestyle() == "--" and list(fill.get_ydata()) == [0.45] * 21
    assert [line.get_label() for line in loss.get_lines()] == ["test loss (global model)", "training loss (clients)"]
    assert len(loss.get_lines()[1].get_xdata()) == 20  # round 0 has no training loss
    assert imbalance.get_ylabel() == "imbalance (test)"


def test_run_figure_without_fill_or_imbalance_has_two_panels(tmp_path, figures):
    plots.plot_run(rounds(3, fill=False).drop(columns="test/imbalance"), tmp_path / "a.png", CONFIG)
    (fig,) = figures
    assert len(fig.axes) == 2
    assert all("fill" not in line.get_label() for line in fig.axes[0].get_lines())


def test_selection_plot_shows_who_trained_which_modalities(tmp_path, figures):
    clients = pd.DataFrame(
        [
            {"round": 0, "partition-id": 0, "modalities-trained": "a+b", "status": "ok"},  # update pass
            {"round": 1, "partition-id": 0, "modalities-trained": "a", "status": "ok"},
            {"round": 1, "partition-id": 2, "modalities-trained": "a+b", "status": "ok", "modalities-held": "a+b"},
            {"round": 2, "partition-id": 1, "modalities-trained": "b", "status": "error: boom"},
            {"round": 2, "partition-id": 2, "modalities-trained": "a", "status": "ok"},
        ]
    )
    path = plots.plot_selection(clients, tmp_path / "selection.png", CONFIG)
    assert path.is_file()
    (fig,) = figures
    (ax,) = [a for a in fig.axes if a.get_title()]
    assert plots.run_title(CONFIG) in ax.get_title()
    assert ax.get_xlabel() == "round (0: update pass)"
    by_label = {c.get_label(): c.get_offsets().tolist() for c in ax.collections}
    assert by_label == {"a": [[1, 0], [2, 2]], "b": [], "a+b": [[0, 0], [1, 2]], "failed": [[2, 1]]}
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "1", "2 (a+b)"]  # what each client holds
    assert plots.plot_selection(pd.DataFrame(), tmp_path / "none.png", CONFIG) is None


def test_results_writer_writes_the_selection_plot_for_selection_runs_only(tmp_path):
    from fedmm.config import load_config
    from fedmm.results import PLOT_FILE, SELECTION_PLOT_FILE, ResultsWriter

    for selection in ("all", "random"):
        out = tmp_path / selection
        run = load_config(None, ["dataset=synthetic", "partition=iid", "num-clients=4", f"selection={selection}"])
        writer = ResultsWriter(out, run)
        for _, row in rounds(2).iterrows():
            r = int(row["round"])
            writer.add_round(
                row.to_dict(),
                [
                    {
                        "round": r,
                        "node-id": 1,
                        "partition-id": 1,
                        "modalities-held": "a",
                        "modalities-trained": "a",
                        "status": "ok",
                    }
                ]
                if r
                else [],
            )
        writer.finish({}, {"rounds": 2})
        assert (out / PLOT_FILE).is_file()
        assert (out / SELECTION_PLOT_FILE).is_file() == (selection != "all")
