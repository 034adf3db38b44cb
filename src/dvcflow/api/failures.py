"""The state a dvcflow task ends in when its stage failed: the stage's own words as the state's message.

Why a task returns this state instead of raising: Prefect words a raised exception's state itself
("Task run encountered an exception PipelineError: ..."), and that message is what the summary, `dvcflow
runs --json`, a notification and the UI show. A returned `Failed` state keeps dvcflow's message (the stage's
last error lines, `dvcflow.core.failures`), is retried as a raised exception is (`retry_condition_fn` gets
it), and carries the exception, so `.result()` still raises it. A retry that fails the same way says so.
After a Ctrl-C the stage's command was stopped, not failed: the state is `Crashed`, as for `run-a`.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from dvcflow.core.errors import DvcflowError
from dvcflow.core.failures import retry_note
from dvcflow.proc import children

_REMEMBERED = 256  # task runs whose failed attempts are kept, for the next attempt's comparison
_attempts: OrderedDict[str, list[str]] = OrderedDict()  # task run id → the messages of its failed attempts
_attempts_lock = threading.Lock()


def describe(exc: BaseException) -> str:
    """dvcflow's own message for its errors; `Type: message` for anything else."""
    if isinstance(exc, DvcflowError):
        return exc.message
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def failed(exc: Exception) -> Any:
    """The state the current task returns for `exc`: `Failed` with its message (and a note when an
    earlier attempt failed the same way), or `Crashed` when a Ctrl-C stopped the run."""
    from prefect.context import TaskRunContext
    from prefect.states import Crashed, Failed
    from prefect.transactions import Transaction, get_transaction

    message = describe(exc)
    if children.interrupted():
        transaction = get_transaction()
        if isinstance(transaction, Transaction):  # a Crashed state is no failure to Prefect: never cache it
            transaction.rollback()
        return Crashed(message=f"interrupted (Ctrl-C): {message}", data=exc)
    context = TaskRunContext.get()
    note = None
    if context is not None:
        key = str(context.task_run.id)
        with _attempts_lock:
            earlier = _attempts.pop(key, [])
            note = retry_note(earlier, message)
            _attempts[key] = [*earlier, message]
            while len(_attempts) > _REMEMBERED:
                _attempts.popitem(last=False)
    return Failed(message=f"{message} — {note}" if note else message, data=exc)


_PREFECT_WORDING = re.compile(r"^(?:Task|Flow) run encountered an exception:? ")


def retry_unless(state: Any, no_retry: Callable[[BaseException], bool]) -> bool:
    """The body of a `retry_condition_fn`: retry the failure in `state` unless a Ctrl-C stopped the run's
    commands (`children.interrupted`) or `no_retry` says of its exception that no retry fixes it."""
    if children.interrupted():
        return False
    try:
        exc = state.result(raise_on_failure=False)
    except Exception:
        return True
    return not no_retry(exc)


def state_message(state: Any) -> str | None:
    """A state's message as dvcflow shows it: for a task or flow that raised, without Prefect's wording
    around the error (`Task run encountered an exception PipelineError: ...`), and without the type name
    of dvcflow's own errors, whose message says it all."""
    message = getattr(state, "message", None)
    if not message:
        return None
    text = str(message)
    bare = _PREFECT_WORDING.sub("", text)
    if bare != text:
        name, colon, rest = bare.partition(": ")
        if colon and name in _error_names(DvcflowError):
            return rest
    return bare


def _error_names(root: type[BaseException]) -> set[str]:
    names = {root.__name__}
    for subclass in root.__subclasses__():
        names |= _error_names(subclass)
    return names
