"""Root pytest configuration: load the plugin that compares trained numbers within tolerance.

It lives in tests/ (on pytest's pythonpath) and applies to the notebooks in book/
as well as to tests/, which is why it is loaded from here.
"""

pytest_plugins = ["nbval_tolerance"]
