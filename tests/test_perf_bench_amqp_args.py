"""perf/bench_amqp.py's ``--server-cpus``/``--broker-cpus``: a CPU list this process may
use, or an error naming the text and why; never a guess."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "perf"), str(HERE)]
import bench_amqp  # noqa: E402


def test_lists_and_ranges_of_usable_cpus() -> None:
    usable = sorted(os.sched_getaffinity(0))
    first, last = usable[0], usable[-1]
    assert bench_amqp.cpu_list(str(first)) == {first}
    assert bench_amqp.cpu_list(f"{first}-{last}") == set(range(first, last + 1)) & set(usable)
    assert bench_amqp.cpu_list(",".join(map(str, usable))) == set(usable)


@pytest.mark.parametrize("text", ["x", "", "0,,1", "1-0", "-1", "0-", "1.5"])
def test_what_is_not_a_cpu_list_is_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="not a CPU list"):
        bench_amqp.cpu_list(text)


def test_a_cpu_this_process_may_not_use_is_refused() -> None:
    beyond = max(os.sched_getaffinity(0)) + 1
    with pytest.raises(argparse.ArgumentTypeError, match="may use CPUs"):
        bench_amqp.cpu_list(str(beyond))
