"""parallel-run worker: runs one ParallelRunStep entry script in this process.

Started by the parallel-run engine as

    python -u prs_worker.py <system arguments> <user arguments>

with its settings in the environment variable PARALLEL_RUN_WORKER (JSON) and two protocol pipes
(file descriptors named there, normally 3 = from the engine, 4 = to the engine). stdin, stdout
and stderr are not used by the protocol: whatever the entry script prints goes to the log files.

Frames, both ways: a 12-byte prefix (u32 little-endian header length, u64 little-endian payload
length), a UTF-8 JSON header with a "type", then the payload (an Arrow IPC stream, or nothing).
The engine's module documentation (src/worker/python/mod.rs) describes every message.
"""

import faulthandler
import gc
import json
import logging
import os
import struct
import sys
import threading
import time

CONFIG_ENV = "PARALLEL_RUN_WORKER"
# (module, folder under standins/): Azure modules parallel-run stands in for.
STANDINS = (("azureml_user.parallel_run", "azureml_user"), ("azureml.core", "azureml_core"))
RESULT_SHAPE_KEY = "parallel_run.result_shape"
PREFIX = struct.Struct("<IQ")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

pa = None  # pyarrow, imported by need_pyarrow() when a mini-batch or result needs it


def need_pyarrow():
    """Imports pyarrow on first use: a file dataset with text output never needs it (its import
    costs 0.1 to 0.25 s), and pandas imports it anyway for tabular jobs."""
    global pa
    if pa is None:
        import pyarrow
        import pyarrow.ipc  # noqa: F401

        pa = pyarrow
    return pa


def clean(text):
    """Text that survives JSON and UTF-8 on the engine side (no lone surrogates)."""
    return str(text).encode("utf-8", "backslashreplace").decode("utf-8")


def one_line(exc):
    """'ValueError: bad id 7' on one line."""
    try:
        text = str(exc)
    except Exception:
        text = "<unprintable>"
    name = type(exc).__name__
    message = "%s: %s" % (name, text) if text else name
    return clean(" ".join(message.splitlines()))


def signal_frame(kind):
    """A complete frame with the header {"type": kind} and no payload."""
    head = json.dumps({"type": kind}, separators=(",", ":")).encode("utf-8")
    return PREFIX.pack(len(head), 0) + head


# run() starts / run() returned (the engine's run_invocation_timeout counts the time between).
STARTED = signal_frame("STARTED")
RAN = signal_frame("RAN")


