"""run.memory: the C heap's memory that a step freed goes back to the kernel."""
import subprocess
import sys
from pathlib import Path

# A step's columns: big blocks, each followed on the heap by a small block that outlives them.
STEP = '''
import ctypes, sys
from agent.run import memory
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "mapped":
    memory.big_blocks_mapped()
def resident_mib():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 / 2**20
libc.free(libc.malloc(4 << 20))  # a big block freed, as by the step before
before = resident_mib()
blocks = []
for _ in range(30):
    block = libc.malloc(3 << 20)
    ctypes.memset(block, 1, 3 << 20)
    blocks.append(block)
    libc.malloc(64)
while_held = resident_mib()
for block in blocks:
    libc.free(block)
print(while_held - before, resident_mib() - before)
'''


def resident_after_the_step(how: str) -> float:
    """MiB still resident once the step's 90 MiB of blocks were freed."""
    done = subprocess.run([sys.executable, "-c", STEP, how], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[2])
    held, after = map(float, done.stdout.split())
    assert held >= 89  # (the blocks were there)
    return after


def test_the_big_blocks_a_step_freed_go_back_to_the_kernel_at_once():
    assert resident_after_the_step("mapped") < 10
    # what big_blocks_mapped turns off: glibc raised its threshold past the first big block
    # freed, carved the others out of the heap, and the small blocks keep them there
    assert resident_after_the_step("glibc's own") > 60
