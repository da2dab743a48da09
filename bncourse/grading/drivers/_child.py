"""The harness of the process that runs a learner's code (started by `sandbox.py`).

Run as a script, `python -I .../drivers/_child.py IN_FD OUT_FD`, so that nothing of the grader is
imported before the process is confined. It imports `confine.py` (by path), `_contract.py` and the
exercise's driver files, never a reference, an input generator or an expected result. In order:

1. read the job (the cells, limits, what to block) from IN_FD, confine the process (Landlock,
   seccomp, rlimits: `confine.py`), say "ready";
2. import NumPy and torch, block the imports the job names (a meta-path finder), and for an
   exercise that implements batch norm disable torch's batch-norm kernels at the dispatcher;
3. run every code cell (time limit per cell), reporting each, then "cells_done";
4. only then answer requests, one at a time: the parent sends one check's inputs with a fresh
   nonce, the harness calls the learner's object through the driver and sends one answer.

The parent accepts exactly that sequence; a message out of turn is a protocol error that scores
zero, so nothing a cell writes to these pipes can help it.
"""
import base64
import builtins
import importlib.util
import json
import os
import pickle
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
_CONFINE = os.path.join(os.path.dirname(_HERE), "confine.py")

# torch's batch-norm operators, disabled in a sealed process (dir(torch.ops.aten) lists only
# the ones already loaded, so the known names are listed too).
BN_OPS = ("batch_norm", "native_batch_norm", "native_batch_norm_backward",
          "_native_batch_norm_legit", "_native_batch_norm_legit_no_training",
          "_native_batch_norm_legit_functional", "_batch_norm_impl_index",
          "_batch_norm_impl_index_backward", "_batch_norm_with_update",
          "_batch_norm_with_update_functional", "_batch_norm_no_update", "batch_norm_backward",
          "cudnn_batch_norm", "cudnn_batch_norm_backward", "miopen_batch_norm",
          "miopen_batch_norm_backward", "batch_norm_stats", "batch_norm_elemt",
          "batch_norm_gather_stats", "batch_norm_gather_stats_with_counts",
          "batch_norm_backward_reduce", "batch_norm_backward_elemt", "batch_norm_update_stats")
# Other normalizations that compute batch norm on a transposed batch ((C, N*L) rows): refused
# too in a sealed process (no exercise of lessons 02-05 needs them).
OTHER_NORM_OPS = ("layer_norm", "native_layer_norm", "native_layer_norm_backward", "group_norm",
                  "native_group_norm", "native_group_norm_backward")
BN_KEYS = ("CompositeImplicitAutograd", "CompositeExplicitAutograd", "CPU", "Autograd",
           "AutogradCPU", "Meta")
SEALED_MESSAGE = "uses torch's batch norm"