class Channel:
    """The two protocol pipes."""

    def __init__(self, read_fd, write_fd):
        self.read_fd = read_fd
        self.write_fd = write_fd

    def _read_bytes(self, n):
        chunks = []
        while n > 0:
            chunk = os.read(self.read_fd, n)
            if not chunk:
                raise EOFError
            chunks.append(chunk)
            n -= len(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _read_payload(self, n):
        # Read straight into an aligned Arrow buffer: the IPC reader then uses it without copies.
        buf = need_pyarrow().allocate_buffer(n)
        view = memoryview(buf)
        pos = 0
        while pos < n:
            got = os.readv(self.read_fd, [view[pos:]])
            if got == 0:
                raise EOFError
            pos += got
        return buf

    def recv(self):
        """The next (header, payload) from the engine; None when the engine has gone."""
        try:
            header_len, payload_len = PREFIX.unpack(self._read_bytes(PREFIX.size))
            header = json.loads(self._read_bytes(header_len)) if header_len else {}
            payload = self._read_payload(payload_len) if payload_len else None
        except EOFError:
            return None
        return header, payload

    def signal(self, frame):
        """Sends a prepared payload-less frame (STARTED, RAN): one small write."""
        view = memoryview(frame)
        while view:
            view = view[os.write(self.write_fd, view):]

    def send(self, header, payload=None):
        """Sends one frame with (nearly) one system call."""
        head = json.dumps(header, separators=(",", ":")).encode("utf-8")
        size = memoryview(payload).nbytes if payload is not None else 0
        parts = [memoryview(PREFIX.pack(len(head), size) + head)]
        if size:
            parts.append(memoryview(payload))
        while parts:
            written = os.writev(self.write_fd, parts)
            while parts and written >= parts[0].nbytes:
                written -= parts.pop(0).nbytes
            if parts and written:
                parts[0] = parts[0][written:]


class MiniBatchDataset:
    """``mini_batch_context.dataset``: the slice of the input this mini-batch holds, as Azure's
    scripts print or read it (``to_path()`` for file datasets, ``to_pandas_dataframe()`` for
    tables)."""

    __slots__ = ("input_name", "mini_batch_id", "partition_key_value", "_mini_batch")

    def __init__(self, context, mini_batch):
        self.input_name = context.input_name
        self.mini_batch_id = context.mini_batch_id
        self.partition_key_value = context.partition_key_value
        self._mini_batch = mini_batch

    def to_path(self):
        """The local paths of a file dataset's mini-batch."""
        if isinstance(self._mini_batch, list):
            return list(self._mini_batch)
        raise TypeError("input %r is a table, not a file dataset: use to_pandas_dataframe()" % self.input_name)

    def to_pandas_dataframe(self):
        """The rows of a tabular mini-batch as a pandas DataFrame."""
        if isinstance(self._mini_batch, list):
            raise TypeError("input %r is a file dataset: use to_path()" % self.input_name)
        to_pandas = getattr(self._mini_batch, "to_pandas", None)
        return to_pandas() if callable(to_pandas) else self._mini_batch

    def __repr__(self):
        text = "MiniBatchDataset(input=%r, mini_batch=%r" % (self.input_name, self.mini_batch_id)
        if self.partition_key_value:
            text += ", partition=%r" % (self.partition_key_value,)
        return text + ")"


class MiniBatchContext:
    """The second argument of a two-argument run(mini_batch, mini_batch_context)."""

    __slots__ = ("partition_key_value", "minibatch_index", "mini_batch_id", "input_name", "attempt",
                 "dataset")

    def __init__(self, header, mini_batch=None):
        self.partition_key_value = dict(header.get("partition_key_value") or {})
        self.minibatch_index = header.get("minibatch_index", 0)
        self.mini_batch_id = header.get("id", "")
        self.input_name = header.get("input_name", "")
        self.attempt = header.get("attempt", 1)
        self.dataset = MiniBatchDataset(self, mini_batch)

    def __getitem__(self, key):
        if key in self.__slots__:
            return getattr(self, key)
        raise KeyError(key)

    def get(self, key, default=None):
        return getattr(self, key, default) if key in self.__slots__ else default

    def keys(self):
        return list(self.__slots__)

    def __repr__(self):
        return "MiniBatchContext(%s)" % ", ".join(
            "%s=%r" % (key, getattr(self, key)) for key in self.__slots__
        )


class BadResult(Exception):
    """run() returned something that cannot be used."""


class MissingRun(AttributeError):
    """The entry script defines no run()."""


def load_error(exc, script):
    """(message, fatal) for a failed import of the entry script. The message names the file
    and line: a SyntaxError's own, else the innermost frame of the user's code. A SyntaxError,
    an ImportError or a missing run() fails the same way at every try: fatal (not retried)."""
    if isinstance(exc, MissingRun):
        return "%s: %s" % (script, exc), True
    if isinstance(exc, SyntaxError):
        where = "%s, line %s" % (exc.filename or script, exc.lineno)
        text = clean("%s: %s" % (type(exc).__name__, exc.msg))
    else:
        import traceback

        here = os.path.abspath(__file__)
        frames = [
            f for f in traceback.extract_tb(exc.__traceback__)
            if not f.filename.startswith("<") and os.path.abspath(f.filename) != here
        ]
        where = "%s, line %s" % (frames[-1].filename, frames[-1].lineno) if frames else script
        text = one_line(exc)
    return "%s: %s" % (clean(where), text), isinstance(exc, (SyntaxError, ImportError))


def format_exc():
    """The current exception's traceback (traceback is imported only when one is needed)."""
    import traceback

    return traceback.format_exc()


CO_VARARGS = 0x04


def wants_context(fn):
    """True when run() takes a second positional argument (the mini-batch context)."""
    code = getattr(fn, "__code__", None)
    if code is not None and getattr(fn, "__wrapped__", None) is None:
        # A plain function or method: its code object says it (no need for inspect, whose
        # import costs about 8 ms of every worker's start).
        positional = code.co_argcount - (1 if getattr(fn, "__self__", None) is not None else 0)
        if code.co_flags & CO_VARARGS:
            return positional >= 1
        return positional >= 2
    import inspect

    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = 0
    for p in parameters:
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            positional += 1
        elif p.kind == p.VAR_POSITIONAL:
            return positional >= 1
    return positional >= 2


def with_shape(table, shape):
    return table.replace_schema_metadata({RESULT_SHAPE_KEY: shape})


def list_table(values):
    """A list-like result as one column named "result"."""
    np = sys.modules.get("numpy")
    pd = sys.modules.get("pandas")
    if np is not None and isinstance(values, np.ndarray) and values.ndim > 1:
        values = list(values)
    try:
        if pd is not None and isinstance(values, pd.Series):
            array = pa.Array.from_pandas(values)
        elif isinstance(values, (pa.Array, pa.ChunkedArray)):
            array = values
        else:
            array = pa.array(values if not isinstance(values, tuple) else list(values))
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, ValueError):
        # Mixed or exotic elements: keep them as text, like the txt output would.
        array = pa.array([None if v is None else str(v) for v in values], type=pa.string())
    return with_shape(pa.table({"result": array}), "list")


