"""What the tracer adds to decoded records of each owner it learnt (run.owners.Owners.named):
its network namespace, and the process's name where the thread that acted has its own."""
import pandas as pd

from agent.record import decode
from agent.run.owners import Owners
from support.streams import HZ, OFFSET_NS, raw


def test_each_record_gets_its_owners_namespace_and_process_name_the_threads_kept_beside():
    records = decode.decode(b"".join([
        raw(pid=10, comm="worker-3", cgroup_id=0),  # a thread of "server"
        raw(pid=10, comm="server", cgroup_id=0),  # its main thread
        raw(pid=11, comm="curl", cgroup_id=0),  # a process whose name was never read
        raw(pid=12, comm="gone", cgroup_id=0),  # one not met at all
        raw(pid=10, comm="worker-4", cgroup_id=0),
    ]), OFFSET_NS, HZ)
    owners = Owners()
    owners.netns_of.update({10: "4026531840", 11: "4026532000"})
    owners.process_comm.update({10: "server", 11: None})
    named = owners.named(records)
    assert list(named["netns"].iloc[:3]) == ["4026531840", "4026531840", "4026532000"]
    assert pd.isna(named["netns"].iloc[3])
    assert list(named["comm"]) == ["server", "server", "curl", "gone", "server"]
    assert list(named["thread_comm"].fillna("-")) == ["worker-3", "-", "-", "-", "worker-4"]
