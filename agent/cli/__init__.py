"""The command line: one click group, a module per family of commands.

  options    what the commands share (filters, -o, --netns, one-line errors)
  tracing    trace, demo (root: they load the BPF program)
  reporting  report (a recording, no root)
  host       states, doctor (the host now)
  serving    agent (root: always on, for Prometheus)
  results    a finished run shown as a summary or written as files
  periods    agent -o: trace -o's files, a directory a period
"""
from __future__ import annotations

import click

from .. import __version__
from ..run import memory
from .host import doctor, states
from .options import CONTEXT
from .reporting import report_command
from .serving import agent_command
from .tracing import demo, trace


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, "-V", "--version", prog_name="tcpclose", message="%(prog)s %(version)s")
def main():
    """Which process closes TCP connections first, and what it leaves behind.

    \b
    Start with:  sudo tcpclose demo
    Then:        sudo tcpclose trace -d 60 -o out/
    """
    memory.arrow_on_the_c_heap()
    memory.big_blocks_mapped()


for command in (trace, report_command, states, doctor, demo, agent_command):
    main.add_command(command)
