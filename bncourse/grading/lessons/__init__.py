"""The checks of each graded lesson, one file a lesson: `lNN_<topic>.py`.

Each file defines `MODULE` ("06"), `NOTEBOOK` (the exercise notebook's file name in
`solutions/` and `exercises/`), `REQUIRED` (needed for the certificate) and `EXERCISES` (a tuple
of `Exercise`). `bncourse.grading.registry` finds them: adding a lesson adds a file here and
touches nothing in the engine.
"""
