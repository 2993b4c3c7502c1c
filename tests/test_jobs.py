"""Jobs in a child process: reports in order, the return value, errors, cancel, a dying process."""
import os
import threading

import pytest

from napari_ctseg.errors import TrainingError
from napari_ctseg.jobs import JobError, in_child_process


def drive(gen):
    seen = []
    try:
        while True:
            seen.append(next(gen))
    except StopIteration as stop:
        return seen, stop.value


def test_reports_and_return_value_come_back_in_order():
    seen, value = drive(in_child_process("synthetic:counting_job", 5))
    assert seen == [0, 1, 2, 3, 4] and value == "done"


def test_errors_come_back_as_one_line_with_the_childs_traceback():
    gen = in_child_process("synthetic:counting_job", 5, fail_at=2)
    with pytest.raises(JobError, match="ValueError: bad value at 2") as info:
        drive(gen)
    assert "counting_job" in info.value.details  # the child's traceback


def test_user_errors_keep_their_type():
    gen = in_child_process("napari_ctseg.training:train", "no-such-target", "/nowhere", "/tmp/x")
    with pytest.raises(TrainingError, match="unknown target"):
        drive(gen)


def test_a_dying_process_is_reported_and_this_one_goes_on():
    with pytest.raises(JobError, match="ended unexpectedly .exit code 3.") as info:
        drive(in_child_process("synthetic:counting_job", 10, crash_at=3))
    assert "unharmed" in str(info.value)
    assert os.getpid()  # still here


def test_cancel_runs_the_jobs_clean_up_and_returns_none(tmp_path):
    cancel = threading.Event()
    marker = tmp_path / "marker"
    gen = in_child_process("synthetic:counting_job", 1000, marker=str(marker), cancel=cancel)
    seen = [next(gen), next(gen)]
    cancel.set()
    rest, value = drive(gen)
    assert value is None and len(seen) + len(rest) < 1000
    assert marker.read_text() == "cleaned up"
