"""Values shared by the tests."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
TEST_KEY = "sk-test-0123456789"
# Enterprise: no per-minute cap, so suites that send many requests are not throttled by the quotas.
TEST_KEYS = f"{TEST_KEY}:enterprise"
