"""The run folder's files, named once: what a sweep writes in results/<name>/<run id>/ and reads
back to resume, add trials, report, predict and export. Light (no pandas, no Ray), so that every
entry point can name them before its heavy imports."""

STATUS_FILE = "status.json"  # {"state": running | partial | finished, "experiment": path relative to
#                              the run folder when inside it, or a URI, ...};
#                              a comparison's progress is its "compare" key
LOCK_FILE = ".driver.lock"  # held (flock) by the live driver of a run; the kernel frees it on death
TEST_LEDGER = "test_set.jsonl"  # one line per look at the test set, written before the look
SPEC_FILE = "spec.yaml"  # the resolved spec and its provenance
BEST_FILE = "best.json"  # the chosen trial, its test score, and how it was chosen
