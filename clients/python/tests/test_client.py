"""The client against real clusters: submit and wait, typed specs, idempotent
submission, paged listings with filters, cancellation, refusals with their details,
the decision log, a token-protected cluster, mutual TLS and a three-coordinator group
whose leader changes."""

from __future__ import annotations

import contextlib
import io
import unittest
import uuid
from typing import List

from cluster import TOTALS_SQL, ClusterTest, read_csv_rows, wait_until, write_job

import autopipe_client as ap
from autopipe_client import JobState
from autopipe_client.v1 import jobs_pb2

EXPECTED_TOTALS = ["a,15", "b,20"]


class SubmitAndWait(ClusterTest):
    CLUSTER = {"workers": 1, "slots": 2}

    def test_a_spec_file_with_relative_paths_runs_to_success_with_progress(self) -> None:
        spec = write_job(self.dir, "file-job")
        seen: List[jobs_pb2.JobStatus] = []
        job_id = self.client.submit(spec)
        self.assertTrue(job_id.startswith("file-job-"), job_id)
        final = self.client.wait(job_id, progress=seen.append, timeout=120)
        self.assertEqual(JobState(final.state), JobState.SUCCEEDED, final)
        self.assertEqual(seen[-1], final)
        self.assertEqual(final.output_path, f"file://{self.dir.resolve()}/out/file-job/")
        self.assertEqual(read_csv_rows(self.dir / "out" / "file-job"), EXPECTED_TOTALS)
        self.assertEqual(JobState(self.client.get(job_id).state), JobState.SUCCEEDED)

    def test_progress_lines_go_to_stderr_by_default(self) -> None:
        spec = write_job(self.dir, "lines")
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            self.client.wait(self.client.submit(str(spec)), timeout=120)
        lines = err.getvalue().splitlines()
        self.assertTrue(lines and lines[-1].startswith("["), lines)
        self.assertIn("succeeded: stages 2/2, tasks ", lines[-1])
        self.assertIn("rows in 3", lines[-1])

    def test_a_typed_pipeline_spec_runs(self) -> None:
        write_job(self.dir, "unused")  # the data
        spec = ap.PipelineSpec(
            job=ap.JobSpec(name="typed", params=ap.JobParams(shuffle_partitions=2)),
            sources=[ap.SourceSpec(name="orders", format="csv", path="data/orders.csv",
                                   has_header=True)],
            transform=ap.TransformSpec(sql=TOTALS_SQL),
            sink=ap.SinkSpec(format="csv", path="out/typed"),
        )
        job_id = self.client.submit(spec, resolve_relative_to=self.dir)
        final = self.client.wait(job_id, progress=False, timeout=120, raise_on_failure=True)
        self.assertEqual(final.name, "typed")
        self.assertEqual(read_csv_rows(self.dir / "out" / "typed"), EXPECTED_TOTALS)
        self.assertEqual(spec.sources[0].path, "data/orders.csv", "the caller's spec is unchanged")

    def test_the_same_request_id_returns_the_same_job_and_another_spec_is_refused(self) -> None:
        spec = write_job(self.dir, "idem")
        key = f"key-{uuid.uuid4().hex}"
        first = self.client.submit(spec, request_id=key)
        self.assertEqual(self.client.submit(spec, request_id=key), first)
        other = write_job(self.dir, "idem", sql="SELECT name FROM orders")
        with self.assertRaises(ap.AlreadyExists) as e:
            self.client.submit(other, request_id=key)
        self.assertEqual(e.exception.job_id, first)
        self.assertEqual(e.exception.reason, "REQUEST_ID_REUSED")
        self.assertEqual([f for f, _ in e.exception.field_violations], ["request_id"])
        self.assertIn(first, str(e.exception))
        self.client.wait(first, progress=False, timeout=120)

    def test_list_jobs_follows_pages_and_filters_by_state_and_name(self) -> None:
        name = self.name("paged")
        spec = write_job(self.dir, name)
        ids = [self.client.submit(spec) for _ in range(3)]
        for i in ids:
            self.client.wait(i, progress=False, timeout=120)
        pages = []
        call = self.client._call

        def counting(service: str, method: str, request: object) -> object:
            pages.append(method)
            return call(service, method, request)

        self.client._call = counting  # type: ignore[method-assign]
        try:
            listed = [j.job_id for j in self.client.list_jobs(name=name, page_size=2)]
        finally:
            del self.client._call
        self.assertEqual(listed, ids, "each job once, in submission order")
        self.assertEqual(pages, ["ListJobs", "ListJobs"])
        by_state = list(self.client.list_jobs(states=["succeeded"], name=name))
        self.assertEqual([j.job_id for j in by_state], ids)
        ended_badly = self.client.list_jobs(states=[JobState.FAILED, "cancelled"], name=name)
        self.assertEqual(list(ended_badly), [])
        self.assertEqual(list(self.client.list_jobs(name=self.name("nothing"))), [])
        everything = {j.job_id for j in self.client.list_jobs(page_size=1)}
        self.assertTrue(set(ids) <= everything)
        # plans only in the full view
        self.assertEqual({s.plan for s in next(self.client.list_jobs(name=name)).stages}, {""})
        full = next(self.client.list_jobs(name=name, full=True))
        self.assertTrue(all(s.plan for s in full.stages), full)
        with self.assertRaises(ValueError):
            list(self.client.list_jobs(states=["done"]))

    def test_a_relative_path_is_refused_naming_its_key(self) -> None:
        toml = write_job(self.dir, "relative").read_text()
        with self.assertRaises(ap.SpecError) as e:
            self.client.submit(toml)  # TOML text: sent as it is, relative paths and all
        err = e.exception
        self.assertEqual(err.field_violations[0][0], "sources[0].path")
        self.assertEqual(err.reason, "INVALID_SPEC")
        self.assertEqual(err.error_class, "permanent")
        self.assertTrue(
            str(err).startswith("sources[0].path: 'data/orders.csv' is a relative path"), err)
        typed = ap.PipelineSpec(
            job=ap.JobSpec(name="relative"),
            sources=[ap.SourceSpec(name="orders", format="csv", path=str(self.dir / "data"))],
            transform=ap.TransformSpec(sql="SELECT * FROM orders"),
            sink=ap.SinkSpec(format="csv", path="out/relative"))
        with self.assertRaises(ap.SpecError) as e:
            self.client.submit(typed)
        self.assertEqual(e.exception.field_violations[0][0], "sink.path")
        # the same text resolved against its directory runs
        job_id = self.client.submit(toml, resolve_relative_to=self.dir)
        self.client.wait(job_id, progress=False, timeout=120, raise_on_failure=True)

    def test_a_spec_error_the_server_finds_names_its_key(self) -> None:
        with self.assertRaises(ap.SpecError) as e:
            self.client.submit(write_job(self.dir, "Bad Name"))
        self.assertEqual(e.exception.field_violations[0][0], "job.name")
        with self.assertRaises(ap.SpecError) as e:
            self.client.submit(self.dir / "missing.toml")
        self.assertIn("missing.toml", str(e.exception))

    def test_decisions_workers_and_unknown_jobs(self) -> None:
        job_id = self.client.submit(write_job(self.dir, "decided"))
        self.client.wait(job_id, progress=False, timeout=120)
        everything = self.client.decisions()
        self.assertIsInstance(everything, list)
        mine = self.client.decisions(job_id)
        self.assertTrue(all(d.job_id == job_id for d in mine), mine)
        self.assertTrue({d.id for d in mine} <= {d.id for d in everything})
        for d in mine:
            ap.DecisionKind(d.kind)  # a known kind
        workers = self.client.workers()
        self.assertEqual([ap.WorkerState(w.state) for w in workers], [ap.WorkerState.ALIVE])
        self.assertEqual(workers[0].slots, 2)
        with self.assertRaises(ap.NotFound):
            self.client.get("no-such-job")
        with self.assertRaises(ap.NotFound):
            self.client.wait("no-such-job", progress=False)


