"""The Python mirror of struct tcpclose_event agrees with what a C compiler makes of bpf/tcpclose.h."""
import shutil
import subprocess

import pytest

from agent import layout


def compiled_offsets(tmp_path) -> dict[str, int]:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.fail("a C compiler is needed to check the event layout (apt-get install gcc)")
    fields = layout.EVENT_DTYPE.names
    body = "".join(
        f'printf("{name} %zu\\n", offsetof(struct tcpclose_event, {name}));' for name in fields
    )
    src = tmp_path / "offsets.c"
    src.write_text(
        f'#include <stddef.h>\n#include <stdio.h>\n#include "{layout.HEADER}"\n'
        f'int main(void) {{ {body} printf("sizeof %zu\\n", sizeof(struct tcpclose_event)); return 0; }}\n'
    )
    subprocess.run([cc, "-o", str(tmp_path / "offsets"), str(src)], check=True)
    out = subprocess.run([str(tmp_path / "offsets")], check=True, capture_output=True, text=True).stdout
    return {name: int(value) for name, value in (line.split() for line in out.splitlines())}


def test_every_field_offset_and_the_size_agree(tmp_path):
    offsets = compiled_offsets(tmp_path)
    assert offsets.pop("sizeof") == layout.EVENT_DTYPE.itemsize
    assert offsets == {name: layout.EVENT_DTYPE.fields[name][1] for name in layout.EVENT_DTYPE.names}


def test_constants_come_from_the_header():
    assert layout.DEFINES["TCP_CLOSE_WAIT"] == 8
    assert layout.TCP_STATE_NAMES[layout.DEFINES["TCP_FIN_WAIT2"]] == "FIN_WAIT2"
    assert set(layout.COUNTER_NAMES.values()) >= {"ringbuf_drops", "lives_started", "lives_ended"}
    assert len(layout.COUNTER_NAMES) == layout.DEFINES["NR_COUNTERS"]
