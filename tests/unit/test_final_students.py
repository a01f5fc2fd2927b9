"""Where confirm and the ladder keep final students, and what the note beside each one says."""

import json

from layersearch.confirm import FinalStudents
from layersearch.mapping import Mapping


def test_a_students_note_keeps_its_cost_and_reads_back_what_it_holds(tmp_path):
    students = FinalStudents(tmp_path)
    packed, alone = Mapping((3, 6, 9, 12), 12), Mapping((1, 2, 3, 12), 12)
    students.note(packed, 1, "packed", 40.5, steps=150, cpu_seconds=80.25)
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
