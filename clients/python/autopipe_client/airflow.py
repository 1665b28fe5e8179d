"""An Airflow operator that runs an autopipe pipeline: ``AutopipeOperator``.

Importing this module needs Airflow (2.7+ or 3); the rest of the package does not.
``execute`` submits the spec under the task instance's key as ``request_id`` (see
:mod:`autopipe_client.idempotency`: a retry after a crash re-attaches to the running
job, a retry after a failed job starts a new one), waits with progress lines in the
task log, pushes the job id to XCom (the return value) and fails the task with the
job's error when the job fails. Killing the task (``on_kill``: marked failed or
cleared in the UI, a timeout) cancels the job.

::

    AutopipeOperator(
        task_id="revenue",
        spec="pipelines/revenue.toml",        # relative: to the DAG file's directory
        autopipe_conn_id="autopipe_default",  # host:port, and the token as password
    )
"""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence

from autopipe_client.client import Client
from autopipe_client.enums import state_name
from autopipe_client.errors import AutopipeError
from autopipe_client.idempotency import job_for_try, task_key
from autopipe_client.progress import ProgressLines

try:  # Airflow 3
    from airflow.sdk import BaseHook, BaseOperator
except ImportError:  # Airflow 2
    from airflow.hooks.base import BaseHook  # type: ignore[no-redef, attr-defined]
    from airflow.models import BaseOperator  # type: ignore[no-redef]
from airflow.exceptions import AirflowException


class AutopipeOperator(BaseOperator):
    """Runs an autopipe pipeline and (by default) waits for it.

    Args:
        spec: a spec file (relative: to the DAG file's directory) or TOML text;
            templated.
        coordinator: the coordinator's address(es), ``host:port[,host:port...]``
            (default: the connection's host and port, else ``$AUTOPIPE_COORDINATOR``).
        token: the cluster's auth token (default: the connection's password, else
            ``$AUTOPIPE_AUTH_TOKEN``).
        autopipe_conn_id: an Airflow connection holding the coordinator (host, port)
            and the token (password).
        wait: follow the job to its end (False: return once submitted).
        keepalive_seconds: how often a quiet job's status is sent again while waiting.
        wait_timeout: give up waiting after this many seconds (the job runs on; the task
            fails). None: as long as it runs.
        request_id: the idempotency key (templated; default: the task instance's key,
            ``airflow/DAG/TASK/RUN_ID/MAP_INDEX``). Clearing a task whose job
            succeeded does not run it again under the default key; give a key with
            ``{{ ti.try_number }}`` in it to run every try anew.
    """

    template_fields: Sequence[str] = ("spec", "request_id")
    ui_color = "#d6eaf8"

    def __init__(self, *, spec: str, coordinator: Optional[str] = None,
                 token: Optional[str] = None, autopipe_conn_id: Optional[str] = None,
                 wait: bool = True, keepalive_seconds: int = 15,
                 wait_timeout: Optional[float] = None, request_id: Optional[str] = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spec = spec
        self.coordinator = coordinator
        self.token = token
        self.autopipe_conn_id = autopipe_conn_id
        self.wait = wait
        self.keepalive_seconds = keepalive_seconds
        self.wait_timeout = wait_timeout
        self.request_id = request_id
        self.job_id: Optional[str] = None

    def client(self) -> Client:
        """A client for the configured cluster."""
        coordinator, token = self.coordinator, self.token
        if self.autopipe_conn_id:
            conn = BaseHook.get_connection(self.autopipe_conn_id)
            if not coordinator and conn.host:
                coordinator = f"{conn.host}:{conn.port}" if conn.port else conn.host
            token = token or conn.password or None
        return Client(coordinator, token)

    def _spec(self) -> str:
        """The spec, a relative file path resolved against the DAG file's directory."""
        spec = self.spec
        fileloc = getattr(self.dag, "fileloc", None) if self.has_dag() else None
        if "\n" in spec or os.path.isabs(spec) or not fileloc:
            return spec
        return os.path.join(os.path.dirname(fileloc), spec)

    def execute(self, context: Any) -> str:
        ti = context["ti"]
        key = self.request_id or task_key(ti.dag_id, ti.task_id, ti.run_id,
                                          getattr(ti, "map_index", -1))
        try:
            with self.client() as c:
                self.job_id = job_for_try(c, self._spec(), key, ti.try_number,
                                          origin=f"airflow:{ti.dag_id}.{ti.task_id}",
                                          log=self.log.info)
                self.log.info("autopipe job %s (request_id %s)", self.job_id, key)
                if self.wait:
                    st = c.wait(self.job_id, progress=ProgressLines(self.log.info),
                                timeout=self.wait_timeout, raise_on_failure=True,
                                keepalive_seconds=self.keepalive_seconds)
                    self.log.info("job %s succeeded: %d rows in, %d rows out, output %s",
                                  st.job_id, st.rows_in, st.rows_out, st.output_path)
        except AutopipeError as e:
            raise AirflowException(str(e)) from e
        return self.job_id

    def on_kill(self) -> None:
        if self.job_id is None:
            return
        with self.client() as c:
            st = c.cancel(self.job_id)
        self.log.info("cancelled autopipe job %s (now %s)", self.job_id, state_name(st.state))
