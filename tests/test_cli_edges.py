"""The CLI's small promises: `fedmm config <namespace> <name>` prints something for every registered
name, `fedmm datasets` fits an 80-column terminal, `fedmm simulate --help` explains and shows examples."""

from __future__ import annotations

import pytest

from fedmm.cli import main
from fedmm.config import param_classes
from fedmm.config_doc import parameter_rows


def _every_component() -> list[tuple[str, str]]:
    from fedmm.data.registry import DATASETS

    names = [(ns, n) for ns, by_name in param_classes().items() for n in by_name]
    return [*names, *(("dataset", n) for n in DATASETS.names())]


@pytest.mark.parametrize(("namespace", "name"), _every_component())
def test_config_of_every_registered_component_prints_its_parameters_or_says_it_has_none(
    namespace: str, name: str, capsys
) -> None:
    assert main(["config", namespace, name]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line]
    assert lines[0] == f"[{namespace} {name}]"
    keys = [r.key for r in parameter_rows(namespace, name)]
    if keys:  # one line per parameter, in declaration order
        assert [line.split()[0] for line in lines[1:]] == keys
    else:
        assert lines[1:] == ["(no parameters)"]


def test_config_of_a_namespace_lists_components_without_parameters_too(capsys) -> None:
    assert main(["config", "selection"]) == 0
    out = capsys.readouterr().out
    assert "[selection random]\n(no parameters)" in out and "[selection all]\n(no parameters)" in out
    assert "[selection powd]\nselection.d " in out
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert "[strategy fedcmi]\n(no parameters)" in out and "[objective ce]\n(no parameters)" in out
    assert out.index("[strategy fedavg]") < out.index("[objective arm]") < out.index("[selection all]")


def test_datasets_fits_an_80_column_terminal(monkeypatch, capsys) -> None:
    from fedmm.data.registry import DATASETS

    monkeypatch.setenv("COLUMNS", "80")
    assert main(["datasets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert len(lines) <= 1 + 3 * len(DATASETS.names())  # header, at most 3 lines per dataset (was 45 lines)
    hapt = next(line for line in lines if line.startswith("hapt "))
    assert hapt.split()[:4] == ["hapt", "6", "7779", "2238"] and "acc(3,128)" in hapt


def test_simulate_help_has_a_description_and_examples(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["simulate", "--help"])
    out = capsys.readouterr().out
    assert "Simulate a federation" in out
    assert "examples:\n  fedmm simulate --set dataset=segment" in out
