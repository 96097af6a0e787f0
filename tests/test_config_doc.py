"""docs/configuration.md is generated from the declarations (`fedmm config --markdown`): stale fails."""

from __future__ import annotations

from pathlib import Path

from fedmm.cli import main
from fedmm.config_doc import REGENERATE, configuration_markdown, parameter_rows

PAGE = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def test_the_configuration_page_is_the_output_of_fedmm_config_markdown() -> None:
    assert PAGE.read_text() == configuration_markdown(), f"docs/configuration.md is stale; run `{REGENERATE}`"


def test_the_page_lists_every_parameter_and_every_component(capsys) -> None:
    text = configuration_markdown()
    for row in parameter_rows():  # every key, with its default and constraint, in a table row
        assert f"| `{row.key}` |" in text, row.key
    assert "| `lr` | `0.05` | float in (0.0, inf) | local SGD learning rate |" in text
    assert "### random\n\n(no parameters)" in text and "### fedprox\n\n| key |" in text
    assert main(["config", "--markdown"]) == 0
    assert capsys.readouterr().out == text
