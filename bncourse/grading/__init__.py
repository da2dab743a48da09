"""Grading, feedback and certificates (course design section 5).

    checks.py       Exercise/Check, comparisons with hints, JSON+npy transport (never pickle)
    lessons/        the checks of each graded lesson, one file a lesson (lNN_topic.py)
    registry.py     every exercise by id, derived from lessons/; pass mark 80% per module
    runner.py       call a learner's object for one check: time limit, recorded forbidden calls
    feedback.py     `bncourse.check(exercise_id, obj)`: in-process feedback, never raises
    notebook.py     static reading of a notebook: module, code cells, forbidden names (ast)
    sandbox.py      run a notebook's code in a resource-limited child process
    grade.py        `bncourse grade PATH`: score in the grader's process, text and JSON reports
    certificate/    `bncourse keygen/certificate/verify`: Open Badges 3.0 credential, Ed25519, PDF
    batch.py        `bncourse grade CLASS/`: one worker per learner, gradebook CSV + JSON
    assign.py       generate exercises/ from solutions/
    cli.py          the subcommands

Imports only what it grades: NumPy, torch, and `bncourse.reference`/`bncourse.nn` as the
trusted reference answers (plus matplotlib, lazily, to draw a certificate).
"""

__all__: list[str] = []
