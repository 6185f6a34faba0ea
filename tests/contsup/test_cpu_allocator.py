"""contsup.cpu_allocator: large CPU tensors reuse freed memory instead of faulting it in."""

import subprocess
import sys
import textwrap

from contsup.cpu_allocator import keep_freed_memory

# A fresh process, so this test's setting does not leak into the others.
PROGRAM = textwrap.dedent(
    """
    import resource, torch
    from contsup.cpu_allocator import keep_freed_memory

    def faults_of_a_64_mib_tensor():
        torch.empty(2**24).fill_(1.0)  # allocated, written and freed once before
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.empty(2**24).fill_(1.0)
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    before = faults_of_a_64_mib_tensor()
    kept = keep_freed_memory()
    # The steady state: on a busy machine the first reuse after the call can still fault.
    after = min(faults_of_a_64_mib_tensor() for _ in range(3))
    print(before, kept, after)
    """
)


def test_a_freed_large_tensor_is_reused_without_page_faults():
    if not sys.platform.startswith("linux"):
        assert keep_freed_memory() is False  # no glibc: nothing to set
        return
    out = subprocess.run(
        [sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=120, check=True
    ).stdout.split()
    before, kept, after = int(out[0]), out[1], int(out[2])
    assert before > 1000  # glibc's default: each 64 MiB block is mapped and faulted in afresh
    assert kept == "True"
    assert after < 100
