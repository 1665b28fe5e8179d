"""The committed stubs never drift from the protos, the enums match them, and the
package imports without Airflow."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

from autopipe_client import enums
from autopipe_client.v1 import admin_pb2, jobs_pb2

PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def _generator():  # the clients/python/generate.py module
    spec = importlib.util.spec_from_file_location("generate", PACKAGE_ROOT / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Stubs(unittest.TestCase):
    def test_regenerating_the_stubs_changes_nothing(self) -> None:
        gen = _generator()
        tools = os.environ.get("AUTOPIPE_GRPC_TOOLS")
        with tempfile.TemporaryDirectory() as tmp:
            fresh = Path(tmp) / "v1"
            try:
                gen.generate(fresh, tools_path=tools)
            except gen.GeneratorMissing as e:
                self.skipTest(f"cannot check the stubs: {e} (or set AUTOPIPE_GRPC_TOOLS "
                              "to a pip --target directory holding it)")
            self.assertEqual(gen.differences(fresh, PACKAGE_ROOT / "autopipe_client" / "v1"), [],
                             "the stubs differ from proto/proto/autopipe/v1: run "
                             "clients/python/generate.py")

    def test_the_enums_match_the_protos(self) -> None:
        for ours, theirs, prefix in [
            (enums.JobState, jobs_pb2.JobState, "JOB_STATE_"),
            (enums.StageKind, jobs_pb2.StageKind, "STAGE_KIND_"),
            (enums.WorkerState, admin_pb2.WorkerState, "WORKER_STATE_"),
            (enums.DecisionKind, admin_pb2.DecisionKind, "DECISION_KIND_"),
            (enums.MemberRole, admin_pb2.MemberRole, "MEMBER_ROLE_"),
        ]:
            want = {name[len(prefix):] if name.startswith(prefix) else name: value
                    for name, value in theirs.items()}
            self.assertEqual({m.name: m.value for m in ours}, want, ours.__name__)

    def test_the_package_imports_without_airflow(self) -> None:
        probe = ("import sys, autopipe_client, autopipe_client.v1.jobs_pb2_grpc; "
                 "assert 'airflow' not in sys.modules, 'airflow was imported'; "
                 "print(autopipe_client.JobStatus.__module__)")
        path = os.pathsep.join(p for p in [str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")] if p)
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                             cwd=tempfile.gettempdir(), env={**os.environ, "PYTHONPATH": path})
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout.strip(), "autopipe_client.v1.jobs_pb2")


if __name__ == "__main__":
    unittest.main()
