"""The client's pieces without a cluster: spec forms and path resolution, error
decoding, progress lines, state names."""

from __future__ import annotations

import json
import tempfile
import unittest
from pathlib import Path
from typing import List, Sequence, Tuple

import grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

import autopipe_client as ap
from autopipe_client.errors import from_rpc_error
from autopipe_client.progress import ProgressLines
from autopipe_client.spec import absolute, request_fields
from autopipe_client.v1 import jobs_pb2

SPEC = """
[job]
name = "units"
[[sources]]
name = "orders"
format = "csv"
path = "data/orders.csv"
[[sources]]
name = "clicks"
format = "kafka"
brokers = "127.0.0.1:9092"
topic = "clicks"
[[sources]]
name = "remote"
format = "parquet"
path = "s3://bucket/events/"
[transform]
sql = "SELECT 1"
[sink]
format = "parquet"
path = "../out/"
dead_letter_path = "bad"
"""


class Specs(unittest.TestCase):
    def test_relative_paths_resolve_as_the_cli_resolves_them(self) -> None:
        self.assertEqual(absolute("data/x.csv", "/base/dir"), "/base/dir/data/x.csv")
        self.assertEqual(absolute("../out/", "/base/dir"), "/base/out/")
        self.assertEqual(absolute("./d/", "/base"), "/base/d/")
        for kept in ["/abs/x", "s3://b/p", "file:///x/", ""]:
            self.assertEqual(absolute(kept, "/base"), kept)

    def test_a_spec_file_is_sent_as_json_with_absolute_paths(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "pipelines" / "units.toml"
            path.parent.mkdir()
            path.write_text(SPEC)
            for given in [path, str(path)]:
                fields, origin = request_fields(given)
                self.assertEqual(origin, str(path))
                spec = json.loads(fields["spec_json"])
                base = Path(tmp).resolve()
                self.assertEqual(spec["sources"][0]["path"], f"{base}/pipelines/data/orders.csv")
                self.assertNotIn("path", spec["sources"][1])
                self.assertEqual(spec["sources"][2]["path"], "s3://bucket/events/")
                self.assertEqual(spec["sink"]["path"], f"{base}/out/")
                self.assertEqual(spec["sink"]["dead_letter_path"], f"{base}/pipelines/bad")
                self.assertEqual(spec["transform"]["sql"], "SELECT 1")

    def test_toml_text_is_sent_as_it_is_unless_a_base_is_given(self) -> None:
        self.assertEqual(request_fields(SPEC), ({"spec_toml": SPEC}, "<toml>"))
        fields, _ = request_fields(SPEC, resolve_relative_to="/srv")
        self.assertEqual(json.loads(fields["spec_json"])["sink"]["path"], "/out/")

    def test_a_typed_spec_is_resolved_on_a_copy(self) -> None:
        spec = ap.PipelineSpec(sources=[ap.SourceSpec(format="csv", path="in")],
                               sink=ap.SinkSpec(format="csv", path="out", dead_letter_path="dl"))
        self.assertIs(request_fields(spec)[0]["pipeline"], spec)
        sent = request_fields(spec, resolve_relative_to="/srv")[0]["pipeline"]
        self.assertEqual((sent.sources[0].path, sent.sink.path, sent.sink.dead_letter_path),
                         ("/srv/in", "/srv/out", "/srv/dl"))
        self.assertEqual(spec.sources[0].path, "in")

    def test_a_dict_is_sent_as_json(self) -> None:
        d = {"job": {"name": "d"}, "sink": {"format": "csv", "path": "o"}}
        fields, origin = request_fields(d, resolve_relative_to="/x")
        self.assertEqual(json.loads(fields["spec_json"])["sink"]["path"], "/x/o")
        self.assertEqual(d["sink"]["path"], "o")
        self.assertEqual(origin, "<dict>")

    def test_bad_toml_and_a_missing_file_are_spec_errors(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            bad = Path(tmp) / "bad.toml"
            bad.write_text("[job\n")
            with self.assertRaises(ap.SpecError) as e:
                request_fields(bad)
            self.assertIn("bad.toml: not valid TOML", str(e.exception))
            with self.assertRaises(ap.SpecError):
                request_fields(Path(tmp) / "missing.toml")


class FakeCall(grpc.RpcError):
    """A failed call as grpcio raises it: code, details and trailing metadata."""

    def __init__(self, code: grpc.StatusCode, message: str, details: Sequence = (),
                 extra: Sequence[Tuple[str, str]] = ()) -> None:
        self._code, self._message = code, message
        st = status_pb2.Status(code=getattr(code_pb2, code.name), message=message)
        for d in details:
            st.details.add().Pack(d)
        self._trailers = (("grpc-status-details-bin", st.SerializeToString()), *extra)

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._message

    def trailing_metadata(self) -> Sequence[Tuple[str, object]]:
        return self._trailers


class Errors(unittest.TestCase):
    def test_a_bad_request_names_the_key_first(self) -> None:
        text = "<toml>: [sources[0].path] 'x' is a relative path"
        e = from_rpc_error(FakeCall(
            grpc.StatusCode.INVALID_ARGUMENT, text,
            [error_details_pb2.BadRequest(field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field="sources[0].path",
                                                            description=text)]),
             error_details_pb2.ErrorInfo(reason="INVALID_SPEC", domain="autopipe",
                                         metadata={"class": "permanent",
                                                   "key": "sources[0].path"})]))
        self.assertIsInstance(e, ap.SpecError)
        self.assertEqual(str(e), "sources[0].path: 'x' is a relative path")
        self.assertEqual(e.field_violations, [("sources[0].path", text)])
        self.assertEqual((e.reason, e.error_class, e.code), ("INVALID_SPEC", "permanent",
                                                            grpc.StatusCode.INVALID_ARGUMENT))

    def test_a_follower_names_the_leader_and_when_to_retry(self) -> None:
        e = from_rpc_error(FakeCall(
            grpc.StatusCode.UNAVAILABLE, "not the leader",
            [error_details_pb2.ErrorInfo(reason="NOT_LEADER", domain="autopipe",
                                         metadata={"class": "transient",
                                                   "leader": "10.0.0.2:7700"}),
             error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(nanos=100_000_000))]))
        self.assertIsInstance(e, ap.NotLeader)
        self.assertIsInstance(e, ap.Unavailable)
        self.assertEqual(e.leader, "10.0.0.2:7700")
        self.assertAlmostEqual(e.retry_delay or 0, 0.1)

    def test_codes_map_to_classes_with_or_without_details(self) -> None:
        for code, cls in [(grpc.StatusCode.NOT_FOUND, ap.NotFound),
                          (grpc.StatusCode.UNAUTHENTICATED, ap.Unauthenticated),
                          (grpc.StatusCode.ALREADY_EXISTS, ap.AlreadyExists),
                          (grpc.StatusCode.FAILED_PRECONDITION, ap.Rejected),
                          (grpc.StatusCode.DEADLINE_EXCEEDED, ap.DeadlineExceeded),
                          (grpc.StatusCode.INTERNAL, ap.AutopipeError)]:
            e = from_rpc_error(FakeCall(code, "why"))
            self.assertIs(type(e), cls)
            self.assertEqual(str(e), "why")

    def test_a_failed_job_says_why(self) -> None:
        st = jobs_pb2.JobStatus(job_id="j-1", state=ap.JobState.FAILED)
        st.error.message = "spec.toml: [transform.sql] no such column"
        st.error.key = "transform.sql"
        self.assertEqual(str(ap.JobFailed(st)), "job j-1 failed: transform.sql: no such column")
        self.assertEqual(str(ap.JobFailed(jobs_pb2.JobStatus(job_id="j-2", state=6))),
                         "job j-2 cancelled")