def type_name(value):
    t = type(value)
    return t.__qualname__ if t.__module__ == "builtins" else "%s.%s" % (t.__module__, t.__qualname__)


def classify(result):
    """(kind, count, result) of a run() result; kind is 'frame', 'table' or 'list'."""
    if isinstance(result, (list, tuple)):
        return "list", len(result), result
    pd = sys.modules.get("pandas")
    np = sys.modules.get("numpy")
    arrow = sys.modules.get("pyarrow")  # a result can only be Arrow if pyarrow is loaded
    if pd is not None and isinstance(result, pd.DataFrame):
        return "frame", len(result), result
    if arrow is not None and isinstance(result, arrow.Table):
        return "table", result.num_rows, result
    if arrow is not None and isinstance(result, arrow.RecordBatch):
        return "table", result.num_rows, arrow.Table.from_batches([result])
    if np is not None and isinstance(result, np.ndarray):
        if result.ndim == 0:
            raise BadResult(
                "run() returned a 0-dimensional numpy array; return a list, an array or a DataFrame"
            )
        return "list", len(result), result
    if pd is not None and isinstance(result, pd.Series):
        return "list", len(result), result
    if arrow is not None and isinstance(result, (arrow.Array, arrow.ChunkedArray)):
        return "list", len(result), result
    if hasattr(result, "__arrow_c_stream__"):
        # Any Arrow-native table (polars, DuckDB, ...) through the Arrow PyCapsule interface.
        table = need_pyarrow().table(result)
        return "table", table.num_rows, table
    raise BadResult(
        "run() returned %s; return a pandas DataFrame, a list, a tuple, a numpy array or a "
        "pyarrow Table (one element or row per succeeded item)" % type_name(result)
    )


def as_text(result, kind):
    """PRS's own text format for a DataFrame or list result, or None for an Arrow table."""
    if kind == "frame":
        # Space-separated, no header, no index, pandas quoting.
        try:
            return result.to_csv(sep=" ", header=False, index=False, lineterminator="\n")
        except TypeError:  # pandas < 1.5
            return result.to_csv(sep=" ", header=False, index=False, line_terminator="\n")
    if kind == "list":
        arrow = sys.modules.get("pyarrow")
        if arrow is not None and isinstance(result, (arrow.Array, arrow.ChunkedArray)):
            result = result.to_pylist()
        return "".join([str(v) + "\n" for v in result])
    return None


