"""Drivers: the code of each exercise that runs in the learner's process (one file a lesson).

`lNN_<topic>.py` holds the `run(obj, inputs)` functions of lesson NN's exercises. A driver
calls the learner's object on inputs the grader sends and returns plain data; it imports only
NumPy, torch, the standard library and `_contract`, never a reference, an input generator or an
expected result (those stay in `bncourse.grading.lessons`, in the grader's process).
"""

__all__: list[str] = []
