"""flower-rs's warm ClientApp runner: Flower 1.42's `flwr-clientapp` task, run once for every task
token the node writes on standard input (one per line), in a process that stays alive across the
instructions of one run.

Each task is what `flwr-clientapp` does for its one task, through the same functions of Flower's:
pull the task's message, context, run and FAB from the node's runtime API with that task's
token, run the ClientApp, push its reply (or Flower's error reply) and the task's status and
context. What is kept from one task to the next is only what makes a fresh process slow: the
FAB's install and the loaded ClientApp (module state persists, as in Flower's simulation). A
task of another run or another FAB than the one the runner was started for is refused.

The tokens come on a descriptor of the runner's own: standard input is /dev/null for the app,
as for `flwr-clientapp`, so an app that reads it cannot take the next task's token. The runner
exits when the tokens end, on SIGINT or SIGTERM, or when the node's process goes away.
"""

import ctypes
import os
import signal
import sys
from logging import ERROR

from flwr.app import Message
from flwr.app.error import Error
from flwr.cli.install import install_from_fab
from flwr.clientapp.client_app import LoadClientAppError
from flwr.clientapp.utils import get_load_client_app_fn
from flwr.common.constant import ErrorCode, SubStatus
from flwr.supercore import log
from flwr.supercore.app_utils import start_parent_process_monitor
from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
from flwr.supercore.interceptors import (
    RuntimeTokenHttpInterceptor,
    RuntimeVersionHttpInterceptor,
)
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supernode.runtime.run_clientapp import (
    pull_task_input,
    push_message,
    push_task_output,
)


def runtime_client(address, token):
    return RuntimeHttpClient.from_server_address(
        server_address=address,
        insecure=True,
        root_certificates=None,
        interceptors=[
            RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
            RuntimeTokenHttpInterceptor(token),
        ],
        retry_invoker=make_simple_http_retry_invoker(),
    )


class Runner:
    """The run's ClientApp, loaded by its first task."""

    def __init__(self, address, run_id, fab_hash):
        self.address, self.run_id, self.fab_hash = address, run_id, fab_hash
        self.app = None

    def load(self, run, fab):
        if run.run_id != self.run_id or fab.hash_str != self.fab_hash:
            raise RuntimeError("a task of another run or FAB than this process serves")
        if self.app is None:
            install_from_fab(fab.content, skip_prompt=True)
            load = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)
            self.app = load(run.fab_id, run.fab_version, fab.hash_str)
        return self.app


def run_task(runner, token):
    """One task, as `flwr-clientapp` runs it."""
    client = runtime_client(runner.address, token)
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
    heartbeat.start()
    message = context = reply = None
    sub_status, details = SubStatus.FAILED, "ClientApp task failed due to unknown reason"
    try:
        message, context, run, fab = pull_task_input(client)
        reply = runner.load(run, fab)(message=message, context=context)
        sub_status, details = SubStatus.COMPLETED, ""
    except Exception as ex:  # pylint: disable=broad-exception-caught
        code = ErrorCode.CLIENT_APP_RAISED_EXCEPTION
        details = str(type(ex)) + ":<'" + str(ex) + "'>"
        if isinstance(ex, LoadClientAppError):
            code = ErrorCode.LOAD_CLIENT_APP_EXCEPTION
            details = "An exception was raised when attempting to load `ClientApp`"
        log(ERROR, "ClientApp raised an exception", exc_info=ex)
        if message:
            reply = Message(Error(code=code, reason=details), reply_to=message)
    finally:
        try:
            if reply and context:
                push_message(client, reply, context)
        except Exception as ex:  # pylint: disable=broad-exception-caught
            log(ERROR, "Failed to push reply message", exc_info=ex)
        push_task_output(client, context, sub_status, details)
        if heartbeat.is_running:
            heartbeat.stop()
        client.close()


def tokens():
    """The task tokens, from what was standard input; standard input itself becomes /dev/null."""
    fd = os.dup(0)
    os.set_inheritable(fd, False)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    sys.stdin = open(os.devnull, encoding="utf-8")
    return os.fdopen(fd, encoding="utf-8")


def main():
    address, parent_pid = sys.argv[1], int(sys.argv[2])
    run_id, fab_hash = int(sys.argv[3]), sys.argv[4]
    # Ended at once, as the node ends it: no retries of a task's output to a node that is gone.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: os._exit(1))
    # Not dumpable: other processes of the same user (another run's app) cannot open this one's
    # descriptors or memory through /proc.
    try:
        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE, 0
    except (OSError, AttributeError):
        pass
    start_parent_process_monitor(parent_pid)
    runner = Runner(address, run_id, fab_hash)
    for line in tokens():
        token = line.strip()
        if token:
            run_task(runner, token)


if __name__ == "__main__":
    main()