def _load_confine():
    spec = importlib.util.spec_from_file_location("_bncourse_confine", _CONFINE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Blocker:
    """A meta-path finder that refuses the modules a learner's process may not import."""

    def __init__(self, blocked, allowed):
        """blocked: package names (with their submodules); allowed: exceptions, exact names
        or `name.*` for a package with its submodules."""
        self.blocked = tuple(blocked)
        self.exact = frozenset(a for a in allowed if not a.endswith(".*"))
        self.trees = tuple(a[:-2] for a in allowed if a.endswith(".*"))

    def _refused(self, name):
        def under(prefixes):
            return any(name == p or name.startswith(p + ".") for p in prefixes)
        return under(self.blocked) and name not in self.exact and not under(self.trees)

    def find_spec(self, name, path=None, target=None):
        if self._refused(name):
            # ModuleNotFoundError (an ImportError): libraries' optional imports treat it as absent
            raise ModuleNotFoundError(f"{name} cannot be imported while grading (this exercise asks "
                              "you to write it yourself)", name=name)
        return None


def _seal_torch(recorder):
    """Disable torch's batch norm at the dispatcher (every route: F.batch_norm, nn.BatchNorm*,
    torch.batch_norm, torch.ops.aten.*, torch.func) and in torch's Python decompositions."""
    import warnings

    import torch

    from bncourse.grading.drivers._contract import SealedCall

    def raiser(name):
        what = SEALED_MESSAGE if "batch_norm" in name else "uses torch's layer or group norm"

        def refuse(*args, **kwargs):
            recorder.note(f"sealed:{what} (aten::{name})")
            raise SealedCall(f"{what} (aten::{name})")
        return refuse

    library = torch.library.Library("aten", "IMPL")
    names = sorted(set(BN_OPS) | set(OTHER_NORM_OPS)
                   | {n for n in dir(torch.ops.aten) if "batch_norm" in n})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in names:
            try:
                packet = getattr(torch.ops.aten, name)
            except (AttributeError, RuntimeError):
                continue
            for overload in packet.overloads():
                full = name if overload == "default" else f"{name}.{overload}"
                for key in BN_KEYS:
                    try:
                        library.impl(full, raiser(full), key)
                    except Exception:  # no kernel of that kind for this operator
                        pass
    try:  # pure-Python batch norm inside torch: the decompositions and their tables
        import torch._decomp as decomp
        import torch._decomp.decompositions as decompositions

        for attr in [a for a in dir(decompositions) if "batch_norm" in a]:
            if callable(getattr(decompositions, attr)):
                setattr(decompositions, attr, raiser(attr))
        tables = [decomp.decomposition_table] + list(getattr(decomp, "global_decomposition_table",
                                                             {}).values())
        for table in tables:
            for op in [op for op in table if "batch_norm" in str(op)]:
                table[op] = raiser(str(op))
    except Exception:
        pass
    return library  # keep it alive: dropping it would restore the kernels


class _CappedWriter:
    """sys.stdout/stderr for learner code: passes the first `cap` bytes on, drops the rest."""

    def __init__(self, stream, cap):
        self._stream, self._left = stream, cap
        self.encoding = "utf-8"

    def write(self, text):
        text = str(text)
        if self._left > 0:
            chunk = text[: self._left]
            self._left -= len(chunk)
            try:
                self._stream.write(chunk)
            except Exception:
                pass
        return len(text)

    def flush(self):
        try:
            self._stream.flush()
        except Exception:
            pass

    def isatty(self):
        return False


def main(in_fd: int, out_fd: int) -> None:
    requests = os.fdopen(in_fd, "rb")
    events = os.fdopen(out_fd, "w", buffering=1, encoding="utf-8")

    def send(**event):
        events.write(json.dumps(event) + "\n")
        events.flush()

    job = json.loads(requests.readline())
    confine = _load_confine()
    protections = confine.confine(
        read_roots=job["read_roots"], write_roots=job["write_roots"], hidden=job["hidden"],
        visible=job["visible"], memory_mb=job["memory_mb"], cpu_seconds=job["cpu_seconds"],
        file_bytes=job["file_bytes"], processes=job["processes"],
        landlock=job["landlock"], seccomp=job["seccomp"])
    send(event="ready", protections=dict(protections))
    sys.stdout = _CappedWriter(sys.__stdout__, job["output_bytes"])
    sys.stderr = _CappedWriter(sys.__stderr__, job["output_bytes"])

    import numpy  # noqa: F401  (import once, before learner code, as the notebooks do)
    import torch  # noqa: F401

    sys.meta_path.insert(0, _Blocker(job["blocked"], job["allowed"]))
    for name in [m for m in sys.modules if _Blocker(job["blocked"], job["allowed"])._refused(m)]:
        del sys.modules[name]

    from bncourse.grading.drivers._contract import Recorder, call_driver, describe_exception, \
        encode, time_limit, SubmissionError, CheckTimeout

    recorder = Recorder(job["forbidden"])
    recorder.install()
    sealed = _seal_torch(recorder) if job["seal_torch"] else None  # noqa: F841 (kept alive)
    drivers = {}
    for module_name in job["drivers"]:
        if module_name.startswith("bncourse.grading.drivers.") or job["lessons_allowed"]:
            drivers[module_name] = importlib.import_module(module_name)
    import bncourse

    bncourse.check = lambda *args, **kwargs: None  # feedback is for the notebook, not here
    try:
        import matplotlib

        matplotlib.use("Agg")
    except Exception:
        pass
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    for index, source in job["cells"]:
        send(event="cell", index=index)
        error = None
        try:
            code = compile(source, f"<cell {index}>", "exec")
            with time_limit(job["timeout"]):
                exec(code, namespace)
        except SyntaxError as exc:
            error = f"SyntaxError: {exc.msg} (line {exc.lineno})"
        except CheckTimeout:
            error = f"stopped after {job['timeout']:g} s (time limit per cell)"
        except BaseException as exc:  # a failing cell is reported; grading goes on
            error = describe_exception(exc)
        send(event="cell_done", index=index, error=error)
    send(event="cells_done")
    while True:
        line = requests.readline()
        if not line:
            break
        request = json.loads(line)
        if request.get("request") is None:
            break
        inputs = pickle.loads(base64.b64decode(request["inputs"]))  # from the grader
        module_name, function = request["driver"].split(":")
        run = getattr(drivers[module_name], function)
        outcome = call_driver(run, namespace.get(request["name"]), request["name"],
                              request["kind"], inputs, request.get("timeout", job["timeout"]),
                              recorder)
        if outcome["status"] == "ok":
            try:
                outcome["result"] = encode(outcome["result"])
            except SubmissionError as exc:
                outcome.update(status="error", message=str(exc), result=None)
        send(event="answer", request=request["request"], nonce=request["nonce"],
             outcome=outcome)
    events.close()
    os._exit(0)  # skip interpreter shutdown: learner threads or atexit hooks cannot delay it


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