class Progress(unittest.TestCase):
    def test_a_line_when_the_state_or_a_stage_changes(self) -> None:
        lines: List[str] = []
        report = ProgressLines(lines.append, every=3600)
        st = jobs_pb2.JobStatus(job_id="j", state=ap.JobState.RUNNING, tasks_total=2)
        st.stages.add(tasks_total=1)
        report(st)
        st.tasks_done = 1
        report(st)  # a task, not a stage: no line within `every`
        st.stages[0].tasks_done = 1
        report(st)
        st.state = ap.JobState.SUCCEEDED
        report(st)
        self.assertEqual([line.split("] ", 1)[1] for line in lines], [
            "j running: stages 0/1, tasks 0/2, rows in 0",
            "j running: stages 1/1, tasks 1/2, rows in 0",
            "j succeeded: stages 1/1, tasks 1/2, rows in 0",
        ])

    def test_state_names(self) -> None:
        self.assertEqual(ap.state_name(4), "succeeded")
        self.assertEqual(ap.state_name(99), "state 99")
        self.assertEqual(ap.enums.job_state("Running"), ap.JobState.RUNNING)
        self.assertTrue(ap.JobState.CANCELLED.terminal)
        self.assertFalse(ap.is_terminal(ap.JobState.COMMITTING))
        with self.assertRaisesRegex(ValueError, "not a job state .*queued"):
            ap.enums.job_state("done")


if __name__ == "__main__":
    unittest.main()
