"""Helpers shared by the test suites: free ports, bounded waits, real server processes."""
