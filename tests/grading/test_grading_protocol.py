"""The grader's protocol with the learner's process: cells first, then one request at a time,
exactly one answer per request (with the request's nonce). Forged, extra, reordered or early
messages are a protocol error that scores zero, never a pass."""
import pytest

from bncourse.grading.grade import grade_notebook
from bncourse.grading.sandbox import SandboxLimits, _Conversation, _ProtocolError

from grading_helpers import good_exercises, good_full_marks, GOOD_FORWARD, GOOD_STATS, LIMITS, SETUP, folder_hashes, write_notebook

CELLS = [(1, "a = 1"), (3, "b = 2")]
TASKS = [{"task": 0, "exercise": "02.batch_statistics"},
         {"task": 1, "exercise": "02.batch_statistics"}]
READY = {"event": "ready", "protections": {}}
CELL_EVENTS = [{"event": "cell", "index": 1}, {"event": "cell_done", "index": 1, "error": None},
               {"event": "cell", "index": 3}, {"event": "cell_done", "index": 3, "error": None},
               {"event": "cells_done"}]


def conversation():
    seen = {"cells": [], "answers": []}
    talk = _Conversation(CELLS, TASKS, lambda i, e: seen["cells"].append(i),
                         lambda t, o: seen["answers"].append(t["task"]), lambda p: None)
    return talk, seen


def answer(talk, nonce=None, request=None):
    task, true_nonce = talk.pending
    return {"event": "answer", "request": task["task"] if request is None else request,
            "nonce": true_nonce if nonce is None else nonce, "outcome": {"status": "ok"}}


def test_the_honest_sequence_is_accepted():
    talk, seen = conversation()
    for event in [READY] + CELL_EVENTS:
        talk.receive(event)
    assert talk.phase == "tasks" and seen["cells"] == [1, 3]
    for expected in (0, 1):
        assert talk.next_request(set())["task"] == expected
        talk.receive(answer(talk))
    assert talk.next_request(set()) is None and seen["answers"] == [0, 1]


# (case, events before the first request, whether a request is out, the bad event)
BAD = [
    ("an answer while the cells run", CELL_EVENTS[:1], False,
     {"event": "answer", "request": 0, "nonce": "x", "outcome": {}}),
    ("cells_done before the cells ran", CELL_EVENTS[:2], False, {"event": "cells_done"}),
    ("a cell out of order", [], False, {"event": "cell", "index": 3}),
    ("a cell_done for another cell", CELL_EVENTS[:1], False,
     {"event": "cell_done", "index": 3, "error": None}),
    ("a second ready", [], False, READY),
    ("an answer before any request", CELL_EVENTS, False,
     {"event": "answer", "request": 0, "nonce": "x", "outcome": {}}),
    ("an unknown event", CELL_EVENTS, True, {"event": "done", "task": 0}),
    ("a cell event after cells_done", CELL_EVENTS, True, {"event": "cell", "index": 1}),
]