class Cancel(ClusterTest):
    # every task takes ten minutes: a job runs until it is cancelled
    CLUSTER = {"workers": 1, "slots": 2, "worker_args": ["--test-task-delay-ms", "600000"]}

    def test_a_running_job_is_cancelled(self) -> None:
        job_id = self.client.submit(write_job(self.dir, "slow"))
        wait_until("the job to run", lambda: self.client.get(job_id).state == JobState.RUNNING)
        with self.assertRaises(ap.DeadlineExceeded) as e:
            self.client.wait(job_id, progress=False, timeout=0.5)
        self.assertIsInstance(e.exception, TimeoutError)
        self.assertIn(job_id, str(e.exception))
        self.assertIn(self.client.cancel(job_id).state, (JobState.RUNNING, JobState.CANCELLED))
        with self.assertRaises(ap.JobFailed) as failed:
            self.client.wait(job_id, progress=False, timeout=60, raise_on_failure=True)
        self.assertEqual(JobState(failed.exception.status.state), JobState.CANCELLED)
        self.assertTrue(str(failed.exception).startswith(f"job {job_id} cancelled"),
                        failed.exception)
        final = self.client.wait(job_id, progress=False)
        self.assertEqual(JobState(final.state), JobState.CANCELLED)
        # cancelling an ended job leaves it as it is
        self.assertEqual(JobState(self.client.cancel(job_id).state), JobState.CANCELLED)