def convert(result, kind):
    """The Arrow table sent back for a kept result."""
    need_pyarrow()
    if kind == "frame":
        try:
            # One thread: the workers are the parallelism (and threads cost more here).
            table = pa.Table.from_pandas(result, preserve_index=False, nthreads=1)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
            raise BadResult("run() returned a DataFrame that cannot be converted to Arrow: %s" % one_line(e))
        return with_shape(table, "table")
    if kind == "table":
        return with_shape(result, "table")
    return list_table(result)


def to_ipc(table):
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


class Worker:
    def __init__(self, config, channel):
        self.config = config
        self.channel = channel
        self.pandas_format = config.get("mini_batch_format", "pandas") != "pyarrow"
        self.module = None
        self.run_fn = None
        self.pass_context = False

    # --- start -----------------------------------------------------------------------------

    def needed_packages(self):
        """What this job's mini-batches and results need besides the standard library:
        pyarrow (and pandas for the default pandas format) when the job has tabular inputs;
        pyarrow for a file dataset whose list results are converted to Arrow (csv or parquet
        output); nothing for a file dataset with txt output or summary_only, whose paths and
        text travel without Arrow. Returns (names, why) for the error message."""
        if self.config.get("tabular", True):
            names = ["pyarrow", "pandas"] if self.pandas_format else ["pyarrow"]
            return names, "tabular mini-batches arrive as Arrow data"
        if self.config.get("keep_results", True) and self.config.get("output_format", "txt") != "txt":
            return ["pyarrow"], (
                "a file dataset's run() results are converted to Arrow for output_format %s "
                "(output_format txt needs the standard library only)"
                % self.config.get("output_format")
            )
        return [], ""

    def import_packages(self):
        """Imports the packages this job needs (see needed_packages) before READY, so that no
        run() pays for their import (pandas takes about 0.4 s, pyarrow 0.1 to 0.25 s) within
        its run_invocation_timeout. Returns an error message saying how to fix it when one is
        missing, else None."""
        import importlib
        import importlib.util

        python = sys.executable or "python"
        needed, why = self.needed_packages()
        missing = []
        for name in needed:
            try:
                if importlib.util.find_spec(name) is None:
                    missing.append(name)
            except Exception as e:
                return "%s cannot be imported with %s: %s" % (name, python, one_line(e))
        if missing:
            return (
                "%s %s not installed for %s (%s): add \"pip: [%s]\" to environment in the job "
                "file, or run: %s -m pip install %s"
                % (
                    " and ".join(missing),
                    "is" if len(missing) == 1 else "are",
                    python,
                    why,
                    ", ".join(needed),
                    python,
                    " ".join(needed),
                )
            )
        for name in needed:
            try:
                if name == "pyarrow":
                    need_pyarrow()
                else:
                    importlib.import_module(name)
            except Exception as e:
                return "%s cannot be imported with %s: %s" % (name, python, one_line(e))
        return None

    def import_entry_script(self):
        import importlib.util

        path = self.config["entry_script"]
        stem = os.path.splitext(os.path.basename(path))[0] or "entry_script"
        # The script is importable under its own name unless that name is taken already (a
        # standard module, or one of ours).
        name = stem if stem not in sys.modules else "__parallel_run_entry_%s" % stem
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ImportError("cannot import %s as a Python module" % path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        self.module = module
        run = getattr(module, "run", None)
        if not callable(run):
            raise MissingRun(
                "no run(mini_batch) function; define one (init() and shutdown() are optional)"
            )
        self.run_fn = run
        self.pass_context = wants_context(run)

    def start(self):
        """Imports and init(); sends READY or INIT_ERROR. Returns False when init failed."""
        error = self.import_packages()
        if error is not None:
            self.init_error("packages", error, None, fatal=True)
            return False
        try:
            self.import_entry_script()
        except BaseException as e:  # noqa: B902 - SystemExit at import is a failure too
            message, fatal = load_error(e, self.config["entry_script"])
            tb = None if isinstance(e, MissingRun) else format_exc()
            self.init_error("import", message, tb, fatal=fatal)
            return False
        init = getattr(self.module, "init", None)
        if self.config.get("check_only"):
            init = None  # parallel-run validate: the script loads; init() is not run
        if callable(init):
            try:
                init()
            except BaseException as e:  # noqa: B902
                self.init_error("init", one_line(e), format_exc())
                return False
        # What exists now (modules, the model) lives until the worker exits: keep it out of
        # the cyclic garbage collector's scans, which otherwise walk it again and again while
        # mini-batches allocate.
        gc.freeze()
        flush_std()
        self.channel.send(
            {
                "type": "READY",
                "pid": os.getpid(),
                "python": clean(sys.version.split()[0]),
                "pyarrow": pa.__version__ if pa is not None else None,
                "context": self.pass_context,
            }
        )
        return True

    def init_error(self, stage, message, tb, fatal=False):
        if tb:
            sys.stderr.write(tb)
        else:
            sys.stderr.write(message + "\n")
        flush_std()
        header = {"type": "INIT_ERROR", "stage": stage, "message": clean(message), "fatal": fatal}
        if tb:
            header["traceback"] = clean(tb)
        self.channel.send(header)

    # --- mini-batches ------------------------------------------------------------------------

    def mini_batch(self, header, payload):
        if header.get("kind") == "files":
            return header["paths"]  # file datasets: the paths travel in the header
        if payload is None:
            raise ValueError("the engine sent a RUN without data")
        table = pa.ipc.open_stream(payload).read_all()
        if self.pandas_format:
            # One block per column: about half the cost of consolidating them.
            return table.to_pandas(split_blocks=True)
        return table

    def run(self, header, payload):
        mb_id = header.get("id", "?")
        try:
            mini_batch = self.mini_batch(header, payload)
        except Exception as e:
            return {"type": "ERROR", "kind": "exception",
                    "message": "could not read mini batch %s: %s" % (mb_id, one_line(e)),
                    "traceback": clean(format_exc())}, None
        context = MiniBatchContext(header, mini_batch) if self.pass_context else None
        self.channel.signal(STARTED)
        try:
            if self.pass_context:
                result = self.run_fn(mini_batch, context)
            else:
                result = self.run_fn(mini_batch)
        except Exception as e:
            tb = format_exc()
            sys.stderr.write(
                "run() failed on mini batch %s (try %s):\n%s" % (mb_id, header.get("attempt", 1), tb)
            )
            return {"type": "ERROR", "kind": "exception", "message": one_line(e),
                    "traceback": clean(tb)}, None
        finally:
            flush_std()
        del mini_batch
        keep = header.get("keep_results", True)
        if keep:
            # Converting the result is not run()'s time: the engine's stall limit covers it.
            self.channel.signal(RAN)
        try:
            kind, count, result = classify(result)
            if not keep:
                return {"type": "RESULT", "returned": count}, None
            text = as_text(result, kind) if header.get("output_format") == "txt" else None
            if text is not None:
                # Pre-formatted lines go back as plain UTF-8 (no pyarrow needed).
                return {"type": "RESULT", "returned": count, "shape": "text"}, text.encode("utf-8")
            table = convert(result, kind)
        except BadResult as e:
            message = clean(str(e))
            sys.stderr.write("mini batch %s: %s\n" % (mb_id, message))
            return {"type": "ERROR", "kind": "bad_result", "message": message}, None
        except Exception as e:
            tb = format_exc()
            sys.stderr.write("mini batch %s: converting run()'s result failed:\n%s" % (mb_id, tb))
            return {"type": "ERROR", "kind": "bad_result",
                    "message": "run() returned a %s that cannot be converted: %s"
                    % (type_name(result), one_line(e)),
                    "traceback": clean(tb)}, None
        shape = table.schema.metadata[RESULT_SHAPE_KEY.encode()].decode()
        return {"type": "RESULT", "returned": count, "shape": shape}, to_ipc(table)

    def shutdown(self):
        header = {"type": "SHUTDOWN_DONE"}
        fn = getattr(self.module, "shutdown", None) if self.module is not None else None
        if callable(fn):
            try:
                fn()
            except Exception as e:
                tb = format_exc()
                sys.stderr.write("shutdown() failed:\n%s" % tb)
                header["error"] = one_line(e)
                header["traceback"] = clean(tb)
        flush_std()
        self.channel.send(header)

    def serve(self):
        while True:
            frame = self.channel.recv()
            if frame is None:
                return  # the engine has gone
            header, payload = frame
            del frame
            kind = header.get("type")
            if kind == "RUN":
                reply, data = self.run(header, payload)
                del payload
                self.channel.send(reply, data)
                del data
            elif kind == "SHUTDOWN":
                self.shutdown()
                return
            else:
                self.channel.send({"type": "ERROR", "kind": "protocol",
                                   "message": "unknown message %r" % (kind,)})


def flush_std():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass


def watch_parent(parent_pid):
    """Ends this worker (and its process group) if the engine dies while run() is busy."""
    import signal

    while True:
        time.sleep(1.0)
        if os.getppid() != parent_pid:
            try:
                os.killpg(os.getpgid(0), signal.SIGKILL)
            finally:
                os._exit(70)


def setup_sys_path(config):
    bootstrap_dir = os.path.dirname(os.path.abspath(__file__))
    script_dir = os.path.dirname(os.path.abspath(config["entry_script"]))
    # The bootstrap's folder was put first by Python; it goes after the user's folders, so
    # the user's own modules win, and our helper packages are still found.
    front = []
    for d in (config.get("source_directory"), script_dir, bootstrap_dir):
        if d and d not in front:
            front.append(d)
    rest = [p for p in sys.path if p not in front and os.path.abspath(p or ".") != bootstrap_dir]
    sys.path[:] = front + rest
    # Stand-ins for Azure modules, decided per module: each goes on the path only when the
    # real one is not installed (azureml is a namespace many packages share).
    import importlib.util

    for module, folder in STANDINS:
        try:
            installed = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            installed = False
        if not installed:
            sys.path.append(os.path.join(bootstrap_dir, "standins", folder))
            sys.modules.pop(module.split(".")[0], None)  # a namespace probed before re-resolves


def setup_logging(level):
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(handler)
    root.setLevel(level)


def main():
    config = json.loads(os.environ[CONFIG_ENV])
    read_fd, write_fd = config.get("fds", [3, 4])
    channel = Channel(read_fd, write_fd)
    os.set_inheritable(read_fd, False)
    os.set_inheritable(write_fd, False)
    faulthandler.enable()
    # The entry script sees its own path as argv[0] and the system's then the user's arguments.
    sys.argv = [config["entry_script"]] + sys.argv[1:]
    setup_sys_path(config)
    setup_logging(config.get("logging_level") or "INFO")
    parent = config.get("parent_pid")
    if parent:
        threading.Thread(target=watch_parent, args=(parent,), name="parallel-run-watchdog",
                         daemon=True).start()
    worker = Worker(config, channel)
    if not worker.start():
        logging.shutdown()
        os._exit(1)
    if config.get("check_only"):
        flush_std()
        logging.shutdown()
        os._exit(0)
    try:
        worker.serve()
    except BrokenPipeError:
        pass  # the engine has gone
    flush_std()
    logging.shutdown()
    # Skip the interpreter's teardown (hundreds of milliseconds with pandas loaded): shutdown()
    # has run and the logs are flushed. atexit hooks do not run; use shutdown() for clean-up.
    os._exit(0)


if __name__ == "__main__":
    main()