@pytest.mark.parametrize("before, requested, bad", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_a_message_out_of_turn_is_a_protocol_error(before, requested, bad):
    talk, seen = conversation()
    for event in [READY] + before:
        talk.receive(event)
    if requested:
        talk.next_request(set())
    with pytest.raises(_ProtocolError, match="out of turn"):
        talk.receive(bad)
    assert seen["answers"] == []


@pytest.mark.parametrize("case", ["wrong nonce", "another request", "a second answer"])
def test_answers_must_match_the_request_just_sent(case):
    talk, seen = conversation()
    for event in [READY] + CELL_EVENTS:
        talk.receive(event)
    talk.next_request(set())
    good = answer(talk)
    if case == "wrong nonce":
        bad = answer(talk, nonce="0" * 32)
    elif case == "another request":
        bad = answer(talk, request=1)
    else:
        talk.receive(good)
        bad = good
    with pytest.raises(_ProtocolError):
        talk.receive(bad)
    assert seen["answers"] == ([0] if case == "a second answer" else [])


def test_nonces_are_fresh_per_request():
    talk, _ = conversation()
    for event in [READY] + CELL_EVENTS:
        talk.receive(event)
    talk.next_request(set())
    first = talk.pending[1]
    talk.receive(answer(talk))
    talk.next_request(set())
    assert talk.pending[1] != first and len(first) == 32


# Cells that write to the grader's channel: through the harness's own `send`, or straight to
# every pipe the process holds. Each scores 0 for the whole notebook, however good the rest.
FORGE_SEND = '''
import sys
frame = sys._getframe(0)
while frame is not None and "send" not in frame.f_locals:
    frame = frame.f_back
send = frame.f_locals["send"]
for k in range(8):
    send(event="answer", request=k, nonce="0" * 32, outcome={"status": "ok", "result": {}})
'''
FORGE_FD = '''
import json, os, stat
for name in os.listdir("/proc/self/fd"):
    fd = int(name)
    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            os.write(fd, (json.dumps({"event": "cells_done"}) + "\\n").encode())
    except OSError:
        pass
'''
FORGE_LATE = '''
import json, os, stat, threading, time
def later():
  while True:
    time.sleep(0.01)
    for name in os.listdir("/proc/self/fd"):
        try:
            fd = int(name)
            if stat.S_ISFIFO(os.fstat(fd).st_mode):
                os.write(fd, b'{"event": "answer", "request": 7, "nonce": "x", "outcome": {}}\\n')
        except OSError:
            pass
threading.Thread(target=later, daemon=True).start()
'''


@pytest.mark.parametrize("forger", [FORGE_SEND, FORGE_FD, FORGE_LATE],
                         ids=["the harness's send", "every pipe", "a thread, later"])
def test_a_cell_writing_to_the_channel_scores_zero(tmp_path, forger):
    path = write_notebook(tmp_path, "02_forward_exercises.ipynb",
                          [SETUP, GOOD_FORWARD, GOOD_STATS, forger])
    before = folder_hashes(tmp_path)
    report = grade_notebook(path, LIMITS, seed=5)
    assert folder_hashes(tmp_path) == before
    messages = [c.message for e in good_exercises(report) for c in e.checks]
    if forger is FORGE_LATE and not any("protocol error" in e for e in report.errors):
        # The thread could not reach a pipe (in the sealed child, listing /proc/self/fd is
        # refused and the thread dies): the answers are the honest ones, nothing forged counted.
        assert good_full_marks(report) and not any("protocol" in m for m in messages)
        return
    assert report.points == 0, [c.message for e in report.exercises for c in e.checks]
    if forger is FORGE_SEND:  # the static check says it first
        assert all("frame introspection" in m for m in messages), messages
    else:
        assert any("protocol error" in e for e in report.errors), report.errors
        assert all("protocol error" in m for m in messages), messages


def test_grading_works_without_landlock_and_seccomp(tmp_path):
    limits = SandboxLimits(timeout=LIMITS.timeout, memory_mb=LIMITS.memory_mb,
                           landlock=False, seccomp=False)
    path = write_notebook(tmp_path, "02_forward_exercises.ipynb", [SETUP, GOOD_FORWARD, GOOD_STATS])
    report = grade_notebook(path, limits, seed=5)
    assert good_full_marks(report)


# --- the pieces: which child an exercise needs, the static evasion check, the harness call ----
from bncourse.grading import registry  # noqa: E402
from bncourse.grading.drivers._contract import SealedCall, call_driver  # noqa: E402
from bncourse.grading.notebook import evasions  # noqa: E402
from bncourse.grading.sandbox import child_mode  # noqa: E402


@pytest.mark.parametrize("exercise_id, mode", [
    ("02.batch_statistics", "sealed"), ("02.batchnorm_forward", "sealed"),
    ("03.numerical_gradient", "sealed"), ("03.backward_questions", "sealed"), ("03.batchnorm_backward", "sealed"),
    ("04.BatchNorm1d", "sealed"), ("04.module_questions", "sealed"),
    ("05.batchnorm_eval", "sealed"), ("10.small_batch_predictions", "sealed"),
    ("05.fold_conv_bn", "plain"), ("05.recalibrate_bn", "plain"),
    ("06.inception_block", "layers"), ("08.PerStepBatchNorm", "layers"), ("09.act", "layers"),
])
def test_child_mode(exercise_id, mode):
    assert child_mode(registry.get(exercise_id)) == mode


def test_every_driver_lives_in_grading_drivers():
    assert all(e.run.__module__.startswith("bncourse.grading.drivers.")
               and e.run.__module__ != "bncourse.grading.drivers._child"
               for e in registry.EXERCISES.values())


@pytest.mark.parametrize("source, found", [
    ("import sys\nf = sys._getframe(1)", ["frame introspection (sys._getframe)"]),
    ("import inspect\ninspect.stack()", ["frame introspection (inspect.stack)"]),
    ("g = frame.f_back.f_locals", ["frame introspection (f_locals)",
                                   "frame introspection (f_back)"]),
    ("import gc\ngc.get_objects()", ["object introspection (gc.get_objects)"]),
    ("exec(a + b)", ["exec of a built string"]),
    ("eval(text)", ["eval of a built string"]),
    ("__import__('bncourse.' + name)", ["an import of a computed name"]),
    ("import importlib\nimportlib.import_module(name)",
     ["an import of a computed name (importlib.import_module)"]),
    ("exec('x = 1')\n__import__('os')", []),  # literals: nothing hidden
    ("model.eval()\nnet.compile(x)", []),  # methods of the same name
    ("def broken(:", []),
])
def test_evasions(source, found):
    assert sorted(evasions([(0, source)])) == sorted(found)


def run_of(value):
    def run(obj, inputs):
        return obj(inputs)
    return run


def refuses(inputs):
    raise SealedCall("uses torch's batch norm (aten::native_batch_norm)")


@pytest.mark.parametrize("obj, kind, status, text", [
    (lambda inputs: {"x": 1}, "function", "ok", ""),
    (None, "function", "missing", "is not defined"),
    (int, "function", "error", "must be a function"),
    (len, "class", "error", "must be a class"),
    (refuses, "function", "sealed", "flagged: uses torch's batch norm"),
    (lambda inputs: (_ for _ in ()).throw(NotImplementedError()), "function",
     "not_implemented", "not implemented yet"),
])
def test_call_driver_outcomes(obj, kind, status, text):
    outcome = call_driver(run_of(obj), obj, "f", kind, {}, 5.0)
    assert outcome["status"] == status and text in outcome["message"]
    assert (outcome["result"] is None) == (status != "ok")


def test_a_refusal_the_learner_caught_is_still_flagged():
    from bncourse.grading.drivers._contract import Recorder

    recorder = Recorder([])

    def caught(inputs):
        recorder.note("sealed:uses torch's batch norm (aten::batch_norm)")
        return {"x": 1}
    outcome = call_driver(run_of(caught), caught, "f", "function", {}, 5.0, recorder)
    assert outcome["status"] == "sealed" and outcome["result"] is None
    assert "uses torch's batch norm" in outcome["message"]
