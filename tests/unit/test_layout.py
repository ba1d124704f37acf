"""The Python mirrors of the header's structs agree with what a C compiler makes of bpf/tcpclose.h."""
import shutil
import subprocess

import pytest

from agent.record import layout


def compiled_offsets(tmp_path, struct: str) -> dict[str, int]:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.fail("a C compiler is needed to check the event layout (apt-get install gcc)")
    fields = layout.STRUCTS[struct].names
    body = "".join(
        f'printf("{name} %zu\\n", offsetof(struct {struct}, {name}));' for name in fields
    )
    src = tmp_path / "offsets.c"
    src.write_text(
        f'#include <stddef.h>\n#include <stdio.h>\n#include "{layout.HEADER}"\n'
        f'int main(void) {{ {body} printf("sizeof %zu\\n", sizeof(struct {struct})); return 0; }}\n'
    )
    subprocess.run([cc, "-o", str(tmp_path / "offsets"), str(src)], check=True)
    out = subprocess.run([str(tmp_path / "offsets")], check=True, capture_output=True, text=True).stdout
    return {name: int(value) for name, value in (line.split() for line in out.splitlines())}


@pytest.mark.parametrize("struct", sorted(layout.STRUCTS))
def test_every_field_offset_and_the_size_agree(tmp_path, struct):
    dtype = layout.STRUCTS[struct]
    offsets = compiled_offsets(tmp_path, struct)
    assert offsets.pop("sizeof") == dtype.itemsize
    assert offsets == {name: dtype.fields[name][1] for name in dtype.names}


def test_constants_come_from_the_header():
    assert layout.DEFINES["TCP_CLOSE_WAIT"] == 8
    assert layout.TCP_STATE_NAMES[layout.DEFINES["TCP_FIN_WAIT2"]] == "FIN_WAIT2"
    assert set(layout.COUNTER_NAMES.values()) >= {"ringbuf_drops", "lives_started", "lives_ended"}
    assert len(layout.COUNTER_NAMES) == layout.DEFINES["NR_COUNTERS"]
