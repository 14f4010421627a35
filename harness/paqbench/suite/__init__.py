"""Suite files: schema, loading with line numbers, and validation errors."""

from paqbench.suite.errors import Problem, SuiteError
from paqbench.suite.loader import load_suite
from paqbench.suite.schema import Suite

__all__ = ["Problem", "Suite", "SuiteError", "load_suite"]
