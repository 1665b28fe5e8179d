"""The Airflow operator: its one-job-per-try logic against a stand-in client (no
Airflow needed), and, where Airflow is importable, the operator itself against real
clusters: ``execute`` with a minimal context (retries, idempotency, ``on_kill``), and
whole DAG runs through ``dag.test()`` (progress in the task log, the job id in XCom, a
failed job failing the task)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
import threading
import unittest
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, List, Optional

from cluster import ORDERS, ClusterTest, read_csv_rows, wait_until, write_job

from autopipe_client import JobState
from autopipe_client.idempotency import job_for_try, link_key, task_key
from autopipe_client.v1 import jobs_pb2

HAS_AIRFLOW = importlib.util.find_spec("airflow") is not None
NO_AIRFLOW = "Airflow is not importable (pip install apache-airflow, or put it on PYTHONPATH)"
# a record whose amount is no number: the job fails (any bad record fails a job by default)
BAD_ROWS = ORDERS + "4,c,not-a-number\n"
SCHEMA = 'schema = "id BIGINT, name VARCHAR, amount BIGINT"'


class StandInJobs:
    """The coordinator's request_id bookkeeping: a key starts a job once."""

    def __init__(self) -> None:
        self.by_key: Dict[str, str] = {}
        self.state: Dict[str, int] = {}
        self.submitted: List[str] = []

    def submit(self, spec: object, request_id: Optional[str] = None, *,
               origin: Optional[str] = None) -> str:
        assert request_id
        self.submitted.append(request_id)
        if request_id not in self.by_key:
            job = f"job-{len(self.by_key) + 1}"
            self.by_key[request_id], self.state[job] = job, JobState.RUNNING
        return self.by_key[request_id]

    def get(self, job_id: str) -> jobs_pb2.JobStatus:
        return jobs_pb2.JobStatus(job_id=job_id, state=self.state[job_id])


class OneJobPerTry(unittest.TestCase):
    def setUp(self) -> None:
        self.jobs = StandInJobs()

    def run_try(self, n: int) -> str:
        return job_for_try(self.jobs, "spec", "K", n)

    def test_the_key_is_the_task_instance_without_its_try(self) -> None:
        self.assertEqual(task_key("dag", "task", "run-1", 3), "airflow/dag/task/run-1/3")
        self.assertEqual([link_key("K", i) for i in (1, 2, 3)], ["K", "K#2", "K#3"])

    def test_a_retry_after_a_crash_re_attaches_to_the_running_job(self) -> None:
        self.assertEqual(self.run_try(1), "job-1")
        self.assertEqual(self.run_try(2), "job-1")  # try 1's worker died; its job runs on
        self.assertEqual(self.run_try(5), "job-1")
        self.assertEqual(len(self.jobs.state), 1)

    def test_a_retry_after_a_failed_job_starts_the_next_one(self) -> None:
        self.run_try(1)
        self.jobs.state["job-1"] = JobState.FAILED
        self.assertEqual(self.run_try(2), "job-2")
        self.assertEqual(self.jobs.submitted, ["K", "K", "K#2"])
        self.assertEqual(self.run_try(2), "job-2", "try 2 again (its worker died)")
        self.jobs.state["job-2"] = JobState.CANCELLED
        self.assertEqual(self.run_try(3), "job-3")
        self.assertEqual(self.jobs.by_key, {"K": "job-1", "K#2": "job-2", "K#3": "job-3"})

    def test_a_succeeded_job_is_not_run_again(self) -> None:
        self.run_try(1)
        self.jobs.state["job-1"] = JobState.SUCCEEDED
        self.assertEqual(self.run_try(2), "job-1")

    def test_never_more_jobs_than_tries_however_they_end(self) -> None:
        # each try: its job fails, its worker crashes, or it fails at once (a job that
        # has failed before the try even looks at it)
        outcomes = [JobState.FAILED, None, JobState.FAILED, None, None, JobState.CANCELLED]
        for n, outcome in enumerate(outcomes, start=1):
            job = self.run_try(n)
            if outcome is not None:
                self.jobs.state[job] = outcome
            self.assertLessEqual(len(self.jobs.state), n)
        # the chain ends at the first job that has not failed
        self.jobs.state = {j: JobState.FAILED for j in self.jobs.state}
        self.run_try(10)
        self.assertLessEqual(len(self.jobs.state), 10)


def _context(try_number: int, run_id: str) -> dict:
    """The part of an Airflow context the operator reads."""
    ti = SimpleNamespace(dag_id="dag", task_id="task", run_id=run_id, map_index=-1,
                         try_number=try_number)
    return {"ti": ti}


class AirflowTest(ClusterTest):
    @classmethod
    def setUpClass(cls) -> None:
        if not HAS_AIRFLOW:
            raise unittest.SkipTest(NO_AIRFLOW)
        # Airflow reads its home at import: a temporary one, not ~/airflow
        home = tempfile.TemporaryDirectory(prefix="autopipe-airflow-")
        cls.addClassCleanup(home.cleanup)
        os.environ["AIRFLOW_HOME"] = home.name
        super().setUpClass()

    def operator(self, spec: Path, **kwargs: object):  # -> AutopipeOperator
        from autopipe_client.airflow import AutopipeOperator

        return AutopipeOperator(task_id="task", spec=str(spec), coordinator=self.cluster.address,
                                token="", **kwargs)


