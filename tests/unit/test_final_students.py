"""Where confirm and the ladder keep final students, and what the note beside each one says."""

import json

from layersearch.confirm import FinalStudents
from layersearch.mapping import Mapping


def test_a_students_note_keeps_its_cost_and_reads_back_what_it_holds(tmp_path):
    students = FinalStudents(tmp_path)
    packed, alone = Mapping((3, 6, 9, 12), 12), Mapping((1, 2, 3, 12), 12)
    students.note(packed, 1, "packed", 40.5, steps=150, train_cpu_seconds=80.25)
    students.note(alone, 0, "run-abc", 12.0)  # a confirm run: no CPU seconds kept

    note = json.loads(students.path(packed, 1).with_name(students.path(packed, 1).name + ".json").read_text())
    assert note == {"run_id": "packed", "train_seconds": 40.5, "steps": 150, "train_cpu_seconds": 80.25}
    assert (students.seconds(packed, 1), students.cpu_seconds(packed, 1)) == (40.5, 80.25)
    assert (students.seconds(alone, 0), students.cpu_seconds(alone, 0)) == (12.0, None)
    assert (students.seconds(packed, 0), students.cpu_seconds(packed, 0)) == (0.0, None)  # no note: no cost

    # A torn note is no cost rather than a crash: the unit is still scored.
    students.path(alone, 0).with_name(students.path(alone, 0).name + ".json").write_text("{\"train_sec")
    assert (students.seconds(alone, 0), students.cpu_seconds(alone, 0)) == (0.0, None)


def test_a_student_is_done_only_with_its_model_and_no_checkpoints_of_a_stopped_run(tmp_path):
    students, m = FinalStudents(tmp_path), Mapping((3, 6, 9, 12), 12)
    out = students.path(m, 0)
    assert not students.done(m, 0)
    out.mkdir(parents=True)
    (out / "config.json").write_text("{}")
    assert students.done(m, 0)
    out.with_name(out.name + ".checkpoints").mkdir()
    assert not students.done(m, 0)


def test_a_packs_clock_survives_a_kill_and_prices_the_steps_it_lost(tmp_path, monkeypatch):
    """The ladder's CPU seconds for a distillation resumed after a kill: the totals kept at a
    checkpointed step carry over; steps whose totals were never kept are priced at the rest's rate."""
    import sys
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "bench"))
    sys.modules.pop("ladder_truth", None)
    from ladder_truth import Clock, distill_cpu_seconds

    ticks = iter(range(1000))
    monkeypatch.setattr("time.process_time", lambda: float(next(ticks)))  # one CPU second a call
    monkeypatch.setattr("time.perf_counter", lambda: 0.0)
    path = tmp_path / "ckpt" / "clock.json"
    path.parent.mkdir()
    first = Clock(path)  # cpu0 = 0
    for step in range(1, 51):
        first.tick(step, step % 25 == 0)  # the clock is read at steps 25 and 50
    assert json.loads(path.read_text()) == {"25": [0.0, 1.0], "50": [0.0, 2.0]}
    resumed = Clock(path)  # cpu0 = 3: killed after step 50, resumed from its checkpoint
    resumed.tick(51, False)
    assert (resumed.unclocked, resumed.totals()) == (0, (0.0, 2.0 + 4 - 3))
    lost = Clock(path)  # resumed from a step-75 checkpoint whose totals were never written
    lost.tick(76, False)
    assert lost.unclocked == 75 and lost.totals()[1] == 1.0  # this process's seconds only

    students, m = FinalStudents(tmp_path), Mapping((3, 6, 9, 12), 12)
    students.note(m, 1, "packed", 5.0, steps=300, train_cpu_seconds=150.0, unclocked_steps=75)
    assert distill_cpu_seconds(students, m, 1) == (200.0, 75)  # 225 measured steps cost 150
    students.note(m, 0, "packed", 5.0, steps=300, train_cpu_seconds=150.0, unclocked_steps=0)
    assert distill_cpu_seconds(students, m, 0) == (150.0, 0)
    students.note(m, 2, "confirm-run", 5.0)
    assert distill_cpu_seconds(students, m, 2) == (None, 0)
