"""flower-rs's warm ClientApp runner: Flower 1.42's `flwr-clientapp` task, run once for every task
token the node writes on standard input (one per line), in a process that stays alive across the
instructions of one run.

Each task is what `flwr-clientapp` does for its one task, through the same functions of Flower's:
pull the task's message, context, run and FAB from the node's runtime API with that task's
token, run the ClientApp, push its reply (or Flower's error reply) and the task's status and
context. What is kept from one task to the next is only what makes a fresh process slow: the
FAB's install and the loaded ClientApp (module state persists, as in Flower's simulation).
The runner exits when standard input closes or the node's process goes away.
"""

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


def run_task(address, token, loaded):
    """One task, as `flwr-clientapp` runs it; `loaded` keeps ClientApps by FAB."""
    client = runtime_client(address, token)
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
    heartbeat.start()
    message = context = reply = None
    sub_status, details = SubStatus.FAILED, "ClientApp task failed due to unknown reason"
    try:
        message, context, run, fab = pull_task_input(client)
        key = (run.fab_id, run.fab_version, fab.hash_str)
        if key not in loaded:
            install_from_fab(fab.content, skip_prompt=True)
            load = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)
            loaded[key] = load(*key)
        reply = loaded[key](message=message, context=context)
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
        heartbeat.stop()
        client.close()


def main():
    address, parent_pid = sys.argv[1], int(sys.argv[2])
    start_parent_process_monitor(parent_pid)
    loaded = {}
    for line in sys.stdin:
        token = line.strip()
        if token:
            run_task(address, token, loaded)


if __name__ == "__main__":
    main()