class Operator(AirflowTest):
    CLUSTER = {"workers": 1, "slots": 2}

    def test_execute_runs_the_job_once_per_task_instance(self) -> None:
        spec = write_job(self.dir, "af-once")
        job_id = self.operator(spec).execute(_context(1, "once"))
        self.assertEqual(JobState(self.client.get(job_id).state), JobState.SUCCEEDED)
        self.assertEqual(read_csv_rows(self.dir / "out" / "af-once"), ["a,15", "b,20"])
        self.assertEqual(self.operator(spec).execute(_context(2, "once")), job_id, "not run again")
        other_run = self.operator(spec).execute(_context(1, "once-more"))
        self.assertNotEqual(other_run, job_id)
        self.assertEqual(len(list(self.client.list_jobs(name="af-once"))), 2)

    def test_a_failed_job_fails_the_task_and_the_next_try_runs_a_new_job(self) -> None:
        from airflow.exceptions import AirflowException

        spec = write_job(self.dir, "af-bad", rows=BAD_ROWS, extra_source=SCHEMA)
        first = self.operator(spec)
        with self.assertRaises(AirflowException) as e:
            first.execute(_context(1, "bad"))
        self.assertIn(f"job {first.job_id} failed", str(e.exception))
        second = self.operator(spec)
        with self.assertRaises(AirflowException):
            second.execute(_context(2, "bad"))
        self.assertNotEqual(second.job_id, first.job_id)
        jobs = list(self.client.list_jobs(name="af-bad"))
        self.assertEqual([JobState(j.state) for j in jobs], [JobState.FAILED] * 2)

    def test_without_wait_it_returns_once_submitted(self) -> None:
        op = self.operator(write_job(self.dir, "af-nowait"), wait=False)
        job_id = op.execute(_context(1, "nowait"))
        self.assertEqual(self.client.wait(job_id, progress=False, timeout=120).job_id, job_id)

    def test_whole_dag_runs_with_dag_test(self) -> None:
        dags = self.dir / "dags"
        write_job(dags, "af-dag")
        write_job(dags / "bad", "af-dag-bad", rows=BAD_ROWS, extra_source=SCHEMA)
        (dags / "autopipe_dags.py").write_text(DAG_FILE)
        env = {**os.environ, "AIRFLOW_HOME": str(self.dir / "home"),
               "AIRFLOW__CORE__DAGS_FOLDER": str(dags), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
               "AUTOPIPE_TEST_COORDINATOR": self.cluster.address}
        migrate = subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env,
                                 capture_output=True, text=True, timeout=300)
        self.assertEqual(migrate.returncode, 0, migrate.stdout[-3000:] + migrate.stderr[-3000:])
        run = subprocess.run([sys.executable, str(dags / "autopipe_dags.py")], env=env,
                             capture_output=True, text=True, timeout=300)
        out = run.stdout + run.stderr
        self.assertEqual(run.returncode, 0, out[-5000:])
        self.assertIn("RUN autopipe_ok success", out, out[-5000:])
        self.assertIn("RUN autopipe_bad failed", out, out[-5000:])
        job_id = next(line.split()[1] for line in out.splitlines() if line.startswith("XCOM "))
        self.assertEqual(JobState(self.client.get(job_id).state), JobState.SUCCEEDED)
        self.assertIn(f"{job_id} succeeded: stages 2/2", out, "progress in the task log")
        self.assertEqual(read_csv_rows(dags / "out" / "af-dag"), ["a,15", "b,20"])
        bad = list(self.client.list_jobs(name="af-dag-bad"))
        self.assertEqual([JobState(j.state) for j in bad], [JobState.FAILED])
        self.assertIn(f"job {bad[0].job_id} failed", out)


class OnKill(AirflowTest):
    CLUSTER = {"workers": 1, "slots": 2, "worker_args": ["--test-task-delay-ms", "600000"]}

    def test_killing_the_task_cancels_its_job(self) -> None:
        from airflow.exceptions import AirflowException

        op = self.operator(write_job(self.dir, "af-kill"), keepalive_seconds=1)
        raised: List[BaseException] = []

        def execute() -> None:
            try:
                op.execute(_context(1, "kill"))
            except BaseException as e:  # noqa: B902 - handed to the test thread
                raised.append(e)

        t = threading.Thread(target=execute, daemon=True)
        t.start()
        wait_until("the job to run", lambda: op.job_id
                   and self.client.get(op.job_id).state == JobState.RUNNING)
        op.on_kill()
        t.join(timeout=60)
        self.assertFalse(t.is_alive(), "execute returned")
        self.assertIsInstance(raised[0], AirflowException)
        self.assertIn("cancelled", str(raised[0]))
        self.assertEqual(JobState(self.client.get(op.job_id).state), JobState.CANCELLED)


DAG_FILE = '''
"""Two DAGs for test_airflow: a job that succeeds (its id to a downstream task through
XCom) and one that fails. Specs are relative to this file's directory."""
import datetime
import os
import sys

from airflow.sdk import DAG, task

from autopipe_client.airflow import AutopipeOperator

ADDR = os.environ["AUTOPIPE_TEST_COORDINATOR"]
START = datetime.datetime(2026, 1, 1)

with DAG("autopipe_ok", schedule=None, start_date=START) as ok:
    run = AutopipeOperator(task_id="run", spec="af-dag.toml", coordinator=ADDR, token="")

    @task
    def show(job_id):
        print("XCOM", job_id, flush=True)

    show(run.output)

with DAG("autopipe_bad", schedule=None, start_date=START) as bad:
    AutopipeOperator(task_id="run", spec="bad/af-dag-bad.toml", coordinator=ADDR, token="")

if __name__ == "__main__":
    for dag in (ok, bad):
        print("RUN", dag.dag_id, dag.test().state, flush=True)
'''


if __name__ == "__main__":
    unittest.main()
