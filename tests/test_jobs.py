"""Long jobs: the one event type, the driver and its cancel, the ETA, and jobs in a child
process (events in order, the return value, errors, cancel, a dying process)."""
import os
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from napari_ctseg.segmentation import inference
from napari_ctseg.errors import CTSegError, TrainingError
from napari_ctseg.jobs import (
    CancelToken,
    Cancelled,
    Eta,
    JobError,
    Progress,
    SharedArray,
    WorkerProcess,
    as_progress,
    duration_text,
    error_line,
    in_child_process,
    run,
    single_step,
    steps,
)


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


def test_cancel_runs_the_jobs_clean_up_and_ends_cancelled(tmp_path):
    cancel = CancelToken()
    marker = tmp_path / "marker"
    gen = in_child_process("synthetic:counting_job", 1000, marker=str(marker), cancel=cancel)
    seen = [next(gen), next(gen)]
    cancel.cancel()
    with pytest.raises(Cancelled):
        seen += drive(gen)[0]
    assert len(seen) < 1000
    assert marker.read_text() == "cleaned up"


def test_cancel_through_the_driver_stops_a_child_job_and_cleans_up(tmp_path):
    """The same token and driver as for a job in this thread: the child's clean-up runs."""
    cancel = CancelToken()
    marker = tmp_path / "marker"
    seen = []

    def on_event(i):
        seen.append(i)
        if i == 2:
            cancel.cancel()

    job = in_child_process("synthetic:counting_job", 1000, marker=str(marker), cancel=cancel)
    with pytest.raises(Cancelled):
        run(job, on_event=on_event, cancel=cancel)
    assert seen == [0, 1, 2]
    assert marker.read_text() == "cleaned up"


def test_closing_a_child_job_stops_the_child_and_cleans_up(tmp_path):
    marker = tmp_path / "marker"
    gen = in_child_process("synthetic:counting_job", 1000, marker=str(marker))
    assert next(gen) == 0
    gen.close()
    assert marker.read_text() == "cleaned up"


def _our_shared_memory() -> set[str]:
    return {p.name for p in Path("/dev/shm").glob("psm_*")} if Path("/dev/shm").is_dir() else set()


def test_a_worker_process_stays_between_jobs_and_is_replaced_when_it_dies():
    worker = WorkerProcess(warm=("numpy",))
    try:
        first = drive(worker.job("synthetic:pid_job"))[1]
        assert drive(worker.job("synthetic:pid_job"))[1] == first  # the same warm process
        assert first != os.getpid()
        with pytest.raises(JobError, match="ended unexpectedly"):
            drive(worker.job("synthetic:counting_job", 10, crash_at=2))
        after = drive(worker.job("synthetic:pid_job"))[1]
        assert after not in (first, os.getpid())  # a new one
    finally:
        worker.close()
    assert not worker.alive


def test_a_worker_process_runs_one_job_at_a_time_and_goes_on_after_a_cancel(tmp_path):
    worker = WorkerProcess()
    try:
        running = worker.job("synthetic:pid_job", 2.0)
        next(running)
        assert worker.busy
        with pytest.raises(JobError, match="busy"):
            drive(worker.job("synthetic:pid_job"))
        pid = drive(running)[1]
        cancel = CancelToken()
        marker = tmp_path / "marker"
        gen = worker.job("synthetic:counting_job", 1000, marker=str(marker), cancel=cancel)
        next(gen)
        cancel.cancel()
        with pytest.raises(Cancelled):
            drive(gen)
        assert marker.read_text() == "cleaned up"
        assert drive(worker.job("synthetic:pid_job"))[1] == pid  # the same process, ready again
    finally:
        worker.close()


def test_shared_arrays_travel_both_ways_and_are_freed():
    np = pytest.importorskip("numpy")
    before = _our_shared_memory()
    a = np.arange(5 * 7 * 3, dtype=np.int16).reshape(5, 7, 3)
    shared = SharedArray.copy_of(a)
    out = drive(in_child_process("synthetic:doubling_job", shared))[1]
    shared.free()
    assert isinstance(out, SharedArray)
    got = out.take()
    assert got.dtype == np.int16 and np.array_equal(got, a * 2)
    assert _our_shared_memory() == before  # nothing left in /dev/shm


# --- the driver in this thread -------------------------------------------------------------

def counting(n, log):
    try:
        for i in range(n):
            yield Progress(i, n, f"item {i}")
        return "all"
    finally:
        log.append("cleaned up")


def test_run_gives_every_event_and_the_result():
    log, seen = [], []
    assert run(counting(4, log), on_event=seen.append) == "all"
    assert [p.done for p in seen] == [0, 1, 2, 3] and log == ["cleaned up"]


