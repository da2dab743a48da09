"""Grading, feedback and certificates (course design section 5).

    checks.py       Exercise/Check, comparisons with hints, JSON+npy transport (never pickle)
    ex_forward.py   module 02 exercises   ex_backward.py  module 03
    ex_module.py    module 04             ex_inference.py module 05
    registry.py     every exercise by id; pass mark 80% per module; modules 02-05 required
    runner.py       call a learner's object for one check: time limit, recorded forbidden calls
    feedback.py     `bncourse.check(exercise_id, obj)`: in-process feedback, never raises
    notebook.py     static reading of a notebook: module, code cells, forbidden names (ast)
    sandbox.py      run a notebook's code in a resource-limited child process
    grade.py        `bncourse grade PATH`: score in the grader's process, text and JSON reports
    certificate.py  `bncourse certificate` / `bncourse verify`: PDF + JSON record, HMAC
    assign.py       generate exercises/ from solutions/
    cli.py          the subcommands

Imports only what it grades: NumPy, torch, and `bncourse.reference`/`bncourse.nn` as the
trusted reference answers (plus matplotlib, lazily, to draw a certificate).
"""

__all__: list[str] = []
