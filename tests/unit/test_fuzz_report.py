"""`tcpclose report` on recordings a fuzzer made (hypothesis): wrong types, huge, negative and
non-finite numbers, missing fields, long names, garbage lines.  Whatever the file holds, the
answer is the report (exit 0) or one line naming what is wrong (exit 7), never a traceback.

A bounded run here (a few seconds); `make fuzz` runs the same target for as long as
TCPCLOSE_FUZZ_EXAMPLES says, its failures saved in tests/fuzz-corpus/ by hypothesis."""
from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase

from agent.cli import main
from agent.record import decode
from support.streams import HZ, OFFSET_NS, raw

CORPUS = Path(__file__).resolve().parents[1] / "fuzz-corpus"
EXAMPLES = int(os.environ.get("TCPCLOSE_FUZZ_EXAMPLES", "60"))


def _valid_rows() -> list[dict]:
    """Real event lines, as a recording holds them: a client, a server, an open CLOSE_WAIT."""
    frame = decode.decode(b"".join([
        raw(skaddr=1, pid=10, comm="client", states=("SYN_SENT", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2")),
        raw(skaddr=2, pid=20, comm="server", states=("SYN_RECV", "ESTABLISHED", "CLOSE_WAIT", "LAST_ACK"),
            last="LAST_ACK"),
        raw("open", skaddr=3, pid=20, comm="server", states=("SYN_RECV", "ESTABLISHED", "CLOSE_WAIT"),
            last="CLOSE_WAIT", close_wait=2.0, ts=0)]), OFFSET_NS, HZ)
    return json.loads(frame.to_json(orient="records", double_precision=15))


VALID = _valid_rows()
RUN = {"kind": "run", "started_at": OFFSET_NS / 1e9, "ended_at": OFFSET_NS / 1e9 + 10, "counters": {},
       "open_lives": 0, "timewait_method": "timers"}
ODD = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30), st.text(min_size=5000, max_size=6000),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)


@st.composite
def recordings(draw) -> str:
    lines = []
    for row in draw(st.lists(st.sampled_from(VALID + [RUN]), min_size=1, max_size=8)):
        row = dict(row)
        for key in draw(st.lists(st.sampled_from(sorted(row)), max_size=3, unique=True)):
            if draw(st.booleans()):
                row[key] = draw(ODD)
            else:
                del row[key]
        lines.append(json.dumps(row, allow_nan=True))
    if draw(st.booleans()):
        lines.insert(draw(st.integers(0, len(lines))), draw(st.text(max_size=40)))
    return "\n".join(lines) + ("\n" if draw(st.booleans()) else "")


@settings(max_examples=EXAMPLES, deadline=None, database=DirectoryBasedExampleDatabase(str(CORPUS)),
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(text=recordings())
def test_report_never_tracebacks_whatever_the_recording_holds(tmp_path, text):
    path = tmp_path / "fuzzed.jsonl"
    path.write_text(text)
    result = CliRunner().invoke(main, ["report", str(path)])
    if result.exit_code == 7:
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("tcpclose: "), result.output
    else:
        assert result.exit_code == 0, (result.output, result.exception, text[:2000])


@settings(max_examples=EXAMPLES, deadline=None, database=DirectoryBasedExampleDatabase(str(CORPUS)),
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(text=recordings(), cut=st.floats(min_value=0.0, max_value=1.0), garble=st.booleans())
def test_a_compressed_recording_cut_or_garbled_anywhere_never_tracebacks(tmp_path, text, cut, garble):
    """As --record writes it (gzip), then cut short as a kill leaves it, or with a byte changed."""
    data = bytearray(gzip.compress(text.encode()))
    data = data[:max(2, int(len(data) * cut))]
    if garble and len(data) > 12:
        data[10 + int((len(data) - 11) * cut)] ^= 0x5A
    path = tmp_path / "fuzzed.jsonl.gz"
    path.write_bytes(bytes(data))
    result = CliRunner().invoke(main, ["report", str(path)])
    if result.exit_code == 7:
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("tcpclose: "), result.output
    else:
        assert result.exit_code == 0, (result.output, result.exception, text[:2000], cut, garble)


def test_the_fuzzers_seed_is_a_recording_that_reports(tmp_path):
    """The lines the fuzzer mutates are valid as they are: otherwise every case would be a
    refusal and the fuzzer would test nothing past the first check."""
    path = tmp_path / "seed.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in [*VALID, RUN]) + "\n")
    result = CliRunner().invoke(main, ["report", str(path)])
    assert result.exit_code == 0, result.output
    assert "client (pid 10) closed first on 1 of 1" in result.output and "server (pid 20)" in result.output
