"""The documentation keeps up with the code: every command and option is in docs/commands.md,
every column of the CSV files in docs/files.md, and the README stays a newcomer's page."""
from pathlib import Path

import click
import click.testing
import pytest

from agent.analysis.churn import CHURN_COLUMNS, PEER_COLUMNS
from agent.analysis.lives import CONNECTION_COLUMNS
from agent.analysis.ports import PRESSURE_COLUMNS
from agent.analysis.processes import EXTRA_PROCESS_COLUMNS, PROCESS_COLUMNS
from agent.analysis.workloads import WORKLOAD_COLUMNS
from agent.cli import main

ROOT = Path(__file__).resolve().parents[2]
COMMANDS_DOC = (ROOT / "docs" / "commands.md").read_text()
FILES_DOC = (ROOT / "docs" / "files.md").read_text()
README = ROOT / "README.md"


def options():
    for name, command in sorted(main.commands.items()):
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden:
                yield name, param


@pytest.mark.parametrize("name", sorted(main.commands))
def test_every_command_is_in_the_docs_and_the_readme_with_examples_in_its_help(name):
    assert f"tcpclose {name}" in COMMANDS_DOC
    assert f"tcpclose {name}" in README.read_text()
    result = click.testing.CliRunner().invoke(main, [name, "-h"])
    assert result.exit_code == 0 and "Example" in result.output


@pytest.mark.parametrize("name, param", list(options()), ids=lambda p: getattr(p, "name", p))
def test_every_option_of_every_command_is_in_docs_commands(name, param):
    spelled = param.opts + param.secondary_opts
    assert any(f"{o}{end}" in COMMANDS_DOC for o in spelled for end in (" ", "`", "|", "]", "/")), (name, spelled)


@pytest.mark.parametrize("column", sorted({*CONNECTION_COLUMNS, *PROCESS_COLUMNS, *EXTRA_PROCESS_COLUMNS,
                                           *CHURN_COLUMNS, *PEER_COLUMNS, *PRESSURE_COLUMNS,
                                           *WORKLOAD_COLUMNS}))
def test_every_column_of_the_csv_files_is_in_docs_files(column):
    assert f"`{column}`" in FILES_DOC or column in FILES_DOC.replace("`", "")


def test_the_readme_is_a_newcomers_page():
    text = README.read_text()
    assert len(text.encode()) <= 12 * 1024
    assert "sudo make demo" in text and "sudo make test" in text
    for linked in ("docs/commands.md", "docs/files.md", "docs/how-it-works.md", "docs/overhead.md"):
        assert linked in text and (ROOT / linked).is_file()