def test_a_set_token_stops_the_job_before_its_next_event_and_runs_its_clean_up():
    log, seen = [], []
    cancel = CancelToken()

    def on_event(p):
        seen.append(p.done)
        if p.done == 1:
            cancel.cancel()

    with pytest.raises(Cancelled):
        run(counting(100, log), on_event=on_event, cancel=cancel)
    assert seen == [0, 1] and log == ["cleaned up"] and cancel.cancelled


def test_closing_the_driver_closes_the_job():
    log = []
    driver = steps(counting(100, log), CancelToken())
    next(driver)
    driver.close()
    assert log == ["cleaned up"]


def test_a_token_is_an_event_for_code_that_takes_one():
    token = CancelToken()
    assert isinstance(token, threading.Event) and not token.cancelled
    token.set()
    assert token.cancelled


def test_inference_uses_the_one_event_type_and_cancel():
    assert inference.Progress is Progress and inference.Cancelled is Cancelled
    assert Progress(3, 10, "lungs: slice 3/10", "lungs").stage == "lungs"


def test_single_step_is_a_job_with_one_busy_event():
    seen = []
    assert run(single_step(divmod, 7, 2, message="dividing"), on_event=seen.append) == (3, 1)
    assert seen == [Progress(0, 0, "dividing")] and seen[0].fraction is None


def test_events_read_as_progress():
    assert as_progress(Progress(1, 4, "a")) == Progress(1, 4, "a")
    assert as_progress(SimpleNamespace(done=3, total=8, message="m")) == Progress(3, 8, "m")
    # a training report before it carried done/total: counted in optimisation steps
    report = SimpleNamespace(kind="step", epoch=2, epochs=3, step=4, steps=5, message="")
    assert as_progress(report) == Progress(9, 15, "")
    assert as_progress(SimpleNamespace(kind="done", epoch=3, epochs=3, step=0, steps=5, message="ok")) \
        == Progress(15, 15, "ok")
    assert as_progress(SimpleNamespace(kind="prepare", epoch=0, epochs=2, step=0, steps=0, message="reading")) \
        == Progress(0, 2, "reading")
    assert as_progress("anything else") == Progress(0, 0, "")


def test_errors_read_in_one_line():
    assert error_line(CTSegError("bad file x.nii")) == "bad file x.nii"
    assert error_line(MemoryError()) == "MemoryError"
    assert error_line(ValueError("first line\nsecond line")) == "ValueError: first line"
    assert error_line(JobError("the job's process ended", "Traceback ...")) == "the job's process ended"


# --- time left -----------------------------------------------------------------------------

def test_eta_from_the_speed_since_work_began():
    now = [100.0]
    eta = Eta(clock=lambda: now[0])
    assert eta.update(0, 10, now=101.0) is None and eta.text() == ""  # preparing: nothing done yet
    assert eta.update(0, 10, now=130.0) is None  # still preparing: does not count as speed
    assert eta.update(2, 10, now=134.0) == pytest.approx(16.0)  # 2 s per unit, 8 left
    assert eta.text() == "about 16 s left"
    assert eta.update(5, 10, now=140.0) == pytest.approx(10.0)  # 10 s for 5 units: 2 s each
    assert eta.update(10, 10, now=150.0) == 0.0
    assert eta.elapsed(now=150.0) == pytest.approx(50.0)
    assert eta.update(3, 0, now=151.0) is None  # total unknown


def test_durations_read_as_people_say_them():
    assert duration_text(40.4) == "40 s"
    assert duration_text(200) == "3 min"
    assert duration_text(3 * 3600 + 5 * 60) == "3 h 5 min"


def test_child_processes_end_when_their_parent_is_killed(tmp_path):
    """A viewer killed outright (no atexit, no clean-up) leaves no worker or click-to-correct
    child behind."""
    import signal
    import subprocess
    import sys
    import time

    import psutil

    script = tmp_path / "parent.py"
    script.write_text(
        "import os, sys, time\n"
        "from napari_ctseg.jobs import WorkerProcess\n"
        "from napari_ctseg.editing.refine_process import RefineProcess\n"
        "if __name__ == '__main__':\n"
        "    w = WorkerProcess(name='t').start()\n"
        "    r = RefineProcess()\n"
        "    print(w._proc.pid, r._pool.submit(os.getpid).result(), flush=True)\n"
        "    time.sleep(120)\n")
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        children = [int(v) for v in parent.stdout.readline().split()]
        assert len(children) == 2 and all(psutil.pid_exists(pid) for pid in children)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        deadline = time.time() + 30
        while time.time() < deadline and any(_running(pid) for pid in children):
            time.sleep(0.2)
        assert not any(_running(pid) for pid in children)
    finally:
        parent.kill()
        for pid in children if "children" in locals() else []:
            if _running(pid):
                psutil.Process(pid).kill()


def _running(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
