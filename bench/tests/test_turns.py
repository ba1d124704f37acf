"""bench.turns: its figures from a run.json, and the trees it accepts."""
import pytest

from bench import sampling, turns


def test_turns_take_the_state_programs_time_per_run_and_refuse_a_tree_that_is_not_tcpclose(tmp_path):
    run = {"programs": {sampling.STATE_PROGRAM: {"run_time_ns": 4_000_000, "run_cnt": 10_000},
                        "timer_cancel": {"run_time_ns": 9_000_000, "run_cnt": 90_000}}}
    assert turns.state_ns_per_run(run) == 400
    assert turns.all_ns_per_transition(run) == 1300  # (4 + 9) ms over 10 000 transitions
    assert turns.all_ns_per_transition({"programs": {"timer_cancel": {"run_time_ns": 9, "run_cnt": 9}}}) is None
    assert turns.state_ns_per_run({"programs": {sampling.STATE_PROGRAM: {"run_time_ns": 0, "run_cnt": 0}}}) is None
    assert turns.state_ns_per_run({}) is None  # a run.json from before the stats
    (tmp_path / "agent").mkdir()
    (tmp_path / "agent" / "__main__.py").touch()
    assert turns.parse_variant(f"{tmp_path}::--aggregates --max-sockets 4096") == (
        tmp_path, ["--aggregates", "--max-sockets", "4096"])
    assert turns.parse_variant(str(tmp_path)) == (tmp_path, [])
    with pytest.raises(SystemExit, match="not a tcpclose checkout"):
        turns.parse_variant(f"{tmp_path / 'nowhere'}::--aggregates")