class Token(ClusterTest):
    CLUSTER = {"workers": 0, "token": "s3cret-py-token"}

    def test_calls_without_the_right_token_are_refused(self) -> None:
        for token in ["", "wrong"]:
            with self.cluster.client(token=token) as c, self.assertRaises(ap.Unauthenticated) as e:
                c.workers()
            self.assertIn("token", str(e.exception))
        self.assertEqual(self.client.workers(), [])
        job_id = self.client.submit(write_job(self.dir, "authed"))
        self.assertEqual(JobState(self.client.get(job_id).state), JobState.QUEUED)


class Tls(ClusterTest):
    CLUSTER = {"workers": 0, "tls": True}

    def test_a_cluster_with_mutual_tls(self) -> None:
        job_id = self.client.submit(write_job(self.dir, "tls"))
        self.assertEqual([j.job_id for j in self.client.list_jobs(name="tls")], [job_id])
        with self.cluster.client(address=f"https://{self.cluster.address}") as c:
            self.assertEqual(c.get(job_id).job_id, job_id)
        # without the client certificate the handshake fails
        with self.cluster.client(tls_cert=None, tls_key=None, retries=0) as c, \
                self.assertRaises(ap.Unavailable):
            c.workers()


class Group(ClusterTest):
    CLUSTER = {"workers": 1, "coordinators": 3}

    def test_a_client_given_a_follower_talks_to_the_leader(self) -> None:
        follower = self.cluster.followers()[0]
        self.assertNotEqual(follower.addr, self.cluster.leader().addr)
        with ap.Client(follower.addr, token="") as c:
            job_id = c.submit(write_job(self.dir, "followed"))
            final = c.wait(job_id, progress=False, timeout=120, raise_on_failure=True)
            self.assertEqual(final.job_id, job_id)
            self.assertEqual(len(c.cluster().members), 3)
            self.assertEqual([j.job_id for j in c.list_jobs(name="followed")], [job_id])
        self.assertEqual(read_csv_rows(self.dir / "out" / "followed"), EXPECTED_TOTALS)

    def test_the_client_follows_a_new_leader(self) -> None:
        with self.cluster.client(retries=30) as c:
            before = c.submit(write_job(self.dir, "before"))
            c.wait(before, progress=False, timeout=120, raise_on_failure=True)
            self.cluster.leader().kill()
            # the calls to the dead leader fail as UNAVAILABLE; the client finds the new one
            self.assertEqual(JobState(c.get(before).state), JobState.SUCCEEDED)
            after = c.submit(write_job(self.dir, "after"))
            c.wait(after, progress=False, timeout=120, raise_on_failure=True)
        self.assertEqual(read_csv_rows(self.dir / "out" / "after"), EXPECTED_TOTALS)


if __name__ == "__main__":
    unittest.main()
