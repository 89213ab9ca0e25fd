"""Runs one suite of ogctests (PyPI: an OGC API black-box verifier) against
a server and prints one JSON object: each test's name and its outcome.

    python ogc_suite.py SUITE BASE_URL [TEST ...]

SUITE is a directory of the package (features/core, features/filtering);
naming TESTs runs only those. The Rust test (tests/ogctests.rs) judges the
outcomes; this script only reports them, exit 0 once the suite has run.
"""

import json
import os
import sys
from pathlib import Path

import ogctests
import pytest


class Outcomes:
    """Each test's outcome: a failure in setup or teardown counts as the
    test's own (a fixture that raises is a test that did not pass)."""

    def __init__(self, only):
        self.outcomes = {}
        self.only = set(only)

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, config, items):
        if self.only:
            keep = [i for i in items if i.name in self.only]
            config.hook.pytest_deselected(items=[i for i in items if i.name not in self.only])
            items[:] = keep

    def pytest_runtest_logreport(self, report):
        name = report.nodeid.split("::")[-1]
        if report.when == "call" or report.outcome != "passed":
            if self.outcomes.get(name, "passed") == "passed":
                self.outcomes[name] = report.outcome


def main():
    suite, url, *only = sys.argv[1:]
    os.environ["INSTANCE_URL"] = url
    pkg = Path(ogctests.__file__).parent
    # The package's own conftest.py (its HTTP client) is above the suite's
    # directory: root pytest at the package, wherever it is installed.
    args = [str(pkg / suite), f"--rootdir={pkg}", f"--confcutdir={pkg}", "-q", "-p", "no:cacheprovider", "-W", "ignore"]
    rec = Outcomes(only)
    pytest.main(args, plugins=[rec])
    print(json.dumps(rec.outcomes, sort_keys=True))


if __name__ == "__main__":
    main()
